"""The artifact format: atomic, self-describing, weights-only; pruned widths reload exactly."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from workbench.models import artifacts
from workbench.models.artifacts import (ArtifactError, load_artifact, load_model, make_lineage,
                                 save_artifact, update_metrics)
from workbench.models import RLFN


@pytest.fixture
def pruned_model(tiny_spec):
    torch.manual_seed(1)
    spec = tiny_spec.with_widths({"trunk.0": 6, "block1.mid2": 5, "block2.esa.reduce": 3,
                                  "trunk.2": 7})
    return RLFN(spec).eval()


@pytest.mark.parametrize("single_file", [False, True])
def test_round_trip_of_a_pruned_width_model(tmp_path, pruned_model, single_file):
    path = tmp_path / ("a.pt" if single_file else "a")
    lineage = make_lineage(parent="rlfn_tiny_x2", seed=3, stage="sfp")
    save_artifact(path, pruned_model, metrics={"psnr_y": 30.5}, lineage=lineage,
                  config={"lr": 1e-5}, single_file=single_file)
    art = load_artifact(path)
    assert art.spec == pruned_model.spec
    assert art.metrics == {"psnr_y": 30.5} and art.config == {"lr": 1e-5}
    assert art.lineage["seed"] == 3 and art.lineage["environment"]["torch"] == torch.__version__
    x = torch.rand(1, 3, 16, 16) * 255
    with torch.no_grad():
        assert torch.equal(art.model(x), pruned_model(x))


def test_folder_layout_and_metadata(tmp_path, pruned_model):
    save_artifact(tmp_path / "a", pruned_model)
    assert sorted(os.listdir(tmp_path / "a")) == ["artifact.json", "model.pt"]
    meta = json.loads((tmp_path / "a" / "artifact.json").read_text())
    assert meta["architecture"]["trunk"] == 6 and meta["architecture"]["blocks"][1]["esa"] == 3
    assert meta["params"] == sum(p.numel() for p in pruned_model.parameters())
    # the weights file is a plain state dict: loadable with weights_only=True
    state = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert set(state) == set(pruned_model.state_dict())
    update_metrics(tmp_path / "a", {"Set5": {"psnr_y": 1.0}})
    assert load_artifact(tmp_path / "a").metrics["Set5"]["psnr_y"] == 1.0


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path, pruned_model, tiny_model):
    save_artifact(tmp_path / "a", tiny_model)
    save_artifact(tmp_path / "a", pruned_model)
    assert load_artifact(tmp_path / "a").spec == pruned_model.spec
    assert os.listdir(tmp_path) == ["a"]


def test_full_disk_keeps_the_previous_artifact(tmp_path, tiny_model, pruned_model, monkeypatch):
    save_artifact(tmp_path / "a", tiny_model)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", no_space)
    with pytest.raises(OSError):
        save_artifact(tmp_path / "a", pruned_model)
    monkeypatch.undo()
    assert load_artifact(tmp_path / "a").spec == tiny_model.spec
    assert os.listdir(tmp_path) == ["a"]


def test_tampered_weights_are_detected(tmp_path, tiny_model):
    save_artifact(tmp_path / "a", tiny_model)
    state = tiny_model.state_dict()
    state["conv_1.bias"] = state["conv_1.bias"] + 1
    torch.save(state, tmp_path / "a" / "model.pt")
    with pytest.raises(ArtifactError, match="hash"):
        load_artifact(tmp_path / "a")


def test_weights_that_contradict_the_declared_widths(tmp_path, tiny_model, pruned_model):
    save_artifact(tmp_path / "a", tiny_model)
    meta_path = tmp_path / "a" / "artifact.json"
    meta = json.loads(meta_path.read_text())
    meta["architecture"] = pruned_model.spec.to_dict()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="do not match the architecture"):
        load_artifact(tmp_path / "a")


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_model):
    cases = {}
    cases["missing"] = tmp_path / "nope.pth"
    (tmp_path / "trunc.pth").write_bytes(artifacts.torch_bytes(tiny_model.state_dict())[:500])
    cases["truncated"] = tmp_path / "trunc.pth"
    torch.save({"foo": torch.zeros(2)}, tmp_path / "wrong.pth")
    cases["wrong architecture"] = tmp_path / "wrong.pth"
    torch.save({"x": torch.nn.Linear(2, 2)}, tmp_path / "code.pth")
    cases["pickled code"] = tmp_path / "code.pth"
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.pth"
    (tmp_path / "notdir").mkdir()
    cases["not an artifact"] = tmp_path / "notdir"
    expected = {"missing": "no such file", "truncated": "truncated", "wrong architecture":
                "wrong architecture", "pickled code": "pickled code", "empty": "empty file",
                "not an artifact": "not an artifact folder"}
    for label, path in cases.items():
        with pytest.raises(ArtifactError) as info:
            load_artifact(path)
        message = str(info.value)
        assert str(path) in message and expected[label] in message, (label, message)
        assert "\n" not in message


def test_load_model_resolves_names_and_paths(tmp_path, tiny_model):
    art = load_model("rlfn_ntire_x4")
    assert art.spec.trunk == 46 and art.lineage["source"] == "released checkpoint"
    assert load_model("rlfn_tiny_x3").spec.scale == 3
    save_artifact(tmp_path / "m", tiny_model)
    assert load_model(tmp_path / "m").spec == tiny_model.spec
    with pytest.raises(Exception, match="not a model name"):
        load_model("nonsense")
