"""The leakage guard: training images that copy an evaluation image (same file, same pixels, or a
re-encoded / resized / flipped copy) are found and a run refuses them; distinct images pass."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from workbench.cli import main
from workbench.data import leakage
from workbench.data.benchmark import embedded_set_dir
from workbench.data.images import list_images, read_image
from workbench.data.training import sample_images_dir
from workbench.recipes.loader import RecipeError, load_recipe

SET5_HR = embedded_set_dir("Set5") / "HR"


def _jpeg_copy(src: Path, dst: Path, *, quality: int = 90, scale: float = 1.0, flip: bool = False) -> Path:
    img = Image.open(src).convert("RGB")
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, format="JPEG", quality=quality)
    return dst


@pytest.fixture
def cache(tmp_path):
    with leakage.SignatureCache(tmp_path / "sig.sqlite") as c:
        yield c


def test_identical_file_and_identical_pixels_are_caught(tmp_path, cache) -> None:
    train = tmp_path / "train"
    train.mkdir()
    shutil.copy(SET5_HR / "bird.png", train / "renamed.png")
    Image.fromarray(read_image(SET5_HR / "head.png")).save(train / "head.bmp")  # same pixels, as BMP
    matches = leakage.check_leakage(list_images(train), list_images(SET5_HR), cache=cache)
    kinds = {Path(m.train).name: (m.kind, Path(m.eval).name) for m in matches}
    assert kinds == {"head.bmp": ("identical pixels", "head.png"),
                     "renamed.png": ("identical file", "bird.png")}


@pytest.mark.parametrize("name,kw", [("butterfly.png", {"quality": 90, "scale": 0.95}),
                                     ("woman.png", {"quality": 90, "scale": 1.07}),
                                     ("baby.png", {"quality": 75, "flip": True}),
                                     ("bird.png", {"quality": 90, "scale": 0.5})])
def test_reencoded_copy_is_caught(tmp_path, cache, name, kw) -> None:
    copy = _jpeg_copy(SET5_HR / name, tmp_path / "train" / "copy.jpg", **kw)
    matches = leakage.check_leakage([copy], list_images(SET5_HR), cache=cache)
    assert len(matches) == 1 and matches[0].kind == "near-identical"
    assert Path(matches[0].eval).name == name
    assert matches[0].dhash_bits <= leakage.DHASH_MAX and matches[0].corr >= leakage.CORR_MIN


def test_distinct_images_are_not_flagged(cache) -> None:
    # the shipped T91 samples against the embedded Set5, and Set5's images against each other
    assert leakage.check_leakage(list_images(sample_images_dir()), list_images(SET5_HR), cache=cache) == []
    sigs = cache.many(list_images(SET5_HR))
    for i, a in enumerate(sigs):
        assert leakage.find_leaks([a], sigs[:i] + sigs[i + 1:]) == []


def test_signatures_are_cached_and_a_changed_file_is_recomputed(tmp_path, monkeypatch) -> None:
    img = tmp_path / "a.png"
    shutil.copy(SET5_HR / "bird.png", img)
    with leakage.SignatureCache(tmp_path / "sig.sqlite") as c:
        first = c.get(img)
    calls = []
    real = leakage.compute_signature
    monkeypatch.setattr(leakage, "compute_signature", lambda p: calls.append(p) or real(p))
    with leakage.SignatureCache(tmp_path / "sig.sqlite") as c:
        again = c.get(img)
        assert calls == [] and again.pixel_sha256 == first.pixel_sha256
        assert np.array_equal(again.thumb, first.thumb)
        shutil.copy(SET5_HR / "head.png", img)
        changed = c.get(img)
    assert len(calls) == 1 and changed.pixel_sha256 != first.pixel_sha256
    monkeypatch.setenv("WORKBENCH_SIGNATURE_CACHE", "off")
    assert leakage.default_cache_path() is None


# -- in a recipe --------------------------------------------------------------------------------

def _recipe(tmp_path: Path, train: list[dict], stages: list[dict] | None = None, **data) -> Path:
    recipe = {"model": "rlfn_tiny_x2", "device": "cpu",
              "data": {"train": train, "val": {"sets": ["Set5"]}, **data},
              "stages": stages or [{"id": "ft", "stage": "finetune", "iterations": 1, "patch_size": 32}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _train_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "train"
    for p in list_images(sample_images_dir())[:3]:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    _jpeg_copy(SET5_HR / "woman.png", folder / "302003.jpg", quality=90, scale=1.4)
    return folder


def test_recipe_refuses_a_leaked_image_in_one_line_naming_both_files(tmp_path) -> None:
    folder = _train_folder(tmp_path)
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, [{"root": str(folder)}]))
    text = str(err.value)
    assert len(text.splitlines()) == 1
    assert "data.train[0]: leakage: training image" in text
    assert str(folder / "302003.jpg") in text and str(SET5_HR / "woman.png") in text
    assert "exclude: [302003.jpg]" in text
    # the explicit ways on: leave the image out, or accept it
    load_recipe(_recipe(tmp_path, [{"root": str(folder), "exclude": ["302003.jpg"]}]))
    load_recipe(_recipe(tmp_path, [{"root": str(folder), "exclude": ["30*"]}]))
    load_recipe(_recipe(tmp_path, [{"root": str(folder)}], leakage="warn"))
    load_recipe(_recipe(tmp_path, [{"root": str(folder)}], leakage="off"))
    with pytest.raises(RecipeError, match=r"exclude\[0\]: 'nope.png' matches no image"):
        load_recipe(_recipe(tmp_path, [{"root": str(folder), "exclude": ["nope.png"]}]))


def test_stage_sets_are_checked_too(tmp_path) -> None:
    """An evaluate stage's own sets (here a folder) and a sensitivity stage's set count."""
    folder = tmp_path / "train"
    folder.mkdir()
    for p in list_images(sample_images_dir())[:3]:
        shutil.copy(p, folder / p.name)
    holdout = tmp_path / "holdout"
    _jpeg_copy(folder / list_images(folder)[1].name, holdout / "x.jpg", scale=0.9)
    stages = [{"id": "ev", "stage": "evaluate", "sets": [str(holdout)]}]
    with pytest.raises(RecipeError, match=r"leakage: .*near-identical copy of the evaluation image .*x\.jpg"):
        load_recipe(_recipe(tmp_path, [{"root": str(folder)}], stages))
    stages = [{"id": "sens", "stage": "sensitivity", "set": "holdout", "root": str(tmp_path)}]
    with pytest.raises(RecipeError, match="leakage"):
        load_recipe(_recipe(tmp_path, [{"root": str(folder)}], stages))


def test_excluded_images_are_not_trained_on(tmp_path) -> None:
    from workbench.stages.utils import training_files

    folder = _train_folder(tmp_path)
    recipe = load_recipe(_recipe(tmp_path, [{"root": str(folder), "exclude": ["302003"]}]))
    hr, _ = training_files(recipe.config.data.train, scale=2)
    assert len(hr) == 3 and all(p.stem != "302003" for p in hr)


def test_search_command_refuses_leaked_finetune_images(tmp_path, capsys) -> None:
    folder = _train_folder(tmp_path)
    code = main(["search", "--model", "rlfn_tiny_x2", "--trials", "1", "--finetune-iters", "1",
                 "--train-data", str(folder), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "302003.jpg" in err and "woman.png" in err and "--leakage warn" in err
    assert not (tmp_path / "s").exists()  # refused before any work


@pytest.mark.slow  # about 10 s: decodes 510 images / prunes the released model
def test_shared_data_has_only_the_known_overlap(shared_dir) -> None:
    """T91, BSD200 and BSDS500-test200 against Set5 and Set14 (../shared/data): the one overlap is
    Set5's woman, a 0.71x downscale of the BSDS500 train image 302003."""
    data = shared_dir / "data"
    if not (data / "BSD200").is_dir():
        pytest.skip("no BSD200 in ../shared/data")
    train = [p for name in ("T91", "BSD200", "BSDS500-test200") for p in list_images(data / name)]
    evals = list_images(data / "Set5" / "HR") + list_images(data / "Set14" / "HR")
    matches = leakage.check_leakage(train, evals)
    assert [(Path(m.train).name, Path(m.eval).name, m.kind) for m in matches] == [
        ("302003.png", "woman.png", "near-identical")]


def test_guard_folder_applies_each_policy(tmp_path, caplog) -> None:
    folder = _train_folder(tmp_path)
    kw = dict(error_remedy="fix it", warn_remedy="went on")
    with pytest.raises(leakage.WorkbenchError, match=r"302003\.jpg.*woman\.png.*fix it"):
        leakage.guard_folder(folder, "Set5", policy="error", **kw)
    # the CLI's setup_logging stops "workbench" propagating to the root logger that caplog watches
    # (an earlier in-process CLI test may have run it), so listen on the module's logger itself
    data_log = logging.getLogger("workbench.data")
    data_log.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="workbench.data"):
            found = leakage.guard_folder(folder, "Set5", policy="warn", **kw)
    finally:
        data_log.removeHandler(caplog.handler)
    assert len(found) == 1 and "went on" in caplog.text
    assert leakage.guard_folder(folder, "Set5", policy="off", **kw) == []
    assert leakage.guard_folder(sample_images_dir(), "Set5", **kw) == []  # distinct images pass
    with pytest.raises(leakage.WorkbenchError, match="error, warn, off"):
        leakage.guard_folder(folder, "Set5", policy="ignore", **kw)
