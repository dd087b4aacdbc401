#!/usr/bin/env bash
# Build the router-region-py component: build.sh OUTDIR
# Writes OUTDIR/router-region-py.wasm and OUTDIR/router-region-py.toml.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"

python3 "$root/sdk/python/build.py" \
    --wit "$root/wit" \
    --world router \
    --app-dir "$here" \
    --module app \
    --out "$out/router-region-py.wasm"
cp "$here/router-region-py.toml" "$out/router-region-py.toml"
