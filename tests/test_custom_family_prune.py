"""Sensitivity and SFP on the custom networks (tiny EDSR-like and IMDN-like) through the family
interface; the SFP-pruned artifact reloads from its own record."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.models.artifacts import load_artifact, save_artifact
from workbench.data.benchmark import ImagePair, PairedSet
from workbench.models import FAMILIES, create_model, group_widths, register_family
from workbench.models.generic import module_family
from workbench.prune.sensitivity import analyze
from workbench.prune.sfp import SoftFilterPruning
from workbench.train.loop import TrainSettings, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _register() -> None:
    from test_custom_family import TinyEDSR, TinyIMDN

    if "tiny_edsr" not in FAMILIES:
        register_family(module_family("tiny_edsr", build=lambda cfg: TinyEDSR(**cfg),
                                      presets={"tiny_edsr": {"channels": 8, "blocks": 2}},
                                      scales=(4,)))
    if "tiny_imdn" not in FAMILIES:
        register_family(module_family("tiny_imdn", build=lambda cfg: TinyIMDN(**cfg),
                                      presets={"tiny_imdn": {"channels": 12, "distill": 3}},
                                      scales=(2,)))


def _pairs(scale: int, n: int = 3) -> PairedSet:
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        h, w = 10 + 2 * i, 12
        yy, xx = np.mgrid[0:scale * h, 0:scale * w]
        hr = np.stack([(xx * 5 + yy * 3) % 256, (yy * 7) % 256, (xx * 2 + 40) % 256], -1)
        hr = np.clip(hr + rng.normal(0, 8, hr.shape), 0, 255).astype(np.uint8)
        lr = hr.reshape(h, scale, w, scale, 3).mean((1, 3)).round().astype(np.uint8)
        pairs.append(ImagePair(name=f"im{i}", hr=hr, lr=lr))
    return PairedSet(name="Tiny", scale=scale, root=None, pairs=pairs, embedded=False)


class RandomPairs:
    def __init__(self, scale: int, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.hr = torch.rand(n, 3, 8 * scale, 8 * scale, generator=g) * 255
        self.lr = torch.nn.functional.avg_pool2d(self.hr, scale)

    def __len__(self) -> int:
        return len(self.hr)

    def __getitem__(self, i: int):
        return self.lr[i], self.hr[i]


def _model(name: str):
    _register()
    torch.manual_seed(0)
    return create_model(name).eval()


def test_edsr_sensitivity_ranks_groups_and_cache_is_exact():
    model = _model("tiny_edsr_x4")
    with torch.no_grad():  # block 1's residual branch contributes nothing: its mid group is free
        model.body[1].conv2.weight.zero_()
        model.body[1].conv2.bias.zero_()
    pset = _pairs(4)
    res = analyze(model, pset, ratios=[0.5, 0.75], criterion="l1", progress=False)
    assert {r["group"] for r in res.rows} == {"head", "body.0.conv1", "body.1.conv1"}
    assert [g["rank"] for g in res.ranking] == [1, 2, 3]
    drops = [g["mean_drop"] for g in res.ranking]
    assert drops == sorted(drops)  # most redundant first
    by = {g["group"]: g for g in res.ranking}
    assert by["body.1.conv1"]["drop@0.5"] == by["body.1.conv1"]["drop@0.75"] == 0.0  # dead
    # the live groups change the output (a random net: the sign of the change is chance)
    assert abs(by["head"]["mean_drop"]) > 1e-4 and abs(by["body.0.conv1"]["drop@0.75"]) > 1e-5
    full = analyze(model, pset, ratios=[0.5, 0.75], criterion="l1", progress=False,
                   use_cache=False)
    assert max(abs(a["psnr_y"] - b["psnr_y"]) for a, b in zip(res.rows, full.rows)) < 1e-6
    head = next(r for r in res.rows if r["group"] == "head" and r["ratio"] == 0.5)
    mid = next(r for r in res.rows if r["group"] == "body.0.conv1" and r["ratio"] == 0.5)
    assert head["params_saved"] > mid["params_saved"] > 0  # the coupled trunk saves more


def test_imdn_sensitivity_covers_the_concat_slice_group():
    model = _model("tiny_imdn_x2")
    res = analyze(model, _pairs(2), ratios=[0.34, 0.67], criterion="l2", progress=False)
    kept = {(r["group"], r["ratio"]): r["kept"] for r in res.rows}
    assert kept == {("head", 0.34): 8, ("head", 0.67): 4, ("block.c3", 0.34): 2,
                    ("block.c3", 0.67): 1}
    full = analyze(model, _pairs(2), ratios=[0.34, 0.67], criterion="l2", progress=False,
                   use_cache=False)
    assert max(abs(a["psnr_y"] - b["psnr_y"]) for a, b in zip(res.rows, full.rows)) < 1e-6
    assert sorted(g["group"] for g in res.ranking) == ["block.c3", "head"]


@pytest.mark.parametrize("name,targets,expect", [
    ("tiny_edsr_x4", {"head": 6, "body.*.conv1": 5},
     {"head": 6, "body.0.conv1": 5, "body.1.conv1": 5}),
    ("tiny_imdn_x2", {"head": 10, "block.c3": 2}, {"head": 10, "block.c3": 2}),
])
def test_sfp_runs_and_pruned_artifact_reloads_alone(name, targets, expect, tmp_path):
    model = _model(name).train()
    scale = model.spec.scale
    sfp = SoftFilterPruning(model, targets, criterion="l2")
    settings = TrainSettings(iterations=4, batch_size=2, patch_size=8 * scale, lr=1e-3,
                             epoch_iterations=2, checkpoint_every=0, log_every=1)
    fit(model, RandomPairs(scale), settings=settings, device="cpu", seed=1, callbacks=[sfp],
        progress=False)
    assert len(sfp.history) == 2
    model.eval()
    pruned = sfp.finalize(model)
    assert group_widths(pruned.spec) == expect
    x = torch.rand(1, 3, 10, 12) * 255
    with torch.no_grad():
        masked, out = model(x), pruned(x)
    assert (masked - out).abs().max().item() < 1e-3 and masked.abs().max() > 1
    path = save_artifact(tmp_path / "sfp", pruned)
    meta = json.loads((path / "artifact.json").read_text())
    assert meta["family"] == name.rsplit("_x", 1)[0] and meta["architecture"]["widths"]
    again = load_artifact(path)  # rebuilt from the recorded family, config and widths alone
    assert again.spec == pruned.spec
    with torch.no_grad():
        assert torch.equal(again.model.eval()(x), out)
