#!/usr/bin/env bash
# Build the pipeline-chain-rs component: build.sh OUTDIR
# Writes OUTDIR/pipeline-chain-rs.wasm and OUTDIR/pipeline-chain-rs.toml.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"

cargo build --quiet --release --target wasm32-wasip2 --manifest-path "$here/Cargo.toml"
cp "$here/target/wasm32-wasip2/release/pipeline_chain_rs.wasm" "$out/pipeline-chain-rs.wasm"
cp "$here/pipeline-chain-rs.toml" "$out/pipeline-chain-rs.toml"
