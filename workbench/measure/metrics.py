"""Image quality metrics with the super-resolution literature's conventions.

* Y channel: MATLAB's ``rgb2ycbcr`` luma on the 0..255 scale (16..235), kept in float64 without
  rounding, as BasicSR and the RLFN release compute it.
* PSNR: ``10 log10(255^2 / MSE)``; identical images give ``inf``.
* SSIM: one channel, 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, and
  'valid' filtering (no padding: the map is 10 pixels smaller in each dimension), the mean of the map.
* :func:`image_metrics` is the protocol of the paper's Table 1 (Y-PSNR and Y-SSIM with ``scale``
  pixels cropped at every border) plus the NTIRE 2022 challenge's RGB PSNR (same crop, all channels).

Everything is computed in float64 so that results do not depend on the input dtype.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["rgb_to_y", "psnr", "ssim", "image_metrics", "crop_border", "gaussian_window"]

_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma of an RGB image (HWC, values 0..255) as MATLAB's rgb2ycbcr defines it, float64 HxW.

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` with R, G, B on 0..255.
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 RGB image, got shape {arr.shape}")
    return 16.0 + arr.astype(np.float64) @ _Y_COEFFS


def crop_border(img: np.ndarray, border: int) -> np.ndarray:
    """``img`` without ``border`` pixels on each side (first two axes)."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return img
    if img.shape[0] <= 2 * border or img.shape[1] <= 2 * border:
        raise ValueError(f"image of size {img.shape[1]}x{img.shape[0]} is too small to crop "
                         f"{border} pixels from each border")
    return img[border:-border, border:-border, ...]


def _pair(a: np.ndarray, b: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return (crop_border(a, border).astype(np.float64, copy=False),
            crop_border(b, border).astype(np.float64, copy=False))


def psnr(a: np.ndarray, b: np.ndarray, *, border: int = 0, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements (any number of channels).

    ``border`` pixels are cropped from each side first. Identical images give ``math.inf``.
    """
    x, y = _pair(a, b, border)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps (the SSIM window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D array with the symmetric 1-D kernel ``taps``."""
    k = taps.size
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ taps
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ taps


def ssim(a: np.ndarray, b: np.ndarray, *, border: int = 0, data_range: float = 255.0) -> float:
    """Structural similarity of two single-channel images (HxW, or HxWx1), mean of the SSIM map.

    Gaussian 11x11 window (sigma 1.5), K1 = 0.01, K2 = 0.03, 'valid' filtering: the usual
    MATLAB (Wang et al.) / BasicSR computation used for SR benchmarks.
    """
    x, y = _pair(a, b, border)
    if x.ndim == 3 and x.shape[2] == 1:
        x, y = x[..., 0], y[..., 0]
    if x.ndim != 2:
        raise ValueError(f"ssim takes single-channel images (HxW), got shape {x.shape}; "
                         "compute it on the Y channel (rgb_to_y) or per channel")
    if min(x.shape) < 11:
        raise ValueError(f"ssim needs images of at least 11x11 after cropping, got {x.shape}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    w = gaussian_window(11, 1.5)
    mu_x = _filter_valid(x, w)
    mu_y = _filter_valid(y, w)
    xx = _filter_valid(x * x, w) - mu_x ** 2
    yy = _filter_valid(y * y, w) - mu_y ** 2
    xy = _filter_valid(x * y, w) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * xy + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (xx + yy + c2)
    return float(np.mean(num / den))


def image_metrics(sr: np.ndarray, hr: np.ndarray, *, scale: int) -> dict[str, float]:
    """Y-PSNR, Y-SSIM and RGB PSNR of an SR image against its HR (both uint8 HWC RGB).

    ``scale`` pixels are cropped at every border for all three (paper Table 1 / NTIRE 2022).
    """
    sr = np.asarray(sr)
    hr = np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"SR {sr.shape} and HR {hr.shape} differ in shape")
    y_sr = rgb_to_y(sr)
    y_hr = rgb_to_y(hr)
    return {
        "psnr_y": psnr(y_sr, y_hr, border=scale),
        "ssim_y": ssim(y_sr, y_hr, border=scale),
        "psnr_rgb": psnr(sr, hr, border=scale),
    }
