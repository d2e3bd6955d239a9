"""ONNX export of any family's model (pruned or not) and its check against onnxruntime.

The graph takes ``lr`` (N, 3, H, W) float32 on the 0..255 scale and returns ``sr`` (N, 3, sH, sW),
for every family (a [0, 1] model such as SPAN or DIPNet is exported with the scaling folded in);
batch, height and width are dynamic axes (ESA's interpolation reads the input size at run time).
The export goes through the TorchScript exporter (``dynamo=False``), which needs no extra packages
and keeps the dynamic sizes as Shape ops.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.core.errors import WorkbenchError

MIN_OPSET = 17


def max_opset() -> int:
    """The newest opset the installed TorchScript exporter writes (20 with torch 2.13)."""
    try:
        from torch.onnx import _constants

        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):  # pragma: no cover - other torch versions
        return MIN_OPSET


def check_opset(opset: int) -> None:
    """Raise WorkbenchError unless the installed exporter can write ``opset``."""
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise WorkbenchError(f"--opset must be >= {MIN_OPSET} and <= {top} (the newest opset this "
                             f"torch's exporter writes), got {opset}")


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = MIN_OPSET,
                sample_size: int = 32) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically) with dynamic N/H/W axes; returns the path."""
    import onnx

    from workbench.core.files import atomic_write_bytes

    check_opset(opset)
    from workbench.models.family import on_255

    channels = getattr(getattr(model, "spec", None), "in_channels", 3)
    # the graph takes 0..255 whatever the family's input range ([0,1] models get x/255 inside)
    model = on_255(copy.deepcopy(model).to("cpu").float().eval())
    sample = torch.rand(1, channels, sample_size, sample_size) * 255
    buffer = io.BytesIO()
    axes = {"lr": {0: "batch", 2: "height", 3: "width"},
            "sr": {0: "batch", 2: "out_height", 3: "out_width"}}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter announces its deprecation; it is what handles dynamic sizes here
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(model, (sample,), buffer, input_names=["lr"], output_names=["sr"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def _gray(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 255.0)).astype(np.int16)


def check_onnx(model: nn.Module, path: str | os.PathLike, images: list[np.ndarray], *,
               tolerance: int = 1) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime (CPU) on each uint8 HWC image and compare with the torch
    model on what is delivered: outputs clamped to 0..255 and rounded to uint8.

    ``tolerance`` is in gray levels (default 1, the deploy paths' budget): a float difference of
    0.002 can still flip one rounding, which is harmless. Returns per-image maxima (gray levels
    and the raw float difference) and whether all are within tolerance.
    """
    import onnxruntime as ort
    from workbench.models import min_lr_side
    from workbench.models.family import family_of

    try:
        family = family_of(model)
        smallest, name = family.min_lr_size, family.name
    except WorkbenchError:  # a bare module: the strictest family's limit
        smallest, name = min_lr_side(None)
    for i, img in enumerate(images):
        h, w = np.asarray(img).shape[:2]
        if min(h, w) < smallest:
            raise WorkbenchError(f"image {i + 1}: check input is {w}x{h}; {name} needs LR images "
                                 f"of at least {smallest}x{smallest}")

    from workbench.models.family import on_255

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = on_255(copy.deepcopy(model).to("cpu").float().eval())
    rows = []
    for img in images:
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))).float()[None]
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(["sr"], {"lr": x.numpy()})[0]
        if got.shape != ref.shape:
            raise WorkbenchError(f"{path}: onnxruntime output {got.shape} differs in shape from "
                                 f"torch {ref.shape}")
        rows.append({"shape": list(x.shape), "max_abs_diff": float(np.abs(got - ref).max()),
                     "max_gray_diff": int(np.abs(_gray(got) - _gray(ref)).max())})
    worst = max(r["max_abs_diff"] for r in rows)
    worst_gray = max(r["max_gray_diff"] for r in rows)
    return {"images": rows, "max_abs_diff": worst, "max_gray_diff": worst_gray,
            "tolerance": tolerance, "ok": worst_gray <= tolerance}
