"""MATLAB-compatible bicubic imresize: reproduces the benchmark LR files, plus its building blocks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data.images import list_images, mod_crop, read_image
from workbench.data.imresize import (contributions, cubic, downscale, imresize, imresize_torch)
from workbench.core.errors import WorkbenchError


def agreement(shared_dir: Path, set_name: str, scale: int) -> tuple[float, int]:
    """(fraction of LR values equal, max abs difference) of imresize against the shipped LR files."""
    equal = total = worst = 0
    folder = shared_dir / "data" / set_name
    for hr_file in list_images(folder / "HR"):
        hr = mod_crop(read_image(hr_file), scale)
        want = read_image(folder / "LR_bicubic" / f"X{scale}" / f"{hr_file.stem}x{scale}.png")
        got = imresize(hr, 1 / scale)
        assert got.shape == want.shape, hr_file
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        equal += int((diff == 0).sum())
        total += diff.size
        worst = max(worst, int(diff.max()))
    return equal / total, worst


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reproduces_set5_lr(shared_dir: Path, scale: int) -> None:
    frac, worst = agreement(shared_dir, "Set5", scale)
    assert frac >= 0.99 and worst <= 2          # the requirement
    assert frac == 1.0 and worst == 0           # what it achieves: every pixel identical


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reproduces_set14_lr(shared_dir: Path, scale: int) -> None:
    frac, worst = agreement(shared_dir, "Set14", scale)
    assert frac >= 0.99 and worst <= 2
    assert frac == 1.0 and worst == 0


def test_cubic_kernel_values() -> None:
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5])
    np.testing.assert_allclose(cubic(x), [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625])


def test_contributions_normalised_and_in_range() -> None:
    for n_in, n_out in [(10, 5), (9, 3), (8, 32), (7, 7)]:
        w, idx = contributions(n_in, n_out, n_out / n_in)
        assert w.shape == idx.shape and w.shape[0] == n_out
        np.testing.assert_allclose(w.sum(axis=1), 1.0)
        assert idx.min() >= 0 and idx.max() < n_in
    # Downscaling by 4 stretches the kernel to 16 input pixels: ceil(16) + 2 = 18 candidate taps,
    # at distances +-0.5 .. +-8.5; the two at 8.5 lie outside the support and are dropped.
    w, _ = contributions(64, 16, 0.25)
    assert w.shape[1] == 16 and np.all(w != 0)


def test_symmetric_boundary() -> None:
    # Upscaling 1 -> 2 with mirrored edges: the first output pixel sits at input 0.75 (1-based),
    # so its taps reach index -1 and 0, which mirror to the first pixels.
    w, idx = contributions(4, 8, 2.0)
    assert idx[0].tolist()[:3] == [1, 0, 0]


def test_constant_image_stays_constant() -> None:
    img = np.full((9, 11, 3), 77, np.uint8)
    for s in (0.5, 1 / 3, 2.0, 3.0):
        out = imresize(img, s)
        assert out.dtype == np.uint8 and np.all(out == 77)


def test_output_shapes_and_types() -> None:
    img = np.random.default_rng(0).integers(0, 256, (255, 90, 3), dtype=np.uint8)
    assert imresize(img, 1 / 3).shape == (85, 30, 3)          # not 86: 255 * (1/3) is 85 exactly
    assert imresize(img, 2).shape == (510, 180, 3)
    assert imresize(img, output_shape=(100, 50)).shape == (100, 50, 3)
    out = imresize(img.astype(np.float32), 0.5)
    assert out.dtype == np.float64
    gray = imresize(img[:, :, 0], 0.5)
    np.testing.assert_array_equal(gray, imresize(img, 0.5)[:, :, 0])
    assert downscale(mod_crop(img, 4), 4).shape == (63, 22, 3)
    with pytest.raises(WorkbenchError, match="not a multiple"):
        downscale(img, 4)
    with pytest.raises(WorkbenchError, match="exactly one"):
        imresize(img)
    with pytest.raises(WorkbenchError, match="> 0"):
        imresize(img, -1)


def test_float_path_has_no_intermediate_rounding() -> None:
    img = np.random.default_rng(1).random((24, 18, 3)) * 255
    out = imresize(img, 0.5)
    assert out.dtype == np.float64 and not np.allclose(out, np.round(out))


def test_torch_matches_numpy_float() -> None:
    img = np.random.default_rng(2).random((3, 40, 28)) * 255
    for s in (0.25, 1 / 3, 2.0):
        want = imresize(img.transpose(1, 2, 0), s).transpose(2, 0, 1)
        got = imresize_torch(torch.from_numpy(img), s)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-9)
        batched = imresize_torch(torch.from_numpy(img)[None].float(), s)
        assert batched.shape == (1,) + want.shape and batched.dtype == torch.float32
        np.testing.assert_allclose(batched[0].numpy(), want, atol=1e-3)
