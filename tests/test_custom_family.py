"""A user's own SR network through register_family: groups, prune, reload, evaluate, export."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from workbench.models.artifacts import load_artifact, load_model, save_artifact
from workbench.models import FAMILIES, create_model, register_family
from workbench.models.generic import ModuleSpec, module_family

pytestmark = pytest.mark.usefixtures("one_thread")


class ResBlock(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class TinyEDSR(nn.Module):
    """EDSR-like: head, residual blocks, body conv + long skip, x2-x2 PixelShuffle upsampler."""

    def __init__(self, channels: int = 8, blocks: int = 2, scale: int = 4) -> None:
        super().__init__()
        assert scale == 4
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels, channels) for _ in range(blocks)])
        self.body_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.up = nn.Sequential(nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2),
                                nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2))
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x):
        f = self.head(x / 255.0)
        return self.tail(self.up(self.body_conv(self.body(f)) + f)) * 255.0


def _family():
    if "tiny_edsr" not in FAMILIES:
        register_family(module_family("tiny_edsr", build=lambda cfg: TinyEDSR(**cfg),
                                      presets={"tiny_edsr": {"channels": 8, "blocks": 2}},
                                      scales=(4,)))
    return FAMILIES["tiny_edsr"]


def test_edsr_groups_protect_both_upsampler_convs():
    from workbench.prune.groups import channel_groups, protected_convs

    _family()
    model = create_model("tiny_edsr_x4")
    assert isinstance(model.spec, ModuleSpec) and model.spec.scale == 4
    assert protected_convs(model) == ["up.0", "up.2"]  # the tail's output is scaled, not returned
    groups = channel_groups(model)
    assert list(groups) == ["head", "body.0.conv1", "body.1.conv1"]
    trunk = groups["head"]
    assert trunk.producers == ("head", "body.0.conv2", "body.1.conv2", "body_conv")
    assert trunk.consumers == ("body.0.conv1", "body.1.conv1", "body_conv", "up.0")


def test_edsr_prune_apply_reloads_and_keeps_a_silenced_channel(tmp_path, capsys):
    from workbench.cli import main
    from workbench.prune.groups import channel_groups
    from workbench.prune.surgery import prune_to_widths

    _family()
    torch.manual_seed(0)
    model = create_model("tiny_edsr_x4").eval()
    groups = channel_groups(model)
    with torch.no_grad():
        for g in groups.values():
            for name in g.producers:
                model.get_submodule(name).weight[2] = 0
                model.get_submodule(name).bias[2] = 0
    keep = {n: [i for i in range(g.width) if i != 2] for n, g in groups.items()}
    pruned = prune_to_widths(model, {}, keep=keep).eval()
    x = torch.rand(1, 3, 8, 8) * 255
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-3)
    assert pruned.up[0].in_channels == 7 and pruned.up[0].out_channels == 32  # outputs fixed
    save_artifact(tmp_path / "p", pruned)
    meta = json.loads((tmp_path / "p" / "artifact.json").read_text())
    assert meta["family"] == "tiny_edsr" and meta["architecture"]["widths"]["head"] == 7
    art = load_artifact(tmp_path / "p")
    with torch.no_grad():
        assert torch.equal(art.model.eval()(x), pruned(x))
    # through the CLI
    out = tmp_path / "cli"
    assert main(["prune", "apply", "--model", "tiny_edsr_x4", "--widths", "head=6",
                 "body.*.conv1=5", "--out", str(out)]) == 0
    art = load_artifact(out)
    assert art.spec.group_widths() == {"head": 6, "body.0.conv1": 5, "body.1.conv1": 5}


def test_edsr_evaluates_and_exports(tmp_path):
    from workbench.data.benchmark import load_set
    from workbench.measure.evaluate import evaluate_set
    from workbench.prune.export import check_onnx, export_onnx

    _family()
    art = load_model("tiny_edsr_x4")
    pset = load_set("Set5", 4)
    result = evaluate_set(art.model, pset, progress=False)
    assert len(result.images) == 5
    path = export_onnx(art.model, tmp_path / "e.onnx")
    lr = pset.pairs[0].lr[:16, :16].copy()
    assert check_onnx(art.model, path, [lr], tolerance=1e-2)["ok"]


def test_entry_point_family_is_registered(monkeypatch):
    import importlib.metadata as md

    from workbench.models import family as fam_mod

    class EP:
        name = "ep_edsr"

        def load(self):
            return lambda: module_family("ep_edsr", build=lambda cfg: TinyEDSR(**cfg),
                                         presets={"ep_edsr": {"channels": 4, "blocks": 1}},
                                         scales=(4,))

    monkeypatch.setattr(md, "entry_points", lambda group=None: [EP()] if group == "workbench.families" else [])
    monkeypatch.setattr(fam_mod, "_ENTRY_POINTS_LOADED", False)
    try:
        model = create_model("ep_edsr_x4")
        assert model.spec.family == "ep_edsr"
    finally:
        FAMILIES.pop("ep_edsr", None)


class IMDBlock(nn.Module):
    """IMDN-like information distillation: split off ``d`` channels twice, concatenate, fuse."""

    def __init__(self, c: int, d: int) -> None:
        super().__init__()
        self.d = d
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c - d, c, 3, padding=1)
        self.c3 = nn.Conv2d(c - d, d, 3, padding=1)
        self.c5 = nn.Conv2d(3 * d, c, 1)

    def forward(self, x):
        d1, r1 = torch.split(torch.relu(self.c1(x)), (self.d, self.c1.out_channels - self.d), 1)
        d2, r2 = torch.split(torch.relu(self.c2(r1)), (self.d, self.c2.out_channels - self.d), 1)
        return self.c5(torch.cat([d1, d2, self.c3(r2)], 1)) + x


class TinyIMDN(nn.Module):
    def __init__(self, channels: int = 12, distill: int = 3, scale: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.block = IMDBlock(channels, distill)
        self.up = nn.Sequential(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1),
                                nn.PixelShuffle(scale))

    def forward(self, x):
        f = self.head(x)
        return self.up(self.block(f) + f)


def test_imdn_split_groups_stay_whole_concat_and_trunk_prune(tmp_path):
    from workbench.prune.groups import channel_groups
    from workbench.prune.surgery import prune_to_widths

    if "tiny_imdn" not in FAMILIES:
        register_family(module_family("tiny_imdn", build=lambda cfg: TinyIMDN(**cfg),
                                      presets={"tiny_imdn": {"channels": 12, "distill": 3}},
                                      scales=(2,)))
    torch.manual_seed(0)
    model = create_model("tiny_imdn_x2").eval()
    groups = channel_groups(model)
    # c1 and c2 are split between two consumers: left whole; c3 feeds a slice of c5's concat
    assert set(groups) == {"head", "block.c3"}
    assert groups["head"].producers == ("head", "block.c5")
    assert groups["block.c3"].input_indices("block.c5") == [6, 7, 8]
    pruned = prune_to_widths(model, {"head": 10, "block.c3": 2}).eval()
    assert pruned.block.c5.in_channels == 8 and pruned.up[0].in_channels == 10
    save_artifact(tmp_path / "imdn", pruned)
    art = load_artifact(tmp_path / "imdn")
    x = torch.rand(1, 3, 8, 8) * 255
    with torch.no_grad():
        assert torch.equal(art.model.eval()(x), pruned(x))


def registered_custom_model(name: str):
    """tiny_edsr_x4 or tiny_imdn_x2 (seeded), its family registered through module_family on first use."""
    from workbench.models import FAMILIES, create_model, register_family
    from workbench.models.generic import module_family

    if name == "tiny_edsr_x4" and "tiny_edsr" not in FAMILIES:
        register_family(module_family("tiny_edsr", build=lambda cfg: TinyEDSR(**cfg),
                                      presets={"tiny_edsr": {"channels": 8, "blocks": 2}},
                                      scales=(4,)))
    if name == "tiny_imdn_x2" and "tiny_imdn" not in FAMILIES:
        register_family(module_family("tiny_imdn", build=lambda cfg: TinyIMDN(**cfg),
                                      presets={"tiny_imdn": {"channels": 12, "distill": 3}},
                                      scales=(2,)))
    torch.manual_seed(0)
    return create_model(name).eval()


def test_profile_of_several_models_defaults_to_the_first_model_s_mode(tmp_path):
    import json

    from workbench.cli import main

    _family()
    out = tmp_path / "cmp.json"
    assert main(["profile", "--model", "tiny_edsr_x4", "rlfn_tiny_x4", "--input", "1x3x16x16",
                 "--repeats", "2", "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["deploy_mode"] for r in rows] == ["channels_last", "channels_last"]  # a wrapped module's
