#!/usr/bin/env python3
"""Check the converted upscaler against UpscalerJS's own output.

Usage: python verify.py <model.onnx> <fixture.png> <result.png>

Runs the model with onnxruntime (CPU) on fixture.png (RGB; alpha dropped), clips and rounds
the output, and prints the PSNR against result.png (what UpscalerJS produced for the same
input) next to the PSNR of a Pillow bicubic 2x resize. Exits non-zero unless the model
reaches 35 dB and beats bicubic.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

MIN_PSNR_DB = 35.0


def load_rgb(path):
    return Image.open(path).convert("RGB")


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def upscale(session, image):
    x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None]
    (y,) = session.run(["output"], {"input": x})
    return np.clip(np.rint(y[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)


def main():
    if len(sys.argv) != 4:
        raise SystemExit("usage: verify.py <model.onnx> <fixture.png> <result.png>")
    model, fixture, result = sys.argv[1:]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    src = load_rgb(fixture)
    ref = np.asarray(load_rgb(result))
    out = upscale(session, src)
    if out.shape != ref.shape:
        raise SystemExit(f"output shape {out.shape} != expected {ref.shape}")
    bicubic = np.asarray(src.resize((ref.shape[1], ref.shape[0]), Image.BICUBIC))
    model_db, bicubic_db = psnr(out, ref), psnr(bicubic, ref)
    print(json.dumps({"model_psnr_db": round(model_db, 2), "bicubic_psnr_db": round(bicubic_db, 2)}))
    if model_db < MIN_PSNR_DB or model_db <= bicubic_db:
        raise SystemExit(f"model PSNR {model_db:.2f} dB is below {MIN_PSNR_DB} dB or not better than bicubic ({bicubic_db:.2f} dB)")


if __name__ == "__main__":
    main()
