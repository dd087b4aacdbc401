#!/usr/bin/env python3
"""Build a Python Weir policy into a WebAssembly component with componentize-py.

    python3 sdk/python/build.py --wit wit --world router --app-dir examples/x --module app \
        --out build/x.wasm

Copies of the app directory and of ``weir_sdk.py`` are put on the component's Python path;
add more with ``-p DIR``. componentize-py is taken from ``$WEIR_COMPONENTIZE_PY``, default
``<repo>/.tools/py/bin/componentize-py``.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SDK_DIR = Path(__file__).resolve().parent
REPO_ROOT = SDK_DIR.parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wit", required=True, help="WIT package directory (the Weir contract)")
    ap.add_argument("--world", required=True, help="world to target: router | pricing | pipeline")
    ap.add_argument("--app-dir", required=True, help="directory holding the guest module")
    ap.add_argument("--module", required=True, help="guest module name (not `wit_world`)")
    ap.add_argument("--out", required=True, help="component file to write")
    ap.add_argument("-p", "--python-path", action="append", default=[], help="extra Python path")
    ap.add_argument("--stub-wasi", action="store_true",
                    help="replace WASI imports with trapping stubs (no WASI imports at all)")
    args = ap.parse_args()

    tool = os.environ.get("WEIR_COMPONENTIZE_PY") or str(REPO_ROOT / ".tools/py/bin/componentize-py")
    if not Path(tool).exists():
        print(f"build.py: componentize-py not found at {tool} (set WEIR_COMPONENTIZE_PY)",
              file=sys.stderr)
        return 1
    app_dir = Path(args.app_dir).resolve()
    if not (app_dir / f"{args.module}.py").exists() and not (app_dir / args.module).is_dir():
        print(f"build.py: no module `{args.module}` in {app_dir}", file=sys.stderr)
        return 2

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="weir-py-build-") as scratch_dir:
        scratch = Path(scratch_dir)
        # Build from copies: componentize-py writes __pycache__ next to the sources it loads.
        # A project's own SDK copy and tools (.weir/), and version control, are not guest code.
        shutil.copytree(app_dir, scratch / "app",
                        ignore=shutil.ignore_patterns("__pycache__", "*.wasm", ".weir", ".git"))
        (scratch / "sdk").mkdir()
        shutil.copy2(SDK_DIR / "weir_sdk.py", scratch / "sdk" / "weir_sdk.py")
        raw = scratch / "component.wasm"
        cmd = [tool, "-q", "-d", str(Path(args.wit).resolve()), "-w", args.world, "componentize",
               args.module, "-o", str(raw), "-p", str(scratch / "app"), "-p", str(scratch / "sdk")]
        for extra in args.python_path:
            cmd += ["-p", str(Path(extra).resolve())]
        if args.stub_wasi:
            cmd.append("--stub-wasi")
        # Keep a developer's virtualenv out of the component's module search path.
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        result = subprocess.run(cmd, env=env)
        if result.returncode != 0:
            print(f"build.py: componentize-py failed with status {result.returncode}",
                  file=sys.stderr)
            return 1
        component = raw.read_bytes()
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        tmp.write_bytes(component)
        os.replace(tmp, out)
    print(f"built {out} ({len(component)} bytes, world {args.world}, "
          f"{time.monotonic() - started:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
