"""MATLAB-compatible bicubic resizing (``imresize(img, scale, 'bicubic')``).

Super-resolution benchmarks make their LR images with MATLAB's ``imresize``; a model trained or
evaluated on LR made any other way (Pillow, OpenCV, torch's interpolate) sees a different
degradation and scores differently. This module reproduces MATLAB's algorithm:

* the cubic convolution kernel with a = -0.5 (Keys), support 4;
* when shrinking, the kernel is stretched by 1/scale and its height scaled by ``scale``
  (antialiasing), so its support grows to 4/scale input pixels;
* output pixel ``x`` (1-based) maps to input position ``u = x/scale + 0.5*(1 - 1/scale)``, the
  taps are ``floor(u - width/2) + 0 .. ceil(width) + 1``, weights are normalised to sum to 1 and
  taps outside the image are mirrored symmetrically (``[1..n, n..1]`` repeated);
* taps whose weight is zero for every output pixel are dropped (this only matters for speed);
* the dimensions are resized one at a time, the one with the smaller scale first (rows first when
  the scales are equal), and for uint8 input MATLAB's intermediate result is uint8 again (rounded
  half away from zero and saturated), which this module repeats.

Everything is vectorised: per dimension one (out, taps) table of indices and weights, then one
gather and weighted sum per tap.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np

from workbench.core.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """The cubic convolution kernel with a = -0.5, as in MATLAB's imresize."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    inner = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2))
    return inner + outer


@lru_cache(maxsize=256)
def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based source indices, each (out_length, taps), for one dimension.

    ``scale`` is output/input size. The result is cached: resizing many images of one size
    reuses it.
    """
    if scale < 1 and antialiasing:
        width = KERNEL_WIDTH / scale
        kernel_scale = scale
    else:
        width = KERNEL_WIDTH
        kernel_scale = 1.0
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]   # 1-based
    distance = u[:, None] - indices
    weights = kernel_scale * cubic(kernel_scale * distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric padding: index i (1-based) reads aux[(i - 1) mod 2n] with aux = [1..n, n..1].
    aux = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    indices = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    weights = np.ascontiguousarray(weights[:, keep])
    indices = np.ascontiguousarray(indices[:, keep])
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


def _matlab_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's conversion of double to uint8: round half away from zero, then saturate."""
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)


