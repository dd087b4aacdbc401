#!/usr/bin/env python3
"""Convert the UpscalerJS default model (a TF.js layers model) to ONNX.

Usage: python convert.py <package_dir> <out.onnx>

<package_dir> is the unpacked npm package `@upscalerjs/default-model@1.0.0` (MIT): its
`models/model.json` holds a Keras Functional RDN (Conv2D, Activation, Concatenate, Add,
UpSampling2D) and `models/group1-shard1of1.bin` its float32 weights in manifest order.

The ONNX graph is NCHW:
  input  `input`  float32 [1, 3, H, W]   RGB, pixel values in [0, 255]
  output `output` float32 [1, 3, 2H, 2W] RGB, pixel values in [0, 255] (not clipped; callers
                                         clip to [0, 255] and round)
The network itself works on [0, 255] pixels (UpscalerJS's `inputRange`/`outputRange` for the
"rdn" architecture; verify.py confirms it against UpscalerJS's own output), so the graph needs
no rescaling; a network trained on [0, 1] would get a Mul at each end (NETWORK_RANGE). Callers
never rescale either way. `metadata_props` records the convention
(`input_range`, `output_range`, `layout`, `scale`) and the source model. The output file is
byte-for-byte the same on every run.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SOURCE = "@upscalerjs/default-model@1.0.0"
# The pixel range the network works on: 255.0 for this RDN (1.0 would mean [0, 1]).
NETWORK_RANGE = 255.0


def load_weights(model_dir, manifest):
    """Read every weight tensor named in the manifest, in order, from its shard files."""
    weights = {}
    for group in manifest:
        blob = b"".join(open(os.path.join(model_dir, p), "rb").read() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            if w.get("dtype") != "float32" or "quantization" in w:
                raise SystemExit(f"unsupported weight encoding for {w['name']}: {w}")
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            size = count * 4
            data = np.frombuffer(blob, dtype="<f4", count=count, offset=offset)
            weights[w["name"]] = data.reshape(w["shape"]).astype(np.float32)
            offset += size
        if offset != len(blob):
            raise SystemExit(f"shard size {len(blob)} does not match the manifest ({offset} bytes)")
    return weights


class Builder:
    """Accumulates ONNX nodes and initializers, naming tensors after the Keras layers."""

    def __init__(self, weights):
        self.weights = weights
        self.nodes = []
        self.inits = []

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def activation(self, kind, x, name):
        if kind == "linear":
            return x
        if kind == "relu":
            return self.node("Relu", [x], name)
        raise SystemExit(f"unsupported activation {kind!r} in {name}")

    def conv2d(self, cfg, x, name):
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise SystemExit(f"{name}: only channels_last is supported")
        if list(cfg.get("dilation_rate", [1, 1])) != [1, 1] or cfg.get("groups", 1) != 1:
            raise SystemExit(f"{name}: dilation and groups are not supported")
        kh, kw = cfg["kernel_size"]
        sh, sw = cfg["strides"]
        if cfg["padding"] == "same":
            if kh % 2 == 0 or kw % 2 == 0 or (sh, sw) != (1, 1):
                raise SystemExit(f"{name}: 'same' padding needs an odd kernel and stride 1")
            pads = [kh // 2, kw // 2, kh // 2, kw // 2]
        elif cfg["padding"] == "valid":
            pads = [0, 0, 0, 0]
        else:
            raise SystemExit(f"{name}: unsupported padding {cfg['padding']!r}")
        kernel = self.weights[f"{name}/kernel"]  # HWIO
        inputs = [x, self.const(f"{name}.weight", kernel.transpose(3, 2, 0, 1))]  # OIHW
        if cfg.get("use_bias", True):
            inputs.append(self.const(f"{name}.bias", self.weights[f"{name}/bias"]))
        act = cfg.get("activation", "linear")
        out = name if act == "linear" else f"{name}.conv"
        self.node("Conv", inputs, out, kernel_shape=[kh, kw], strides=[sh, sw], pads=pads, dilations=[1, 1])
        return self.activation(act, out, name)

    def upsample(self, cfg, x, name):
        if cfg.get("interpolation", "nearest") != "nearest":
            raise SystemExit(f"{name}: only nearest upsampling is supported")
        sh, sw = cfg["size"]
        scales = self.const(f"{name}.scales", np.array([1, 1, sh, sw], dtype=np.float32))
        return self.node(
            "Resize",
            [x, "", scales],
            name,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )


def build(package_dir):
    model_dir = os.path.join(package_dir, "models")
    with open(os.path.join(model_dir, "model.json")) as f:
        model = json.load(f)
    if model.get("format") != "layers-model":
        raise SystemExit(f"expected a TF.js layers-model, found {model.get('format')!r}")
    topology = model["modelTopology"]
    config = topology.get("model_config", topology)["config"]
    weights = load_weights(model_dir, model["weightsManifest"])
    b = Builder(weights)

    (input_layer,) = [l[0] for l in config["input_layers"]]
    (output_layer,) = [l[0] for l in config["output_layers"]]

    # External [0, 255] -> network range.
    if NETWORK_RANGE == 255.0:
        tensors = {input_layer: "input"}
    else:
        factor = np.array(NETWORK_RANGE / 255.0, dtype=np.float32)
        tensors = {input_layer: b.node("Mul", ["input", b.const("input.scale", factor)], input_layer)}
    scale = None
    for layer in config["layers"]:
        kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
        if kind == "InputLayer":
            continue
        if len(layer["inbound_nodes"]) != 1:
            raise SystemExit(f"{name}: shared layers are not supported")
        inputs = [tensors[n[0]] for n in layer["inbound_nodes"][0]]
        if kind == "Conv2D":
            out = b.conv2d(cfg, inputs[0], name)
        elif kind == "Activation":
            out = b.activation(cfg["activation"], inputs[0], name)
        elif kind == "Concatenate":
            if cfg.get("axis", -1) not in (3, -1):
                raise SystemExit(f"{name}: only channel concatenation is supported")
            out = b.node("Concat", inputs, name, axis=1)
        elif kind == "Add":
            out = inputs[0]
            for i, other in enumerate(inputs[1:]):
                out = b.node("Add", [out, other], name if i == len(inputs) - 2 else f"{name}.{i}")
        elif kind == "UpSampling2D":
            out = b.upsample(cfg, inputs[0], name)
            scale = cfg["size"][0]
        else:
            raise SystemExit(f"unsupported layer {kind} ({name})")
        tensors[name] = out

    # Network range -> external [0, 255].
    if NETWORK_RANGE == 255.0:
        b.node("Identity", [tensors[output_layer]], "output")
    else:
        factor = np.array(255.0 / NETWORK_RANGE, dtype=np.float32)
        b.node("Mul", [tensors[output_layer], b.const("output.scale", factor)], "output")

    scale = scale or 1
    graph = helper.make_graph(
        b.nodes,
        "upscale_rdn_x%d" % scale,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, f"{scale}H", f"{scale}W"])],
        b.inits,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="weir-convert",
        producer_version="1",
    )
    onnx_model.ir_version = 8
    onnx_model.doc_string = f"2x super-resolution (RDN) converted from {SOURCE} (MIT)"
    meta = {
        "source": SOURCE,
        "source_license": "MIT",
        "architecture": "rdn",
        "scale": str(scale),
        "layout": "NCHW RGB",
        "input_range": "0-255",
        "output_range": "0-255",
        "output_postprocess": "clip 0-255, round",
    }
    helper.set_model_props(onnx_model, meta)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: convert.py <package_dir> <out.onnx>")
    model = build(sys.argv[1])
    out = sys.argv[2]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    os.replace(tmp, out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
