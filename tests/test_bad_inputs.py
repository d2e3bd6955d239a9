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

from workbench import artifacts
from workbench.artifacts import ArtifactError, load_artifact, save_artifact
from workbench.cli import main
from workbench.errors import WorkbenchError, WriteError
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
