#!/usr/bin/env bash
# Build the pricing-surge-js component: build.sh OUTDIR
# Writes OUTDIR/pricing-surge-js.wasm and OUTDIR/pricing-surge-js.toml.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"

node "$root/sdk/js/build.mjs" \
    --wit "$root/wit" \
    --world pricing \
    --source "$here/pricing.js" \
    --out "$out/pricing-surge-js.wasm"
cp "$here/pricing-surge-js.toml" "$out/pricing-surge-js.toml"
