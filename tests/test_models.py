"""The RLFN family: widths from specs, presets, strict loading of every released checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench.models import (PRESETS, RLFN, BlockSpec, RLFNSpec, create_model, group_widths,
                              list_models, normalize_state_dict, parse_model_name,
                              spec_from_state_dict)
from workbench.core.errors import WorkbenchError

CHECKPOINTS = sorted((Path(__file__).resolve().parents[1] / "checkpoints").glob("*.pth"))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_checkpoints_are_shipped_with_licence(repo_dir):
    names = {p.name for p in CHECKPOINTS}
    assert names == {"rlfn_x2.pth", "rlfn_x4.pth", "rlfn_s_x2.pth", "rlfn_s_x4.pth",
                     "rlfn_ntire_x4.pth", "ntire22_team04_rlfn.pth", "span_ch28_x4.pth",
                     "dipnet_x4.pth"}
    for licence in ("LICENSE-Apache-2.0.txt", "LICENSE-MIT-DIPNet.txt", "LICENSE-MIT-NTIRE2026_ESR.txt"):
        assert (repo_dir / "checkpoints" / licence).is_file()
    notice = (repo_dir / "checkpoints" / "NOTICE").read_text()
    assert "Apache" in notice and "span_ch28_x4.pth" in notice and "dipnet_x4.pth" in notice


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.stem)
def test_every_checkpoint_loads_strictly_into_its_preset(path, shared_dir):
    expected = json.loads((shared_dir / "reference" / "expected.json").read_text())["checkpoints"]
    from workbench.models.artifacts import load_artifact

    art = load_artifact(path)  # the family that claims the keys loads them strictly
    spec, model = art.spec, art.model
    ref = expected[path.stem]
    assert _params(model) == ref["params"]
    assert spec.scale == ref["scale"]
    if "feature_channels" in ref and ref["model"] in ("RLFN", "RLFN_S", "RLFN_Prune"):
        preset = {"RLFN": "rlfn", "RLFN_S": "rlfn_s", "RLFN_Prune": "rlfn_ntire"}[ref["model"]]
        assert spec == PRESETS[preset].spec(ref["scale"])


def test_challenge_copy_has_the_same_values_as_rlfn_ntire():
    a = normalize_state_dict(torch.load(CHECKPOINTS[0].parent / "rlfn_ntire_x4.pth",
                                        map_location="cpu", weights_only=True))
    b = normalize_state_dict(torch.load(CHECKPOINTS[0].parent / "ntire22_team04_rlfn.pth",
                                        map_location="cpu", weights_only=True))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["rlfn_x2", "rlfn_x4", "rlfn_s_x2", "rlfn_s_x4", "rlfn_ntire_x4"])
def test_create_model_pretrained(name):
    model = create_model(name, pretrained=True)
    assert model.scale == int(name[-1])


@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_at_every_scale(name):
    preset, scale = parse_model_name(name)
    model = create_model(name)
    x = torch.rand(1, 3, 15, 17) * 255
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 15 * scale, 17 * scale)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(WorkbenchError, match="rlfn_s_x4"):
        parse_model_name("rlfn_xl_x4")
    with pytest.raises(WorkbenchError, match="no released weights"):
        create_model("rlfn_x3", pretrained=True)


def test_non_uniform_widths_build_and_are_named(tiny_spec):
    spec = tiny_spec.with_widths({"trunk.0": 6, "block1.mid1": 3, "block2.esa.inner": 2, "trunk.1": 5})
    assert group_widths(spec)["trunk.1"] == 5
    model = RLFN(spec)
    assert model.block_2.c1_r.in_channels == 5 and model.block_1.c3_r.out_channels == 6
    assert model.conv_2.out_channels == 6 and model.upsampler[0].out_channels == 3 * 4
    with torch.no_grad():
        assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3, 32, 32)
    assert spec_from_state_dict(model.state_dict()) == spec
    assert RLFNSpec.from_dict(spec.to_dict()) == spec


def test_group_names_round_trip_through_with_widths(tiny_spec):
    names = list(group_widths(tiny_spec))
    assert names[0] == "trunk.0" and names[-1] == "trunk.2" and "block2.esa.fuse" in names
    with pytest.raises(KeyError, match="unknown channel groups"):
        tiny_spec.with_widths({"block9.mid1": 3})


def test_spec_rejects_bad_widths():
    with pytest.raises(ValueError, match="mid1"):
        BlockSpec(mid1=0, mid2=4, out=4)
    with pytest.raises(ValueError, match="scale"):
        RLFNSpec.uniform(scale=5, feature=8)


def test_minimum_input_size_is_15():
    model = create_model("rlfn_tiny_x2")
    with torch.no_grad():
        model(torch.rand(1, 3, 15, 15))
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 3, 14, 14))
