#!/usr/bin/env python3
"""Time the upscaler in onnxruntime (CPU, default threads) on a 256x256 RGB input.

Usage: python bench.py <model.onnx> <n>

Runs one warm-up, then n timed runs of session.run on a fixed pseudo-random image, and
prints {"p50_ms": .., "mean_ms": .., "n": .., "input": "256x256", "onnxruntime": ".."}.
"""

import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: bench.py <model.onnx> <n>")
    model, n = sys.argv[1], int(sys.argv[2])
    if n < 1:
        raise SystemExit("n must be at least 1")
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(1, 3, 256, 256)).astype(np.float32)
    session.run(["output"], {"input": x})
    times = []
    for _ in range(n):
        start = time.perf_counter()
        session.run(["output"], {"input": x})
        times.append((time.perf_counter() - start) * 1000.0)
    print(json.dumps({
        "p50_ms": round(statistics.median(times), 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "n": n,
        "input": "256x256",
        "onnxruntime": ort.__version__,
    }))


if __name__ == "__main__":
    main()
