"""ONNX (QDQ) export of an int8 model and its check with onnxruntime.

An int8 artifact (the ``quantize`` stage's: ``model.pt`` + ``quant.pt``) is rebuilt into the
converted PT2E graph that deploy mode ``int8`` compiles (:func:`workbench.measure.quantize.int8_from_model`)
and that graph is exported with ``torch.onnx.export(dynamo=True)``. The converted graph holds
``quantized_decomposed`` quantize/dequantize ops with the learned scales and zero-points as
constants, and the dynamo exporter maps them one to one to ONNX ``QuantizeLinear`` /
``DequantizeLinear`` (tried first, and it works with torch 2.13 + onnxscript: no hand-written
Q/DQ insertion needed). The result is the standard QDQ form:

* int8 weights per output channel as INT8 initializers, each behind a ``DequantizeLinear``
  (``axis=0``; the initializers are renamed ``<module>.weight_int8`` after their conv);
* uint8 activations as ``QuantizeLinear``/``DequantizeLinear`` pairs carrying exactly the
  scale/zero-point of the torchao model (calibrated or QAT) -- :func:`export_int8_onnx` compares
  every pair with the converted graph and refuses a file where they differ;
* the layers the :class:`~workbench.measure.quantize.QuantConfig` keeps fp32 (stem, conv_2, upsampler,
  each c5 by default) as plain fp32 convs.

onnxruntime fuses each DQ -> Conv -> Q group into an integer convolution (QLinearConv), so its
rounding differs from torch's q/dq arithmetic by a few gray levels at worst;
:func:`check_int8_onnx` judges by PSNR-Y: the ORT model against torch int8 on a validation set.

Input ``lr`` (N, 3, H, W) float32 0..255, output ``sr`` on 0..255, whatever the family's input range
(a [0, 1] family's graph is exported behind a x1/255 and a x255, as the fp32 export does); H and W
are dynamic from the family's bound up (:func:`workbench.measure.quantize.export_min_side`: 24 for
RLFN), batch is fixed at 1 (the exported graph's).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.core.errors import WorkbenchError

__all__ = ["export_int8_onnx", "check_int8_onnx", "OrtModule", "INT8_MIN_OPSET",
           "MAX_PSNR_GAP_DB", "qdq_summary"]

#: The dynamo exporter writes opset 18 and up (per-channel DequantizeLinear needs 13).
INT8_MIN_OPSET = 18
#: The most the ORT model's PSNR-Y may differ from torch int8's for ``--check`` to pass.
MAX_PSNR_GAP_DB = 0.05

_Q = "quantized_decomposed.quantize_per_tensor"
_DQC = "quantized_decomposed.dequantize_per_channel"


def _require_quantized(model: nn.Module) -> None:
    if getattr(model, "quantization", None) is None:
        raise WorkbenchError("int8 ONNX export needs an int8 artifact (model.pt + quant.pt, made "
                             "by the quantize stage); this model carries no quantization state")


def _graph_qparams(converted: torch.fx.GraphModule) -> tuple[Counter, dict[str, str]]:
    """(scale, zero-point) of every activation quantize in the converted graph, and the name of
    the conv each frozen int8 weight feeds (``_frozen_paramN`` -> ``block_1.c1_r``)."""
    acts: Counter = Counter()
    weight_names: dict[str, str] = {}
    for node in converted.graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and target.startswith(_Q):
            acts[(float(np.float32(node.args[1])), int(node.args[2]))] += 1
        if node.op == "call_function" and target.startswith(_DQC):
            src = node.args[0]
            convs = [u for u in node.users if "conv" in str(u.target)]
            if getattr(src, "op", "") == "get_attr" and convs and len(convs[0].args) > 2:
                bias = convs[0].args[2]
                if getattr(bias, "op", "") == "get_attr" and str(bias.target).endswith(".bias"):
                    weight_names[str(src.target)] = str(bias.target)[:-len(".bias")]
    return acts, weight_names


def _const(model, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def qdq_summary(model) -> dict[str, Any]:
    """What a QDQ ONNX model holds: node counts, int8 weight initializers, fp32 convs, and the
    (scale, zero-point) of every QuantizeLinear."""
    import onnx

    ops = Counter(n.op_type for n in model.graph.node)
    dq_in = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    # int8 weights: 4-d INT8 initializers dequantized (per-channel zero-points are int8 too)
    int8 = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8
            and len(i.dims) == 4 and i.name in dq_in]
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    fp32_convs = [n.name for n in model.graph.node if n.op_type == "Conv"
                  and len(n.input) > 1 and n.input[1] not in dq_out]
    qparams: Counter = Counter()
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            scale, zp = _const(model, n.input[1]), _const(model, n.input[2])
            if scale is None or zp is None:
                raise WorkbenchError(f"QuantizeLinear {n.name}: scale/zero-point not constant")
            qparams[(float(np.float32(scale.reshape(-1)[0])), int(zp.reshape(-1)[0]))] += 1
    return {"ops": dict(ops), "quantize": ops.get("QuantizeLinear", 0),
            "dequantize": ops.get("DequantizeLinear", 0), "int8_weights": int8,
            "fp32_convs": fp32_convs, "int8_convs": ops.get("Conv", 0) - len(fp32_convs),
            "qparams": qparams}


def _rename(model, mapping: dict[str, str]) -> None:
    """Rename initializers (and their uses) ``old -> new`` where ``old`` exists."""
    present = {i.name for i in model.graph.initializer}
    mapping = {k: v for k, v in mapping.items() if k in present}
    for init in model.graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]


def export_int8_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = INT8_MIN_OPSET,
                     example_side: int = 32) -> dict[str, Any]:
    """Write the int8 model ``model`` (carrying ``.quantization``) as QDQ ONNX to ``path``
    (atomically). Returns :func:`qdq_summary` plus ``path`` and ``opset``.

    Raises WorkbenchError when the model is not quantized, when the exported file's Q/DQ
    parameters differ from the converted graph's, or when it has no int8 weight.
    """
    import onnx
    from torch.export import Dim

    from workbench.models.artifacts import atomic_write_bytes
    from workbench.models.family import on_255
    from workbench.measure.quantize import export_min_side, int8_from_model

    _require_quantized(model)
    if opset < INT8_MIN_OPSET:
        raise WorkbenchError(f"--opset: int8 ONNX export writes opset {INT8_MIN_OPSET} or newer, "
                             f"got {opset}")
    converted, _ = int8_from_model(model)
    acts, weight_names = _graph_qparams(converted)
    gen = torch.Generator().manual_seed(0)
    channels = int(getattr(getattr(model, "spec", None), "in_channels", 3))
    min_side = export_min_side(model)
    side = max(int(example_side), min_side)
    example = torch.rand(1, channels, side, side, generator=gen) * 255
    shapes = {"x": {2: Dim("height", min=min_side), 3: Dim("width", min=min_side)}}
    graph = on_255(converted)  # 0..255 in and out (the graph carries its family's input range)
    sink = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (example,), dynamo=True, input_names=["lr"],
                                        output_names=["sr"], dynamic_shapes=shapes,
                                        opset_version=opset, verbose=False)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise WorkbenchError(f"int8 ONNX export needs onnx and onnxscript: {exc}") from None
    except Exception as exc:  # the exporter's own errors are many-lined: keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(f"int8 ONNX export failed: {first[:300]}") from None
    proto = program.model_proto
    _rename(proto, {**{k: f"{v}.weight_int8" for k, v in weight_names.items()}})
    summary = qdq_summary(proto)
    if summary["qparams"].keys() != acts.keys():
        missing = sorted(set(acts) - set(summary["qparams"]))[:3]
        extra = sorted(set(summary["qparams"]) - set(acts))[:3]
        raise WorkbenchError(f"int8 ONNX export: QuantizeLinear parameters differ from the torch "
                             f"model's (missing {missing}, unexpected {extra})")
    if not summary["int8_weights"]:
        raise WorkbenchError("int8 ONNX export: the file holds no int8 weight")
    data = proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    path = Path(path)
    atomic_write_bytes(path, data)
    summary["path"] = path
    summary["opset"] = opset
    summary["size"] = len(data)
    return summary


class OrtModule(nn.Module):
    """An onnxruntime session behind a module: float32 NCHW 0..255 in and out (CPU)."""

    def __init__(self, path: str | os.PathLike, *, scale: int, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def _gray(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 255).round().to(torch.int16).numpy()


def check_int8_onnx(model: nn.Module, path: str | os.PathLike, pset: Any, *,
                    max_gap_db: float = MAX_PSNR_GAP_DB) -> dict[str, Any]:
    """Run the QDQ file with onnxruntime on every image of ``pset`` and score it (PSNR-Y, paper
    protocol) beside torch int8 (the converted graph deploy mode ``int8`` compiles, run as q/dq
    arithmetic) and the fp32 weights; also the largest gray-level difference ORT vs torch int8.
    ``ok`` when |PSNR-Y(ORT) - PSNR-Y(torch int8)| <= ``max_gap_db``."""
    from workbench.data.benchmark import PairedSet
    from workbench.measure.evaluate import evaluate_set, image_to_tensor
    from workbench.measure.quantize import GraphRunner, int8_from_model
    from workbench.models.family import run_model

    _require_quantized(model)
    scale = int(getattr(model, "scale", pset.scale))
    pairs = list(getattr(pset, "pairs", pset))
    from workbench.measure.quantize import export_min_side

    min_side = export_min_side(model)
    for pair in pairs:
        h, w = np.asarray(pair.lr).shape[:2]
        if min(h, w) < min_side:
            raise WorkbenchError(f"{pset.name}/{pair.name}: LR image is {w}x{h}; the int8 graph "
                                 f"needs at least {min_side}x{min_side}")
    pset = PairedSet(name=str(pset.name), scale=int(pset.scale), root=None, pairs=pairs)
    ort_model = OrtModule(path, scale=scale)
    converted, _ = int8_from_model(model)
    torch_int8 = GraphRunner(converted)  # carries the family's input range
    torch_int8.scale = scale
    fp32 = model.eval()
    res = {name: evaluate_set(m, pset, device="cpu", progress=False)
           for name, m in (("onnxruntime", ort_model), ("torch_int8", torch_int8), ("fp32", fp32))}
    gray = 0
    for pair in pairs:
        x = image_to_tensor(np.asarray(pair.lr), torch.device("cpu"))
        with torch.no_grad():
            gray = max(gray, int(np.abs(_gray(ort_model(x)) - _gray(run_model(torch_int8, x))).max()))
    psnr = {k: float(v.mean["psnr_y"]) for k, v in res.items()}
    gap = psnr["onnxruntime"] - psnr["torch_int8"]
    return {"set": pset.name, "images": len(pairs), "psnr_y": psnr, "gap_db": gap,
            "vs_fp32_db": psnr["onnxruntime"] - psnr["fp32"], "max_gray_diff": gray,
            "max_gap_db": float(max_gap_db), "ok": abs(gap) <= max_gap_db}
