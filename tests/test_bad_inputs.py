"""Damaged files, full disks and wrong arguments: one line on stderr and exit 2, never a traceback."""
from __future__ import annotations

import errno
import io
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from workbench.models import artifacts
from workbench.models.artifacts import ArtifactError, load_artifact, save_artifact
from workbench.cli import main
from workbench.core.errors import WorkbenchError, WriteError
from workbench.models import RLFN, RLFNSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip()


def _one_line(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word.lower() in err.lower(), err


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# -- item 10: non-torch files and odd tensors given as .pth ---------------------------------------

def test_damaged_state_dicts_are_one_line(tmp_path, tiny_model, capsys):
    sd = tiny_model.state_dict()
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    cases = {
        "text": (b"hello world, not a model\n", "text file"),
        "png": (png.getvalue(), "png image"),
        "gif": (gif.getvalue(), "gif image"),
        "random": (bytes(range(7, 250)) * 3, "not a torch checkpoint"),
        "zero_d": (_torch_bytes({**sd, "conv_1.weight": torch.tensor(1.0)}), "4 dimensions"),
        "one_d": (_torch_bytes({**sd, "conv_1.weight": torch.zeros(5)}), "4 dimensions"),
        "esa_one_d": (_torch_bytes({**sd, "block_1.esa.conv2.weight": torch.zeros(2)}), "4 dimensions"),
        "int_keys": (_torch_bytes({1: torch.zeros(1)}), "not a state dict"),
    }
    for name, (data, words) in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(data)
        rc, out, err = _cli(["eval", "--model", str(path), "--no-progress"], capsys)
        _one_line(rc, err, str(path), words)
        assert "pickled code" not in err, (name, err)   # item 17: images are not "pickled code"


def test_pickled_code_message_never_suggests_weights_only_false(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pth"
    path.write_bytes(_torch_bytes({"x": Payload()}))
    rc, out, err = _cli(["eval", "--model", str(path), "--no-progress"], capsys)
    _one_line(rc, err, "pickled code")
    assert "weights_only=False" not in err and "likely succeed" not in err


# -- item 11: artifact.json of the wrong type or with wrong values --------------------------------

@pytest.mark.parametrize("edit", [
    lambda m: [], lambda m: None, lambda m: "artifact",
    lambda m: {**m, "format_version": "one"}, lambda m: {**m, "format_version": [1]},
    lambda m: {**m, "metrics": []}, lambda m: {**m, "lineage": "x"}, lambda m: {**m, "config": 3},
    lambda m: {**m, "architecture": []},
    lambda m: {**m, "architecture": {**m["architecture"], "in_channels": -1}},
    lambda m: {**m, "architecture": {**m["architecture"], "trunk": 10 ** 12}},
    lambda m: {**m, "architecture": {**m["architecture"], "trunk": 4000}},
    lambda m: {**m, "architecture": {**m["architecture"], "blocks": "many"}},
    lambda m: {**m, "architecture": {**m["architecture"], "blocks": [1, 2]}},
    lambda m: {**m, "architecture": {**m["architecture"], "scale": True}},
], ids=lambda f: "")
def test_wrong_artifact_json_is_one_line(tmp_path, tiny_model, capsys, edit):
    folder = save_artifact(tmp_path / "art", tiny_model)
    meta_path = folder / "artifact.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(edit(meta)))
    rc, out, err = _cli(["eval", "--model", str(folder), "--no-progress"], capsys)
    _one_line(rc, err, str(folder))
    assert len(err) < 400


def test_spec_widths_are_bounded():
    with pytest.raises(ValueError, match="from 1 to 4096"):
        RLFNSpec.uniform(scale=2, feature=10 ** 6, blocks=1)
    with pytest.raises(ValueError, match="parameters"):
        RLFNSpec.uniform(scale=4, feature=4096, blocks=8)
    spec = RLFNSpec.uniform(scale=2, feature=8, mid=6, esa=4, blocks=2)
    assert spec.param_count() == sum(p.numel() for p in RLFN(spec).parameters())


# -- item 16: a hand-edited last.pt ----------------------------------------------------------------

def test_hand_edited_training_checkpoint(tmp_path):
    from workbench.train.loop import CHECKPOINT_FORMAT, load_checkpoint

    path = tmp_path / "last.pt"
    base = {"format": CHECKPOINT_FORMAT, "version": 1, "iteration": "abc", "model": {},
            "optimizer": {}, "scheduler": {}, "rng": {}}
    torch.save(base, path)
    with pytest.raises(WorkbenchError, match="iteration 'abc'"):
        load_checkpoint(path)
    torch.save({**base, "iteration": 3, "rng": "x"}, path)
    with pytest.raises(WorkbenchError, match="'rng'"):
        load_checkpoint(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(WorkbenchError, match="PNG image") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)


def test_training_checkpoint_with_damaged_state(tmp_path):
    from tests.test_train_loop import ToyPatches, _model, _settings
    from workbench.train.loop import CHECKPOINT_FILE, fit

    fit(_model(), ToyPatches(), settings=_settings(iterations=3), device="cpu", seed=0,
        checkpoint_dir=tmp_path, progress=False)
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    ckpt["rng"] = {"torch": "abc"}
    torch.save(ckpt, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(WorkbenchError, match="damaged training checkpoint"):
        fit(_model(), ToyPatches(), settings=_settings(iterations=3), device="cpu", seed=0,
            checkpoint_dir=tmp_path, progress=False)


# -- item 12: a full disk while writing anything ----------------------------------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_in_atomic_write_is_one_line(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    artifacts.atomic_write_json(target, {"old": 1})
    monkeypatch.setattr(artifacts.os, "fsync", _no_space)
    with pytest.raises(WriteError) as info:
        artifacts.atomic_write_json(target, {"new": 2})
    assert str(target) in str(info.value) and "no space left" in str(info.value)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, WorkbenchError)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_full_disk_in_save_artifact_is_one_line(tmp_path, tiny_model, monkeypatch):
    save_artifact(tmp_path / "a", tiny_model)
    monkeypatch.setattr(artifacts.os, "fsync", _no_space)
    with pytest.raises(WriteError, match="no space left on device"):
        save_artifact(tmp_path / "a", tiny_model)
    monkeypatch.undo()
    assert load_artifact(tmp_path / "a").spec == tiny_model.spec
    assert os.listdir(tmp_path) == ["a"]


def test_full_disk_through_the_cli(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.json"
    out.write_text("{}")
    real_fdopen = os.fdopen
    monkeypatch.setattr(artifacts.os, "fdopen", lambda fd, mode: _Failing(real_fdopen(fd, mode)))
    rc, stdout, err = _cli(["eval", "--model", "rlfn_tiny_x2", "--no-progress", "--summary",
                            "--out", str(out)], capsys)
    _one_line(rc, err, str(out), "no space left")
    assert out.read_text() == "{}"


class _Failing:
    def __init__(self, fh):
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        return False

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.fh, name)


# -- item 19: outputs respect the umask --------------------------------------------------------------

def test_outputs_respect_the_umask(tmp_path, tiny_model):
    old = os.umask(0o022)
    try:
        artifacts.atomic_write_json(tmp_path / "a.json", {})
        folder = save_artifact(tmp_path / "art", tiny_model)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "model.pt").stat().st_mode) == 0o644
    old = os.umask(0o077)
    try:
        artifacts.atomic_write_json(tmp_path / "b.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


# -- items 13 and 14: output paths of the wrong kind, arguments out of range ----------------------

def test_wrong_output_paths_and_arguments_fail_before_work(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: rlfn_tiny_x2\nstages: []\n")
    tiny = ["--model", "rlfn_tiny_x2"]
    cases = [
        (["eval", *tiny, "--out", str(tmp_path)], "is a folder"),
        (["eval", *tiny, "--save-sr", str(a_file)], "is a file"),
        (["eval", *tiny, "--out", str(a_file / "x.json")], "is a file"),
        (["run", str(recipe), "--run-dir", str(a_file)], "is a file"),
        (["run", str(recipe), "--device", "tpu"], "--device"),
        (["run", str(tmp_path)], "is a folder"),
        (["sensitivity", *tiny, "--out", str(a_file)], "is a file"),
        (["profile", *tiny, "--sweep", "4:8", "--sweep-dir", str(a_file)], "is a file"),
        (["profile", *tiny, "--sweep", "1:100000"], "at most"),
        (["profile", *tiny, "--input", "1x3x8x8"], "at least 15"),
        (["profile", *tiny, "--input", "1x3x100000x100000"], "too large"),
        (["profile", *tiny, "--out", str(tmp_path)], "is a folder"),
        (["profile", "--model", "rlfn_s_x9", "--no-latency"], "rlfn_s_x9"),
        (["export", *tiny, "--out", str(tmp_path / "m.onnx"), "--opset", "999"], "opset"),
        (["export", *tiny, "--out", str(tmp_path / "m.onnx"), "--tolerance", "-1"], "tolerance"),
        (["export", *tiny, "--out", str(tmp_path)], "is a folder"),
        (["data", "make-lr", str(tmp_path), str(a_file), "--scale", "2"], "is a file"),
        (["data", "download", "div2k", "--root", str(tmp_path / "d"), "--timeout", "0"], "timeout"),
        (["search", *tiny, "--latency-cache", str(tmp_path), "--out", str(tmp_path / "s")],
         "is a folder"),
    ]
    for argv, words in cases:
        rc, out, err = _cli(argv, capsys)
        _one_line(rc, err, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "r.yaml"]   # nothing written


def test_recipe_with_a_huge_trunk_is_refused(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: {trunk: 1000000, blocks: 2}\nstages: []\n")
    rc, out, err = _cli(["validate", str(recipe)], capsys)
    assert rc == 2 and "Traceback" not in err and "4096" in err


def test_export_check_on_too_small_images(tmp_path, capsys):
    from tests.conftest import make_smooth_images

    hr = make_smooth_images(tmp_path / "small" / "HR", n=1, size=28, small=7, seed=0)
    rc, out, err = _cli(["export", "--model", "rlfn_tiny_x2", "--out", str(tmp_path / "m.onnx"),
                         "--check", "--set", str(hr.parent)], capsys)
    _one_line(rc, err, str(hr), "at least 15x15")


def test_small_image_errors_name_the_file(tmp_path, capsys):
    from tests.conftest import make_smooth_images

    hr = make_smooth_images(tmp_path / "small14" / "HR", n=1, size=28, small=7, seed=0)
    rc, out, err = _cli(["eval", "--model", "rlfn_tiny_x2", "--sets", str(hr.parent),
                         "--no-progress"], capsys)
    _one_line(rc, err, str(next(hr.iterdir())), "at least 15x15")


# -- item 15: a decompression bomb ------------------------------------------------------------------

def test_decompression_bomb_is_one_line(tmp_path, capsys):
    import warnings

    from workbench.data.images import image_size, read_image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(bomb, optimize=True)   # 81 Mpx of zeros in a few KB
    assert bomb.stat().st_size < 200_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no DecompressionBombWarning either
        with pytest.raises(WorkbenchError, match="megapixels"):
            read_image(bomb)
        with pytest.raises(WorkbenchError, match="megapixels"):
            image_size(bomb)
    folder = tmp_path / "set" / "HR"
    folder.mkdir(parents=True)
    bomb.rename(folder / "bomb.png")
    rc, out, err = _cli(["eval", "--model", "rlfn_tiny_x2", "--sets", str(folder.parent),
                         "--no-progress"], capsys)
    _one_line(rc, err, "bomb.png", "megapixels")


# -- item 18: export --check compares delivered (uint8) outputs -------------------------------------

def test_export_check_tolerates_rounding_but_not_real_differences(tiny_model, tmp_path):
    import numpy as np

    from workbench.data.benchmark import load_set
    from workbench.prune.export import check_onnx, export_onnx

    path = export_onnx(tiny_model, tmp_path / "m.onnx")
    crops = [np.asarray(load_set("Set5", 2)[0].lr)[:40, :48]]

    class Nudged(torch.nn.Module):   # the same model, 0.002 off: may flip a rounding, no more
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 0.002

    result = check_onnx(Nudged(tiny_model), path, crops, tolerance=1)
    assert result["ok"] and result["max_gray_diff"] <= 1 and result["max_abs_diff"] > 1e-3
    bigger = check_onnx(Nudged(tiny_model), path, crops, tolerance=0)
    assert bigger["max_gray_diff"] == 0 or not bigger["ok"]

    class Off(Nudged):
        def forward(self, x):
            return self.inner(x) + 3.0

    assert not check_onnx(Off(tiny_model), path, crops)["ok"]


# -- item 17: no warnings beside a one-line error; a folder given as the recipe ---------------------

def test_warnings_are_not_printed_beside_an_error(monkeypatch, capsys):
    import warnings

    import workbench.models.artifacts as arts

    def noisy(ref):
        warnings.warn("TypedStorage is deprecated", UserWarning)
        raise WorkbenchError(f"{ref}: broken")

    monkeypatch.setattr(arts, "load_model", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        rc, out, err = _cli(["eval", "--model", "x.pth", "--no-progress"], capsys)
    _one_line(rc, err, "x.pth: broken")
    assert "TypedStorage" not in err

    import workbench.commands.validate as validate_cmd

    def succeeds(args):
        warnings.warn("kept after a success", UserWarning)
        return 0

    monkeypatch.setattr(validate_cmd, "run", succeeds)
    with pytest.warns(UserWarning, match="kept after a success"):
        assert main(["validate", "r.yaml"]) == 0


def test_full_disk_anywhere_in_a_command_is_one_line(monkeypatch, capsys):
    import workbench.commands.validate as validate_cmd

    def fails(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/plot.png")

    monkeypatch.setattr(validate_cmd, "run", fails)
    rc, out, err = _cli(["validate", "r.yaml"], capsys)
    _one_line(rc, err, "/data/plot.png", "no space left")
