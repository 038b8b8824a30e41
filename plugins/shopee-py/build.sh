#!/usr/bin/env bash
# Build the Python Shopee connector into a component with componentize-py (PyPI,
# version pinned in requirements.txt). Usage: build.sh OUT.wasm
# COMPONENTIZE_PY names the tool when it is not on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUT.wasm}"
cd "$here"
"${COMPONENTIZE_PY:-componentize-py}" -d ../../wit/0.4.0 -w connector componentize app -p . -o "$out" >&2
