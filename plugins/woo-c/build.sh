#!/usr/bin/env bash
# Build the C WooCommerce connector into a component:
#   bindings:  wit-bindgen c (crates.io: wit-bindgen-cli)
#   compile:   Debian's clang for wasm32-wasi with wasi-libc, as a reactor module
#   component: wasm-tools component new, with the WASI preview1 adapter
# Usage: build.sh OUT.wasm   (WIT_BINDGEN, WASM_TOOLS, WASI_ADAPTER override the tools;
# BERTH_WIT=0.2.0 builds against the older world, without the calls 0.3 and 0.4 added)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="${1:?usage: build.sh OUT.wasm}"
work="$(dirname "$out")/$(basename "$out" .wasm)-build"
mkdir -p "$work"
wit="${BERTH_WIT:-0.4.0}"
defines=()
case "$wit" in
    0.4.0) ;;
    0.2.0) defines=(-DBERTH_WIT_0_2) ;;
    *) echo "BERTH_WIT=$wit: give 0.4.0 or 0.2.0" >&2; exit 2 ;;
esac
"${WIT_BINDGEN:-wit-bindgen}" c "$root/wit/$wit" --world connector --out-dir "$work" >/dev/null
"${CLANG:-clang}" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror -Wno-unused-parameter "${defines[@]}" \
    -I "$work" -I "$root/sdk/c" \
    "$here/woo.c" "$root/sdk/c/berth_guest.c" "$root/sdk/c/berth_json.c" "$work/connector.c" "$work/connector_component_type.o" \
    -o "$work/woo-core.wasm"
"${WASM_TOOLS:-wasm-tools}" component new "$work/woo-core.wasm" \
    --adapt "wasi_snapshot_preview1=${WASI_ADAPTER:?set WASI_ADAPTER to wasi_snapshot_preview1.reactor.wasm}" -o "$out"
