"""Every shipped checkpoint loads strictly; every kind of bad model file is one line and exit 2."""
from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest
import torch

from workbench.models.artifacts import load_artifact, load_model, save_artifact
from workbench.cli import main
from workbench.models import RLFN, RLFNSpec, build_model, family_of, normalize_state_dict

EXPECTED_PARAMS = {"rlfn_x4": 543740, "rlfn_s_x4": 470208, "rlfn_ntire_x4": 317218,
                   "ntire22_team04_rlfn": 317218, "rlfn_x2": 526856, "rlfn_s_x2": 454620,
                   "span_ch28_x4": 150688, "dipnet_x4": 243252}


def test_every_checkpoint_is_tested(repo_dir):
    shipped = sorted(p.stem for p in (repo_dir / "checkpoints").glob("*.pth"))
    assert shipped == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_checkpoint_loads_strictly(name, repo_dir):
    path = repo_dir / "checkpoints" / f"{name}.pth"
    art = load_artifact(path)
    assert sum(p.numel() for p in art.model.parameters()) == EXPECTED_PARAMS[name]
    raw = family_of(art.model).normalize_state_dict(
        torch.load(path, map_location="cpu", weights_only=True))
    own = art.model.state_dict()
    assert set(raw) == set(own)  # nothing dropped, nothing left at its initial value
    for key, value in raw.items():
        assert torch.equal(own[key], value), key
    # strict load into a freshly built model of the inferred spec
    build_model(art.spec).load_state_dict(raw, strict=True)


def test_challenge_copy_equals_rlfn_ntire(repo_dir):
    a = load_artifact(repo_dir / "checkpoints" / "ntire22_team04_rlfn.pth").model.state_dict()
    b = load_model("rlfn_ntire_x4").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- bad files through the CLI ------------------------------------------------------------------

class Payload:
    """A class instance: pickling it stores a reference to code, which weights_only refuses."""

    def __init__(self) -> None:
        self.x = 1


def _eval_cli(ref: Path | str, capsys) -> tuple[int, str]:
    rc = main(["eval", "--model", str(ref), "--no-progress"])
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing evaluated, nothing half-printed
    return rc, captured.err.strip()


def _assert_one_line(rc: int, err: str, path: Path, *words: str) -> None:
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert str(path) in err
    for word in words:
        assert word in err.lower(), err


def test_missing_path(tmp_path, capsys):
    path = tmp_path / "nope" / "model.pth"
    rc, err = _eval_cli(path, capsys)
    _assert_one_line(rc, err, path, "no such file")


def test_truncated_pth(tmp_path, capsys, repo_dir):
    data = (repo_dir / "checkpoints" / "rlfn_ntire_x4.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    rc, err = _eval_cli(path, capsys)
    _assert_one_line(rc, err, path, "truncated")


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"conv_1.weight": torch.zeros(1), "payload": Payload()}, path)
    rc, err = _eval_cli(path, capsys)
    _assert_one_line(rc, err, path, "pickled code")


def test_wrong_architecture_state_dict(tmp_path, capsys):
    path = tmp_path / "foo.pth"
    torch.save({"foo": torch.zeros(3)}, path)
    rc, err = _eval_cli(path, capsys)
    _assert_one_line(rc, err, path, "wrong architecture")


def test_state_dict_with_a_missing_tensor(tmp_path, capsys, repo_dir):
    state = torch.load(repo_dir / "checkpoints" / "rlfn_ntire_x4.pth", map_location="cpu",
                       weights_only=True)
    state = collections.OrderedDict((k, v) for k, v in state.items() if "esa.conv3" not in k)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    rc, err = _eval_cli(path, capsys)
    _assert_one_line(rc, err, path, "conv3")


def test_artifact_whose_weights_do_not_match_its_widths(tmp_path, capsys, tiny_model):
    folder = save_artifact(tmp_path / "art", tiny_model)
    meta = json.loads((folder / "artifact.json").read_text())
    meta["architecture"]["trunk"] = 10  # declared widths no longer match the tensors
    (folder / "artifact.json").write_text(json.dumps(meta))
    rc, err = _eval_cli(folder, capsys)
    _assert_one_line(rc, err, folder, "do not match")
    # the same for a single-file artifact built from a model of other widths
    other = RLFN(RLFNSpec.uniform(scale=2, feature=6, mid=6, esa=4, blocks=2))
    single = save_artifact(tmp_path / "single.pt", other, single_file=True)
    blob = torch.load(single, weights_only=True)
    blob["state_dict"] = tiny_model.state_dict()
    torch.save(blob, single)
    rc, err = _eval_cli(single, capsys)
    _assert_one_line(rc, err, single, "do not match")


def test_folder_that_is_not_an_artifact(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    rc, err = _eval_cli(folder, capsys)
    _assert_one_line(rc, err, folder, "not an artifact")


def test_bad_file_through_profile_too(tmp_path, capsys):
    path = tmp_path / "foo.pth"
    torch.save({"foo": torch.zeros(3)}, path)
    rc = main(["profile", "--model", str(path), "--no-latency"])
    err = capsys.readouterr().err.strip()
    _assert_one_line(rc, err, path, "wrong architecture")


def test_good_copy_of_a_checkpoint_still_evaluates(tmp_path, capsys, repo_dir):
    """Control for the tests above: the same command with a sound file succeeds."""
    path = tmp_path / "copy.pth"
    shutil.copy(repo_dir / "checkpoints" / "rlfn_ntire_x4.pth", path)
    assert main(["eval", "--model", str(path), "--no-progress", "--summary"]) == 0
    assert "Set5 x4" in capsys.readouterr().out
