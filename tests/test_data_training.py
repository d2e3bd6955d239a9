"""Training data: PatchDataset determinism per (seed, epoch, index), aligned LR/HR crops under every
flip and rotation, the too-small and mismatched-LR errors, and the training layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from workbench.data.images import mod_crop, read_image, write_image
from workbench.data.imresize import downscale
from workbench.data.training import (PatchDataset, augment_pair, find_training_pairs,
                                     sample_images_dir)
from workbench.core.errors import WorkbenchError


def _textured(h: int, w: int, seed: int) -> np.ndarray:
    """Noise: any misalignment of a crop by even one pixel shows as a large difference."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def hr_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hr"
    for k, (h, w) in enumerate([(50, 61), (64, 48), (41, 70)]):
        write_image(folder / f"img{k}.png", _textured(h, w, k))
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_shapes_dtype_and_range(hr_folder: Path) -> None:
    ds = PatchDataset(_files(hr_folder), scale=2, patch_size=16, length=7)
    assert len(ds) == 7
    lr, hr = ds[5]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
    assert lr.dtype == torch.float32 and hr.dtype == torch.float32
    assert hr.max() > 1.5 and hr.min() >= 0 and hr.max() <= 255  # 0..255 scale, not 0..1


def test_same_seed_epoch_index_same_sample(hr_folder: Path) -> None:
    files = _files(hr_folder)
    a = PatchDataset(files, scale=2, patch_size=16, length=12, seed=3)
    b = PatchDataset(files, scale=2, patch_size=16, length=12, seed=3)
    b.set_epoch(5)
    _ = [b[i] for i in range(12)]  # drawing other samples first must not matter
    a.set_epoch(5)
    for i in (0, 7, 11):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(x, y)
        assert all(torch.equal(x, y) for x, y in zip(a[(5, i)], a.sample(5, i)))
    # Another epoch or seed changes the samples.
    a.set_epoch(6)
    assert any(not torch.equal(a[i][1], b[i][1]) for i in range(12))
    c = PatchDataset(files, scale=2, patch_size=16, length=12, seed=4)
    c.set_epoch(5)
    assert any(not torch.equal(c[i][1], b[i][1]) for i in range(12))
    # The global RNGs play no part.
    torch.manual_seed(123)
    np.random.seed(123)
    x1 = b[3]
    torch.manual_seed(999)
    np.random.seed(999)
    assert torch.equal(b[3][0], x1[0])


def test_loader_workers_give_identical_batches(hr_folder: Path) -> None:
    ds = PatchDataset(_files(hr_folder), scale=2, patch_size=16, length=8, seed=1)
    ds.set_epoch(2)
    serial = [b for b in DataLoader(ds, batch_size=4, num_workers=0)]
    parallel = [b for b in DataLoader(ds, batch_size=4, num_workers=2)]
    for (l0, h0), (l1, h1) in zip(serial, parallel):
        assert torch.equal(l0, l1) and torch.equal(h0, h1)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_crops_aligned_under_every_augmentation(tmp_path: Path, scale: int) -> None:
    """Without augmentation, downscaling the HR crop gives exactly the LR crop (away from the
    crop's border, where the resampling kernel would read outside the crop); with it, both
    patches are the same one of the 8 flips/rotations of that aligned pair."""
    hr = _textured(24 * scale, 26 * scale, scale)
    write_image(tmp_path / "t.png", hr)
    patch = 12 * scale
    n = 48
    augmented = PatchDataset([tmp_path / "t.png"], scale=scale, patch_size=patch, length=n, augment=True)
    plain = PatchDataset([tmp_path / "t.png"], scale=scale, patch_size=patch, length=n, augment=False)
    margin = 3  # LR pixels; the x4 kernel reaches 2 LR pixels beyond each side
    seen = set()
    for i in range(n):
        lr0, hr0 = (t.numpy().transpose(1, 2, 0).astype(np.uint8) for t in plain[i])
        remade = downscale(hr0, scale)
        inner = np.s_[margin:-margin, margin:-margin]
        assert np.array_equal(remade[inner], lr0[inner]), f"sample {i}: LR and HR crops not aligned"
        lr, hr_patch = (t.numpy().transpose(1, 2, 0).astype(np.uint8) for t in augmented[i])
        matches = [(rot, flip) for rot in range(4) for flip in (False, True)
                   if all(np.array_equal(a, b) for a, b in
                          zip(augment_pair(lr0, hr0, rotations=rot, flip=flip), (lr, hr_patch)))]
        assert matches, f"sample {i}: the augmented pair is not one transform of the aligned pair"
        seen.update(matches)
    assert len(seen) == 8, f"only {sorted(seen)} of the 8 flips/rotations were drawn"


