"""Evaluation of SR models on benchmark sets with the paper's and the challenge's protocols.

Images travel as float tensors on the 0..255 scale (NCHW); a model whose family declares inputs
on [0, 1] (SPAN, DIPNet) gets x/255 and its output is scaled back (:func:`run_model`). The output is
clamped to 0..255 and rounded to uint8 before any metric is computed, exactly as the released
results were produced.
Metrics come from :mod:`workbench.measure.metrics` (Y-PSNR/Y-SSIM with ``scale`` pixels cropped, RGB PSNR).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from workbench.core.device import resolve_device
from workbench.core.errors import WorkbenchError
from workbench.measure.metrics import image_metrics
from workbench.models.family import run_model

__all__ = ["SetResult", "METRICS", "resolve_device", "super_resolve", "evaluate_set", "evaluate",
           "format_table", "results_to_json"]

METRICS = ("psnr_y", "ssim_y", "psnr_rgb")


@dataclass
class SetResult:
    """Scores of one model on one image set: one dict per image and the set means."""

    name: str
    scale: int
    images: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def image_to_tensor(img: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 HWC RGB -> float32 1x3xHxW on the 0..255 scale."""
    arr = np.ascontiguousarray(np.asarray(img))
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
        arr = arr.copy()
    return torch.from_numpy(arr).to(device).permute(2, 0, 1).unsqueeze(0).float()


def tensor_to_image(out: torch.Tensor) -> np.ndarray:
    """1x3xHxW float on 0..255 -> uint8 HWC (clamped, rounded half to even like torch.round)."""
    out = out.detach().float().clamp_(0.0, 255.0).round_()
    return out[0].permute(1, 2, 0).to(device="cpu", dtype=torch.uint8).numpy()


