"""Images (reading every common mode as uint8 RGB, writing, mod-crop, listing) and evaluation sets
(benchmark, DIV2K and plain layouts, the embedded Set5, and each error)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data import images
from workbench.data.benchmark import EMBEDDED_SETS, embedded_set_dir, load_set
from workbench.data.images import list_images, mod_crop, read_image, write_image
from workbench.data.imresize import imresize
from workbench.core.errors import WorkbenchError


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- images ------------------------------------------------------------------------------------

def test_read_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = _rgb(7, 9)
    write_image(tmp_path / "a.png", arr)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.uint8 and back.shape == (7, 9, 3)
    np.testing.assert_array_equal(back, arr)
    assert not [p for p in tmp_path.iterdir() if p.name != "a.png"], "temporary files left behind"


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (6, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_drops_alpha_keeps_colour(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb(5, 4), np.full((5, 4), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_palette_and_16bit(tmp_path: Path) -> None:
    rgb = _rgb(8, 8)
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    wide = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    Image.fromarray(wide).save(tmp_path / "w.png")
    out = read_image(tmp_path / "w.png")
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[3, 3, 0] == 255 and out[1, 0, 0] == 68  # 4*4369/257 = 68


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="missing.png: image file does not exist"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(WorkbenchError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    write_image(tmp_path / "ok.png", _rgb(64, 64))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(WorkbenchError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(WorkbenchError, match="is not a file"):
        read_image(tmp_path)


def test_write_image_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="uint8"):
        write_image(tmp_path / "f.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(WorkbenchError, match="shape"):
        write_image(tmp_path / "f.png", np.zeros((4, 4, 4), np.uint8))


def test_mod_crop() -> None:
    img = _rgb(13, 10)
    assert mod_crop(img, 4).shape == (12, 8, 3)
    assert mod_crop(img, 3).shape == (12, 9, 3)
    np.testing.assert_array_equal(mod_crop(img, 4), img[:12, :8])
    assert mod_crop(img, 1).shape == img.shape


def test_list_images_natural_order(tmp_path: Path) -> None:
    for name in ["img10.png", "img2.png", "img1.bmp", "notes.txt", ".hidden.png", "IMG3.JPG"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["img1.bmp", "img2.png", "IMG3.JPG", "img10.png"]
    with pytest.raises(WorkbenchError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_image_suffixes_are_lowercase_with_dot() -> None:
    assert all(s.startswith(".") and s == s.lower() for s in images.IMAGE_SUFFIXES)


# -- evaluation sets ---------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 3, 4])
def test_embedded_set5_loads(scale: int) -> None:
    s5 = load_set("Set5", scale)
    assert s5.embedded and s5.name == "Set5" and s5.scale == scale and len(s5) == 5
    assert [p.name for p in s5] == ["baby", "bird", "butterfly", "head", "woman"]
    for pair in s5:
        assert pair.hr.dtype == np.uint8 and pair.lr.dtype == np.uint8
        assert pair.hr.shape[0] % scale == 0 and pair.hr.shape[1] % scale == 0
        assert pair.lr.shape == (pair.hr.shape[0] // scale, pair.hr.shape[1] // scale, 3)


def test_embedded_set5_equals_shared_copy(shared_dir: Path) -> None:
    embedded = embedded_set_dir("set5")
    assert "Set5" in EMBEDDED_SETS
    assert (embedded / "LICENSE-SwinIR-Apache-2.0.txt").is_file() and (embedded / "SOURCES.md").is_file()
    for name in ["HR/baby.png", "LR_bicubic/X2/babyx2.png", "LR_bicubic/X3/birdx3.png",
                 "LR_bicubic/X4/womanx4.png"]:
        assert (embedded / name).read_bytes() == (shared_dir / "data" / "Set5" / name).read_bytes()


def test_data_root_takes_precedence_and_grayscale_set(shared_dir: Path) -> None:
    root = shared_dir / "data"
    s14 = load_set("Set14", 3, data_root=root)
    assert not s14.embedded and s14.root == root / "Set14" and len(s14) == 14
    bridge = next(p for p in s14 if p.name == "bridge")  # stored as 8-bit grayscale
    assert bridge.hr.shape[2] == 3 and np.array_equal(bridge.hr[..., 0], bridge.hr[..., 2])
    comic = next(p for p in s14 if p.name == "comic")  # 361x250: mod-cropped to 360x249
    assert comic.hr.shape[:2] == (360, 249) and comic.lr.shape[:2] == (120, 83)
    s5 = load_set("Set5", 4, data_root=root)
    assert not s5.embedded and s5.root == root / "Set5"
    # a data root given is never silently replaced by the embedded copy
    with pytest.raises(WorkbenchError, match="data root does not exist"):
        load_set("Set5", 4, data_root=Path("/nonexistent-root"))


def _benchmark_set(root: Path, names=("a", "b"), scale=2, size=(12, 16)) -> Path:
    for i, name in enumerate(names):
        hr = _rgb(*size, seed=i)
        write_image(root / "HR" / f"{name}.png", hr)
        write_image(root / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png",
                    imresize(mod_crop(hr, scale), 1 / scale))
    return root


def test_benchmark_layout_folder(tmp_path: Path) -> None:
    root = _benchmark_set(tmp_path / "Mine", size=(13, 16))
    ps = load_set(root, 2)
    assert ps.name == "Mine" and len(ps) == 2 and ps[0].hr.shape == (12, 16, 3) and ps[0].lr.shape == (6, 8, 3)
    assert load_set(str(root), 2).name == "Mine"
    # No X3 folder: made with bicubic, or refused when asked not to.
    ps3 = load_set(root, 3)
    np.testing.assert_array_equal(ps3[0].lr, imresize(mod_crop(read_image(root / "HR" / "a.png"), 3), 1 / 3))
    with pytest.raises(WorkbenchError, match="X3: LR folder for x3 does not exist"):
        load_set(root, 3, make_lr=False)


def test_missing_lr_and_size_mismatch_are_errors(tmp_path: Path) -> None:
    root = _benchmark_set(tmp_path / "S")
    (root / "LR_bicubic" / "X2" / "bx2.png").unlink()
    with pytest.raises(WorkbenchError, match=r"bx2\.png: missing LR image for HR .*b\.png"):
        load_set(root, 2)
    write_image(root / "LR_bicubic" / "X2" / "bx2.png", _rgb(5, 8))
    with pytest.raises(WorkbenchError, match=r"bx2\.png: LR image is 5x8 .* needs 6x8"):
        load_set(root, 2)


def test_div2k_layout(tmp_path: Path) -> None:
    for split in ("train", "valid"):
        for k in (1, 2):
            name = f"08{k:02d}" if split == "valid" else f"00{k:02d}"
            hr = _rgb(16, 20, seed=k)
            write_image(tmp_path / f"DIV2K_{split}_HR" / f"{name}.png", hr)
            write_image(tmp_path / f"DIV2K_{split}_LR_bicubic" / "X4" / f"{name}x4.png", imresize(hr, 0.25))
    ps = load_set(tmp_path, 4)  # root holding both splits: the valid one is used
    assert ps.name == "DIV2K_valid" and [p.name for p in ps] == ["0801", "0802"]
    assert ps[0].lr.shape == (4, 5, 3)
    train = load_set(tmp_path / "DIV2K_train_HR", 4)
    assert train.name == "DIV2K_train" and [p.name for p in train] == ["0001", "0002"]


def test_plain_folder_makes_lr(tmp_path: Path) -> None:
    hr = _rgb(10, 14)
    write_image(tmp_path / "x.png", hr)
    ps = load_set(tmp_path, 2)
    np.testing.assert_array_equal(ps[0].lr, imresize(hr, 0.5))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match="empty: no images found"):
        load_set(empty, 2)


def test_unknown_set_and_bad_scale(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="Urban100: no such data set folder; embedded sets: Set5"):
        load_set("Urban100", 2)
    with pytest.raises(WorkbenchError, match="scale must be a positive integer"):
        load_set("Set5", 0)
    with pytest.raises(WorkbenchError, match="no embedded set named"):
        embedded_set_dir("Set14")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(WorkbenchError, match="is a file"):
        load_set(tmp_path / "f.png", 2)
