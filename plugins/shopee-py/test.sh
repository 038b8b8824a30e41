#!/usr/bin/env bash
# Run the connector's unit tests natively: generate the world's Python bindings (plain
# Python), then unittest with the host imports replaced (tests/test_app.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${COMPONENTIZE_PY:-componentize-py}" -d "$here/../../wit/0.4.0" -w connector bindings "$work" >/dev/null
cd "$here"
PYTHONPATH="$work:$here" PYTHONDONTWRITEBYTECODE=1 "${PYTHON:-python3}" -m unittest discover -s tests -v