def super_resolve(model: nn.Module, lr: np.ndarray, *,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Run ``model`` on one LR image (uint8 HWC RGB) and return the SR image (uint8 HWC RGB).

    ``device`` defaults to where the model's parameters are; the model is moved if it differs.
    """
    dev = _model_device(model) if device is None else resolve_device(device)
    if _model_device(model) != dev:
        model.to(dev)
    model.eval()
    with torch.inference_mode():
        out = run_model(model, image_to_tensor(lr, dev))
    return tensor_to_image(out)


def _model_scale(model: nn.Module) -> int | None:
    scale = getattr(model, "scale", None)
    return int(scale) if isinstance(scale, int) else None


def _pairs(pset: Any) -> list[Any]:
    pairs = getattr(pset, "pairs", None)
    return list(pairs if pairs is not None else pset)


def _min_lr_size(model: nn.Module | None) -> int:
    from workbench.models import MIN_LR_SIZE
    from workbench.models.family import family_of

    if model is None:
        return MIN_LR_SIZE
    try:
        return family_of(model).min_lr_size
    except WorkbenchError:
        return MIN_LR_SIZE


def _check_lr_size(pair: Any, set_name: str, lr: np.ndarray, model: nn.Module | None = None) -> None:
    size = _min_lr_size(model)
    h, w = lr.shape[:2]
    if h < size or w < size:
        lr_file, hr_file = getattr(pair, "lr_file", None), getattr(pair, "hr_file", None)
        where = (str(lr_file) if lr_file is not None
                 else f"{hr_file} (LR made with bicubic)" if hr_file is not None
                 else f"{set_name}/{pair.name}")
        raise WorkbenchError(f"{where}: LR image is {w}x{h}; the model needs at least "
                             f"{size}x{size} (RLFN: ESA's strided conv and pooling)")


def _mean(images: Sequence[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in METRICS:
        values = [float(im[key]) for im in images]
        out[key] = float(np.mean(values)) if values else math.nan
    return out


def evaluate_set(model: nn.Module, pset: Any, *, device: str | torch.device | None = None,
                 save_dir: str | os.PathLike | None = None, progress: bool = True) -> SetResult:
    """Score ``model`` on every pair of a :class:`~workbench.data.benchmark.PairedSet`.

    With ``save_dir`` each SR image is written as ``save_dir/<set>/x<scale>/<image>.png``.
    """
    from workbench.core.progress import tqdm

    set_name = str(getattr(pset, "name", "set"))
    scale = int(getattr(pset, "scale"))
    model_scale = _model_scale(model)
    if model_scale is not None and model_scale != scale:
        raise WorkbenchError(f"{set_name}: the set is x{scale} but the model upscales x{model_scale}")
    pairs = _pairs(pset)
    if not pairs:
        raise WorkbenchError(f"{set_name}: the set holds no images")
    for pair in pairs:  # check everything before spending time on the model
        _check_lr_size(pair, set_name, np.asarray(pair.lr), model)
    out_dir = Path(save_dir) / set_name / f"x{scale}" if save_dir is not None else None
    if out_dir is not None:
        from workbench.data.images import write_image

        out_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    bar = tqdm(pairs, desc=f"eval {set_name} x{scale}", unit="img", disable=not progress,
               leave=False)
    for pair in bar:
        lr = np.asarray(pair.lr)
        hr = np.asarray(pair.hr)
        sr = super_resolve(model, lr, device=device)
        h, w = lr.shape[0] * scale, lr.shape[1] * scale
        if hr.shape[0] < h or hr.shape[1] < w:
            raise WorkbenchError(f"{set_name}/{pair.name}: HR is {hr.shape[1]}x{hr.shape[0]}, "
                                 f"smaller than LR x{scale} ({w}x{h})")
        hr = hr[:h, :w]
        scores = image_metrics(sr, hr, scale=scale)
        images.append({"name": str(pair.name), **scores})
        if out_dir is not None:
            write_image(out_dir / f"{pair.name}.png", sr)
    return SetResult(name=set_name, scale=scale, images=images, mean=_mean(images))


def evaluate(model: nn.Module, sets: Iterable[str | os.PathLike], *, scale: int,
             data_root: str | os.PathLike | None = None, device: str | torch.device | None = None,
             save_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, SetResult]:
    """Evaluate on each named set (``Set5`` ...) or set folder; returns set name -> result.

    Names are looked up under ``data_root``; with no ``data_root`` the embedded Set5 is used.
    """
    from workbench.data.benchmark import load_set

    dev = resolve_device(device)
    model.to(dev).eval()
    results: dict[str, SetResult] = {}
    for ref in sets:
        pset = load_set(ref, scale, data_root=Path(data_root) if data_root is not None else None)
        res = evaluate_set(model, pset, device=dev, save_dir=save_dir, progress=progress)
        key = res.name
        n = 2
        while key in results:
            key = f"{res.name}#{n}"
            n += 1
        results[key] = res
    return results


def _fmt(value: float, digits: int) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_table(results: dict[str, SetResult], *, per_image: bool = True) -> str:
    """A plain-text table: one row per image (optional) and the mean of each set."""
    name_w = max([len("image")] + [len(im["name"]) for r in results.values() for im in r.images]
                 + [len(k) for k in results])
    head = f"{'set':<{name_w}}  {'image':<{name_w}}  {'PSNR-Y':>8}  {'SSIM-Y':>7}  {'PSNR-RGB':>8}"
    lines = [head, "-" * len(head)]

    def row(set_name: str, image: str, m: dict[str, float]) -> str:
        return (f"{set_name:<{name_w}}  {image:<{name_w}}  {_fmt(m['psnr_y'], 3):>8}  "
                f"{_fmt(m['ssim_y'], 4):>7}  {_fmt(m['psnr_rgb'], 3):>8}")

    for key, res in results.items():
        label = f"{key} x{res.scale}"
        if per_image:
            for im in res.images:
                lines.append(row(label, im["name"], im))
        lines.append(row(label, "mean", res.mean))
        if per_image:
            lines.append("")
    return "\n".join(lines).rstrip("\n")


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value


def results_to_json(results: dict[str, SetResult]) -> dict[str, Any]:
    """Plain JSON-ready dict: set -> {scale, mean, images}; infinite PSNR becomes the string 'inf'."""
    return {
        key: {
            "name": res.name,
            "scale": res.scale,
            "mean": {k: _json_float(v) for k, v in res.mean.items()},
            "images": [{k: _json_float(v) for k, v in im.items()} for im in res.images],
        }
        for key, res in results.items()
    }
