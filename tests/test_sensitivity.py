"""One-shot sensitivity analysis: cached partial forwards, rows, ranking, outputs, CLI and stage."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.data.benchmark import ImagePair, PairedSet
from workbench.core.errors import WorkbenchError
from workbench.prune.groups import expected_groups
from workbench.prune.sensitivity import (ActivationCache, analyze, channels_to_remove,
                                         forward_from, start_point, write_outputs)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_set() -> PairedSet:
    """Three real-looking x2 pairs (smooth gradients + noise), 18..24 px LR."""
    rng = np.random.default_rng(0)
    pairs = []
    for i, (h, w) in enumerate([(18, 20), (24, 16), (16, 22)]):
        yy, xx = np.mgrid[0:2 * h, 0:2 * w]
        hr = np.stack([(xx * 5 + yy * 3) % 256, (yy * 7) % 256, (xx * 2 + 40) % 256], -1)
        hr = np.clip(hr + rng.normal(0, 8, hr.shape), 0, 255).astype(np.uint8)
        lr = hr.reshape(h, 2, w, 2, 3).mean((1, 3)).round().astype(np.uint8)
        pairs.append(ImagePair(name=f"im{i}", hr=hr, lr=lr))
    return PairedSet(name="Tiny", scale=2, root=None, pairs=pairs, embedded=False)


def test_start_points():
    assert start_point("trunk.0") == ("input", 0)
    assert start_point("trunk.2") == ("res", 2)
    assert start_point("block3.mid2") == ("in", 3)
    assert start_point("block1.esa.inner") == ("esa", 1)


def test_forward_from_every_point_equals_forward(tiny_model, tiny_set):
    cache = ActivationCache(tiny_model, list(tiny_set), scale=2, device=torch.device("cpu"))
    img = cache.images[0]
    with torch.no_grad():
        full = tiny_model(img.lr)
        for point, act in img.points.items():
            assert torch.equal(forward_from(tiny_model, point, act, img.feature), full), point


def test_cached_analysis_equals_full_recompute(tiny_model, tiny_set):
    kw = dict(ratios=[0.25, 0.5, 0.9], progress=False)
    cached = analyze(tiny_model, tiny_set, **kw)
    full = analyze(tiny_model, tiny_set, use_cache=False, **kw)
    assert [(r["group"], r["ratio"]) for r in cached.rows] == [(r["group"], r["ratio"]) for r in full.rows]
    assert max(abs(a["psnr_y"] - b["psnr_y"]) for a, b in zip(cached.rows, full.rows)) < 1e-6
    # every group x ratio appears; widths 4 at 0.25 and 0.5 keep 3 and 2 channels
    groups = list(expected_groups(tiny_model.spec))
    assert {r["group"] for r in cached.rows} == set(groups)
    inner = {r["ratio"]: r for r in cached.rows if r["group"] == "block1.esa.inner"}
    assert (inner[0.25]["kept"], inner[0.5]["kept"], inner[0.9]["kept"]) == (3, 2, 1)
    # coupled: pruning a trunk group saves params in several layers, more than a mid group
    trunk = next(r for r in cached.rows if r["group"] == "trunk.1" and r["ratio"] == 0.5)
    mid = next(r for r in cached.rows if r["group"] == "block1.mid1" and r["ratio"] == 0.5)
    assert trunk["params_saved"] > mid["params_saved"] > 0
    assert trunk["gflops_saved"] > 0
    assert [g["rank"] for g in cached.ranking] == list(range(1, len(groups) + 1))
    drops = [g["mean_drop"] for g in cached.ranking]
    assert drops == sorted(drops)


def test_l2_and_output_criteria(tiny_model, tiny_set):
    for criterion in ("l2", "output"):
        kw = dict(ratios=[0.5], groups=["trunk.1", "block1.esa.*"], criterion=criterion,
                  progress=False)
        a, b = analyze(tiny_model, tiny_set, **kw), analyze(tiny_model, tiny_set, use_cache=False, **kw)
        assert len(a.rows) == 4 and a.criterion == criterion
        assert max(abs(x["psnr_y"] - y["psnr_y"]) for x, y in zip(a.rows, b.rows)) < 1e-6


def test_dead_channels_show_zero_drop(tiny_model, tiny_set):
    """A group with two silenced channels loses nothing when up to two channels go (l1 picks
    the dead ones), and loses PSNR when more go."""
    group = expected_groups(tiny_model.spec)["block2.mid1"]
    with torch.no_grad():
        for c in (1, 5):
            tiny_model.block_2.c1_r.weight[c] = 0
            tiny_model.block_2.c1_r.bias[c] = 0
    res = analyze(tiny_model, tiny_set, ratios=[0.25, 0.75], groups=["block2.mid1"],
                  progress=False)
    by = {r["ratio"]: r for r in res.rows}
    assert group.width == 8 and by[0.25]["removed"] == 2
    assert abs(by[0.25]["psnr_drop"]) < 1e-9
    assert abs(by[0.75]["psnr_drop"]) > 1e-6  # a random tiny model: small but not zero


def test_outputs_written(tiny_model, tiny_set, tmp_path):
    res = analyze(tiny_model, tiny_set, ratios=[0.5, 0.75], groups=["trunk.*", "block1.esa.*"],
                  progress=False, latency=True, latency_shape=(1, 3, 16, 16), latency_repeats=1)
    assert res.baseline["latency_ms"] > 0 and all(r["latency_ms"] > 0 for r in res.rows)
    paths = write_outputs(res, tmp_path / "out")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 6 * 2 and set(rows[0]) >= {"group", "ratio", "psnr_drop", "params", "flops_g"}
    ranking = list(csv.DictReader(open(paths["ranking"])))
    assert [r["rank"] for r in ranking] == [str(i) for i in range(1, 7)]
    data = json.loads(paths["json"].read_text())
    assert data["baseline"]["params"] == sum(p.numel() for p in tiny_model.parameters())
    pngs = sorted(p.name for p in (tmp_path / "out" / "plots").glob("*.png"))
    assert pngs == sorted(f"{g}.png" for g in ["trunk.0", "trunk.1", "trunk.2", "block1.esa.reduce",
                                                "block1.esa.inner", "block1.esa.fuse"])
    assert (tmp_path / "out" / "overview.png").stat().st_size > 10_000
    assert any((tmp_path / "out" / "tb").iterdir())


def test_bad_arguments(tiny_model, tiny_set):
    with pytest.raises(WorkbenchError, match=r"in \(0, 1\)"):
        analyze(tiny_model, tiny_set, ratios=[1.5], progress=False)
    with pytest.raises(WorkbenchError, match="matches no channel group"):
        analyze(tiny_model, tiny_set, groups=["nothing*"], progress=False)
    with pytest.raises(WorkbenchError, match="unknown importance"):
        analyze(tiny_model, tiny_set, criterion="magic", progress=False)
    assert channels_to_remove(16, 0.1) == 2 and channels_to_remove(4, 0.9) == 3
    assert channels_to_remove(8, 0.01) == 1


def test_sensitivity_cli(tmp_path, capsys):
    out = tmp_path / "sens"
    code = main(["sensitivity", "--model", "rlfn_tiny_x2", "--groups", "block2.*", "--ratios",
                 "0.5", "--out", str(out), "--no-progress", "--no-plots"])
    assert code == 0
    text = capsys.readouterr().out
    assert "block2.esa.inner" in text and "baseline Y-PSNR" in text
    assert (out / "ranking.csv").is_file() and not (out / "plots").exists()
    assert main(["sensitivity", "--model", "rlfn_tiny_x2", "--ratios", "0", "--out",
                 str(out)]) == 2