def _resize_axis(img: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Resize ``img`` (float64) along ``axis`` with the given (out, taps) tables."""
    moved = np.moveaxis(img, axis, 0)
    out = np.zeros((weights.shape[0],) + moved.shape[1:], dtype=np.float64)
    trailing = (slice(None),) + (None,) * (moved.ndim - 1)
    for tap in range(weights.shape[1]):
        out += weights[:, tap][trailing] * moved[indices[:, tap]]
    return np.moveaxis(out, 0, axis)


def _output_length(length: int, scale: float) -> int:
    """ceil(length * scale), with products within 1e-9 of an integer taken as that integer.

    Without the tolerance a scale of 1/3 on 255 rows would give 86 rows instead of 85.
    """
    exact = length * scale
    nearest = round(exact)
    if abs(exact - nearest) < 1e-9 * max(1.0, abs(exact)):
        return int(nearest)
    return int(math.ceil(exact))


def _plan(in_shape: Sequence[int], scale: float | Sequence[float] | None,
          output_shape: Sequence[int] | None) -> tuple[tuple[float, float], tuple[int, int]]:
    """Per-dimension scales and output sizes, as MATLAB derives them."""
    if (scale is None) == (output_shape is None):
        raise WorkbenchError("imresize: give exactly one of scale and output_shape")
    if output_shape is not None:
        out_h, out_w = (int(v) for v in output_shape)
        if out_h < 1 or out_w < 1:
            raise WorkbenchError(f"imresize: output_shape must be positive, got {tuple(output_shape)}")
        return (out_h / in_shape[0], out_w / in_shape[1]), (out_h, out_w)
    if isinstance(scale, (int, float)):
        scales = (float(scale), float(scale))
    else:
        scales = tuple(float(s) for s in scale)  # type: ignore[assignment]
        if len(scales) != 2:
            raise WorkbenchError(f"imresize: scale must be a number or (sy, sx), got {scale}")
    if min(scales) <= 0:
        raise WorkbenchError(f"imresize: scale must be > 0, got {scale}")
    shape = (_output_length(in_shape[0], scales[0]), _output_length(in_shape[1], scales[1]))
    if min(shape) < 1:
        raise WorkbenchError(f"imresize: scale {scale} leaves no pixels of a {tuple(in_shape[:2])} image")
    return scales, shape  # type: ignore[return-value]


def imresize(img: np.ndarray, scale: float | Sequence[float] | None = None, *,
             output_shape: Sequence[int] | None = None, antialiasing: bool = True) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) image with MATLAB's bicubic ``imresize``.

    ``scale`` is output/input (0.25 shrinks by 4), or give ``output_shape=(h, w)``. uint8 input
    gives uint8 output, rounded and saturated after each dimension as MATLAB does; any other input
    is computed and returned as float64 without rounding or clipping.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise WorkbenchError(f"imresize: expected an (H, W) or (H, W, C) image, got shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    if not (is_uint8 or np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)):
        raise WorkbenchError(f"imresize: unsupported dtype {img.dtype}")
    scales, out_shape = _plan(img.shape, scale, output_shape)
    # MATLAB resizes the dimension with the smaller scale first (a stable sort: rows on a tie).
    order = sorted(range(2), key=lambda d: scales[d])
    result = img
    for dim in order:
        if out_shape[dim] == result.shape[dim] and scales[dim] == 1.0:
            continue
        weights, indices = contributions(img.shape[dim], out_shape[dim], scales[dim], antialiasing)
        resized = _resize_axis(result.astype(np.float64, copy=False), dim, weights, indices)
        result = _matlab_uint8(resized) if is_uint8 else resized
    if result is img:
        return img.copy() if is_uint8 else img.astype(np.float64)
    return result


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """LR image of ``img`` for an integer SR ``factor``: MATLAB ``imresize(img, 1/factor)``.

    ``img`` must already be mod-cropped to ``factor`` (height and width multiples of it), so the
    result is exactly (H/factor, W/factor), the benchmark convention.
    """
    h, w = img.shape[:2]
    if factor < 1 or h % factor or w % factor:
        raise WorkbenchError(f"downscale: a {h}x{w} image is not a multiple of the factor {factor}; "
                             "mod-crop it first")
    return imresize(img, 1.0 / factor)


def imresize_torch(tensor: "torch.Tensor", scale: float, *, antialiasing: bool = True) -> "torch.Tensor":
    """MATLAB bicubic resize of a float tensor (C, H, W) or (N, C, H, W), without rounding.

    For LR made on the fly during training (differentiable, runs on the tensor's device). Matches
    :func:`imresize` on float input; it does not round between dimensions as the uint8 path does.
    """
    import torch

    if tensor.dim() not in (3, 4):
        raise WorkbenchError(f"imresize_torch: expected (C, H, W) or (N, C, H, W), got {tuple(tensor.shape)}")
    in_h, in_w = tensor.shape[-2], tensor.shape[-1]
    scales, out_shape = _plan((in_h, in_w), scale, None)
    order = sorted(range(2), key=lambda d: scales[d])
    result = tensor
    dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
    result = result.to(dtype)
    for dim in order:
        weights, indices = contributions((in_h, in_w)[dim], out_shape[dim], scales[dim], antialiasing)
        axis = tensor.dim() - 2 + dim
        w = torch.tensor(weights, dtype=dtype, device=tensor.device)
        idx = torch.tensor(indices, dtype=torch.long, device=tensor.device)
        # Gather the taps into a new last dimension, then contract it with the weights.
        gathered = torch.index_select(result, axis, idx.reshape(-1))
        shape = list(result.shape)
        shape[axis:axis + 1] = [idx.shape[0], idx.shape[1]]
        gathered = gathered.reshape(shape)
        view = [1] * len(shape)
        view[axis], view[axis + 1] = idx.shape
        result = (gathered * w.reshape(view)).sum(dim=axis + 1)
    return result