def test_misaligned_crop_would_be_caught() -> None:
    hr = _textured(48, 48, 0)
    lr = downscale(hr, 2)
    inner = np.s_[3:-3, 3:-3]
    good = downscale(hr[0:32, 0:32], 2)
    shifted = downscale(hr[2:34, 0:32], 2)  # one LR pixel off
    assert np.array_equal(good[inner], lr[0:16, 0:16][inner])
    assert np.abs(shifted.astype(int) - lr[0:16, 0:16].astype(int))[inner].max() > 20


def test_lr_files_are_used_and_checked(tmp_path: Path) -> None:
    hr = _textured(40, 40, 0)
    write_image(tmp_path / "HR" / "a.png", hr)
    lr = np.zeros((20, 20, 3), np.uint8)  # deliberately not the bicubic image
    write_image(tmp_path / "LR" / "ax2.png", lr)
    ds = PatchDataset([tmp_path / "HR" / "a.png"], lr_files=[tmp_path / "LR" / "ax2.png"],
                      scale=2, patch_size=16)
    assert ds[0][0].abs().sum() == 0
    write_image(tmp_path / "LR" / "ax2.png", np.zeros((19, 20, 3), np.uint8))
    with pytest.raises(WorkbenchError, match=r"ax2\.png: LR image is 19x20"):
        PatchDataset([tmp_path / "HR" / "a.png"], lr_files=[tmp_path / "LR" / "ax2.png"],
                     scale=2, patch_size=16)
    with pytest.raises(WorkbenchError, match=r"ax2\.png: LR image is 19x20"):
        PatchDataset([tmp_path / "HR" / "a.png"], lr_files=[tmp_path / "LR" / "ax2.png"],
                     scale=2, patch_size=16, cache=False)


def test_uncached_equals_cached(hr_folder: Path) -> None:
    a = PatchDataset(_files(hr_folder), scale=3, patch_size=24, length=6, seed=9)
    b = PatchDataset(_files(hr_folder), scale=3, patch_size=24, length=6, seed=9, cache=False)
    for i in range(6):
        assert all(torch.equal(x, y) for x, y in zip(a[i], b[i]))


def test_too_small_image_is_refused_at_construction(tmp_path: Path) -> None:
    write_image(tmp_path / "big.png", _textured(64, 64, 0))
    write_image(tmp_path / "tiny.png", _textured(30, 70, 1))
    files = [tmp_path / "big.png", tmp_path / "tiny.png"]
    for cache in (True, False):
        with pytest.raises(WorkbenchError, match=r"tiny\.png: image is 28x68 .*smaller than the 32x32"):
            PatchDataset(files, scale=4, patch_size=32, cache=cache)


def test_bad_arguments(hr_folder: Path) -> None:
    files = _files(hr_folder)
    with pytest.raises(WorkbenchError, match="multiple of the scale"):
        PatchDataset(files, scale=3, patch_size=16)
    with pytest.raises(WorkbenchError, match="no HR images"):
        PatchDataset([], scale=2, patch_size=16)
    with pytest.raises(WorkbenchError, match="3 HR images but 1 LR"):
        PatchDataset(files, scale=2, patch_size=16, lr_files=files[:1])
    ds = PatchDataset(files, scale=2, patch_size=16)
    with pytest.raises(IndexError):
        ds[3]


def test_epoch_order_is_a_reproducible_permutation(hr_folder: Path) -> None:
    ds = PatchDataset(_files(hr_folder), scale=2, patch_size=16, length=10, seed=5)
    order = ds.epoch_order(3)
    assert sorted(order.tolist()) == list(range(10))
    assert np.array_equal(order, ds.epoch_order(3)) and not np.array_equal(order, ds.epoch_order(4))


def test_sample_images_shipped() -> None:
    folder = sample_images_dir()
    hr, lr = find_training_pairs(folder, layout="folder", scale=4)
    assert lr is None and 8 <= len(hr) <= 12
    assert (folder / "SOURCES.md").is_file() and (folder / "LICENSE-dcscn-super-resolution.txt").is_file()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000
    ds = PatchDataset(hr, scale=4, patch_size=192, length=len(hr))  # the smallest side is 223
    assert ds[0][1].shape == (3, 192, 192)


def _div2k_tree(root: Path, scale: int = 2, hr_name="DIV2K_train_HR", lr_name="DIV2K_train_LR_bicubic") -> None:
    for k in (1, 2, 10):
        hr = _textured(20, 24, k)
        write_image(root / hr_name / f"{k:04d}.png", hr)
        write_image(root / lr_name / f"X{scale}" / f"{k:04d}x{scale}.png", downscale(hr, scale))


