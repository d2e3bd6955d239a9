"""Metrics against hand-computed values and an independent brute-force SSIM."""
from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.measure.metrics import gaussian_window, image_metrics, psnr, rgb_to_y, ssim


def test_rgb_to_y_matches_matlab_definition():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                     [10, 20, 30]]], dtype=np.uint8)
    y = rgb_to_y(img)
    assert y.dtype == np.float64 and y.shape == (1, 6)
    expected = [16.0, 16.0 + 65.481 + 128.553 + 24.966, 16.0 + 65.481, 16.0 + 128.553,
                16.0 + 24.966, 16.0 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255.0]
    np.testing.assert_allclose(y[0], expected, rtol=0, atol=1e-12)
    assert y[0, 1] == pytest.approx(235.0)  # white maps to MATLAB's 235
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4), dtype=np.uint8))


def test_psnr_identical_is_inf_and_hand_case():
    a = np.full((4, 4, 3), 100, dtype=np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[1, 2, 0] = 110  # one element off by 10 out of 48
    mse = 100.0 / 48.0
    assert psnr(a, b) == pytest.approx(10 * math.log10(255.0 ** 2 / mse), abs=1e-12)
    # uint8 inputs must not wrap around: 0 vs 255 is the worst case, PSNR 0 dB
    assert psnr(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)) == pytest.approx(0.0)


def test_psnr_border_crops_every_side():
    a = np.zeros((10, 10, 3), dtype=np.uint8)
    b = a.copy()
    b[0, :, :] = 50
    b[:, -1, :] = 50
    assert math.isfinite(psnr(a, b, border=0))
    assert psnr(a, b, border=1) == math.inf
    b[1, 1, 0] = 5
    assert math.isfinite(psnr(a, b, border=1))
    with pytest.raises(ValueError):
        psnr(a, b, border=5)
    with pytest.raises(ValueError):
        psnr(a, b[:-1])


def _ssim_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM by explicit 11x11 windows (valid positions only): an independent check."""
    w2 = np.outer(gaussian_window(11, 1.5), gaussian_window(11, 1.5))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w2 * px).sum(), (w2 * py).sum()
            vx = (w2 * (px - mx) ** 2).sum()
            vy = (w2 * (py - my) ** 2).sum()
            cxy = (w2 * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2))
                        / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_brute_force_window_computation():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (17, 19)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    got = ssim(x, y)
    assert got == pytest.approx(_ssim_brute_force(x, y), abs=1e-10)
    assert 0.0 < got < 1.0
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_hand_case():
    # Constant images: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 100.0, 120.0
    c1 = (0.01 * 255) ** 2
    got = ssim(np.full((12, 12), a), np.full((12, 12), b))
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 10)), np.zeros((10, 10)))  # smaller than the window
    with pytest.raises(ValueError):
        ssim(np.zeros((12, 12, 3)), np.zeros((12, 12, 3)))  # RGB is not single channel


def test_image_metrics_crops_scale_and_reports_three_metrics():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[:2, :, :] = 0  # damage only the 2-pixel border
    m = image_metrics(sr, hr, scale=2)
    assert set(m) == {"psnr_y", "ssim_y", "psnr_rgb"}
    assert m["psnr_y"] == math.inf and m["psnr_rgb"] == math.inf
    assert m["ssim_y"] == pytest.approx(1.0)
    sr[5, 5] = hr[5, 5] ^ 0x40
    m = image_metrics(sr, hr, scale=2)
    assert math.isfinite(m["psnr_rgb"]) and math.isfinite(m["psnr_y"]) and m["ssim_y"] < 1.0
    y_psnr = psnr(rgb_to_y(sr), rgb_to_y(hr), border=2)
    assert m["psnr_y"] == pytest.approx(y_psnr)
