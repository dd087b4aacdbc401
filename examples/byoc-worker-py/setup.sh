#!/usr/bin/env bash
# Idempotent: create the venv for the pytrickle worker and install requirements.txt into it,
# only when the stamp for the current requirements hash is missing.
#   examples/byoc-worker-py/setup.sh [VENV_DIR]     (default: .tools/pytrickle, repo-relative)
# Prints the venv's python path on the last line of stdout.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIR="${1:-$ROOT/.tools/pytrickle}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
PYTHON="${PYTHON:-python3}"
REQ="$HERE/requirements.txt"
HASH="$( { cat "$REQ"; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)"
STAMP="$DIR/.weir-requirements-$HASH"
if [ -f "$STAMP" ] && [ -x "$DIR/bin/python" ]; then
    echo "$DIR/bin/python"
    exit 0
fi
if [ ! -x "$DIR/bin/python" ]; then
    "$PYTHON" -m venv "$DIR"
fi
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" >&2
# Binary wheels only: PyAV must never be built from source.
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$REQ" >&2
"$DIR/bin/python" -c 'import pytrickle, av, torch; from pytrickle import StreamProcessor' >&2
rm -f "$DIR"/.weir-requirements-*
touch "$STAMP"
echo "$DIR/bin/python"