def test_find_training_pairs_layouts(tmp_path: Path) -> None:
    _div2k_tree(tmp_path / "d")
    hr, lr = find_training_pairs(tmp_path / "d", layout="div2k", scale=2)
    assert [p.name for p in hr] == ["0001.png", "0002.png", "0010.png"]
    assert [p.name for p in lr] == ["0001x2.png", "0002x2.png", "0010x2.png"]
    assert find_training_pairs(tmp_path / "d" / "DIV2K_train_HR", layout="div2k", scale=2)[0] == hr
    with pytest.raises(WorkbenchError, match="no LR folder .*X3.*DIV2K_train_LR_bicubic/X<s>"):
        find_training_pairs(tmp_path / "d", layout="div2k", scale=3)
    _div2k_tree(tmp_path / "f" / "Flickr2K", hr_name="Flickr2K_HR", lr_name="Flickr2K_LR_bicubic")
    hr, lr = find_training_pairs(tmp_path / "f", layout="flickr2k", scale=2)
    assert len(hr) == 3 and lr[2].name == "0010x2.png"
    _div2k_tree(tmp_path / "b", hr_name="HR", lr_name="LR_bicubic")
    hr, lr = find_training_pairs(tmp_path / "b", layout="benchmark", scale=2)
    assert len(hr) == len(lr) == 3
    # Files found are usable as they are.
    ds = PatchDataset(hr, lr_files=lr, scale=2, patch_size=16)
    assert ds[2][0].shape == (3, 8, 8)


def test_find_training_pairs_errors(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="data folder does not exist; layout 'div2k' expects "
                                             "DIV2K_train_HR/<id>.png"):
        find_training_pairs(tmp_path / "none", layout="div2k", scale=2)
    with pytest.raises(WorkbenchError, match="no HR folder .*Flickr2K_HR"):
        find_training_pairs(tmp_path, layout="flickr2k", scale=2)
    with pytest.raises(WorkbenchError, match="no images found"):
        find_training_pairs(tmp_path, layout="folder", scale=2)
    with pytest.raises(WorkbenchError, match="unknown data layout 'coco'"):
        find_training_pairs(tmp_path, layout="coco", scale=2)
    _div2k_tree(tmp_path / "d")
    (tmp_path / "d" / "DIV2K_train_LR_bicubic" / "X2" / "0002x2.png").unlink()
    with pytest.raises(WorkbenchError, match=r"0002x2\.png: missing LR image for HR .*0002\.png"):
        find_training_pairs(tmp_path / "d", layout="div2k", scale=2)


def test_shared_t91_loads(shared_dir: Path) -> None:
    hr, lr = find_training_pairs(shared_dir / "data" / "T91", layout="folder", scale=2)
    assert len(hr) == 91 and lr is None
    first = mod_crop(read_image(hr[0]), 2)
    assert first.shape[0] % 2 == 0


def test_several_folders_png_bmp_and_jpeg_train_together(tmp_path: Path) -> None:
    """data.train with T91-like BMPs, BSD200-like PNGs and BSDS500-test-like JPEGs: the sources are
    concatenated in order, exclude drops a file, and the patches come from every format."""
    from PIL import Image

    from workbench.recipes.schema import TrainSource
    from workbench.stages.utils import training_files

    for j, (folder, suffix, n) in enumerate((("t91", "bmp", 2), ("bsd200", "png", 3), ("bsds_test", "jpg", 2))):
        (tmp_path / folder).mkdir()
        for k in range(n):
            Image.fromarray(_textured(40, 44, 10 * j + k)).save(tmp_path / folder / f"{k}.{suffix}")
    sources = [TrainSource(root=str(tmp_path / "t91")),
               TrainSource(root=str(tmp_path / "bsd200"), exclude=["1.png"]),
               TrainSource(root=str(tmp_path / "bsds_test"))]
    hr, lr = training_files(sources, scale=2)
    assert [f"{p.parent.name}/{p.name}" for p in hr] == [
        "t91/0.bmp", "t91/1.bmp", "bsd200/0.png", "bsd200/2.png", "bsds_test/0.jpg", "bsds_test/1.jpg"]
    assert lr is None
    ds = PatchDataset(hr, scale=2, patch_size=32, seed=0)
    assert len(ds) == 6
    jpeg_lr, jpeg_hr = ds.image_pair(5)
    assert np.array_equal(jpeg_hr, mod_crop(read_image(hr[5]), 2))  # decoded JPEG, not re-encoded
    assert np.array_equal(jpeg_lr, downscale(jpeg_hr, 2))
    lr_patch, hr_patch = ds[5]
    assert lr_patch.shape == (3, 16, 16) and hr_patch.shape == (3, 32, 32)


def test_shared_491_images_train_together(shared_dir: Path) -> None:
    """T91 + BSD200 + BSDS500-test200 from ../shared/data, Set5's woman (BSD200/302003) left out."""
    from workbench.recipes.schema import TrainSource
    from workbench.stages.utils import training_files

    data = shared_dir / "data"
    if not (data / "BSDS500-test200").is_dir():
        pytest.skip("no BSDS500-test200 in ../shared/data")
    hr, lr = training_files([TrainSource(root=str(data / "T91")),
                             TrainSource(root=str(data / "BSD200"), exclude=["302003.png"]),
                             TrainSource(root=str(data / "BSDS500-test200"))], scale=4)
    assert len(hr) == 490 and lr is None
    assert {p.suffix for p in hr} == {".bmp", ".png", ".jpg"}
