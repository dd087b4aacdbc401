#!/usr/bin/env bash
# Build the pipeline-fps-js component: build.sh OUTDIR
# Writes OUTDIR/pipeline-fps-js.wasm and OUTDIR/pipeline-fps-js.toml.
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
    --world pipeline \
    --source "$here/pipeline.js" \
    --out "$out/pipeline-fps-js.wasm"
cp "$here/pipeline-fps-js.toml" "$out/pipeline-fps-js.toml"
