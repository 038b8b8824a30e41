#!/usr/bin/env bash
# Build the JavaScript WooCommerce connector into a component with componentize-js
# (pinned in package.json / package-lock.json; `npm ci` installs it).
# Usage: build.sh OUT.wasm
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUT.wasm}"
cd "$here"
if [ ! -x node_modules/.bin/componentize-js ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund >&2
fi
# No WASI http or fetch-event: a connector reaches the network only through berth's http import.
node_modules/.bin/componentize-js connector.js --wit ../../wit/0.4.0 --world-name connector \
    --disable http fetch-event --out "$out"
