"""The measured pruning plan (workbench.prune.plan): groups taken in order of their one-shot PSNR
drop until a latency target is met, as a function, a recipe stage and `workbench prune plan`."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import make_smooth_images
from workbench.cli import main
from workbench.core.errors import WorkbenchError
from workbench.data.benchmark import load_set
from workbench.models import group_widths
from workbench.models.artifacts import load_artifact, load_model
from workbench.prune import plan as plan_module
from workbench.prune.plan import plan_cuts, write_plan
from workbench.prune.sensitivity import ActivationCache
from workbench.prune.surgery import prune_to_widths

pytestmark = pytest.mark.usefixtures("one_thread")

GROUPS = ["block*.mid1", "block*.mid2"]


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def params_ratio(parent, pruned, mode):
    """A stand-in stopwatch: latency proportional to the parameter count, per mode."""
    r = params(pruned) / params(parent) * (0.9 if mode == "bf16" else 1.0)
    return {"ratio": r, "p10": r - 0.01, "p90": r + 0.01}


@pytest.fixture(scope="module")
def tiny():
    art = load_model("rlfn_tiny_x2")
    return art.model, load_set("Set5", 2)


def test_plan_takes_groups_in_sensitivity_order_until_every_mode_meets_the_target(tiny, tmp_path):
    model, pset = tiny
    full = plan_cuts(model, pset, width=4, target_ratio=0.01, groups=GROUPS, modes=["fused"],
                     measure=params_ratio, progress=False)
    assert not full.reached and len(full.steps) == 4            # every candidate, none enough
    alone = [c["drop_alone_db"] for c in full.candidates]
    assert alone == sorted(alone)                                 # smallest one-shot drop first
    assert [s.group for s in full.steps] == [c["group"] for c in full.candidates]
    # a target between step 2 and step 3 of the fp32 mode; bf16 (0.9x) meets it earlier
    r2, r3 = (full.steps[i].latency_ratio["fused"] for i in (1, 2))
    target = (r2 + r3) / 2
    plan = plan_cuts(model, pset, width=4, target_ratio=target, groups=GROUPS,
                     modes=["fused", "bf16"], measure=params_ratio, progress=False)
    assert plan.reached and len(plan.steps) == 3
    assert [s.meets_target for s in plan.steps] == [False, False, True]   # every mode must meet it
    assert plan.steps[1].latency_ratio["bf16"] <= target < plan.steps[1].latency_ratio["fused"]
    assert plan.widths == {s.group: 4 for s in plan.steps}
    # each step's joint score is the model cut to every group so far, scored like the set
    pruned = prune_to_widths(model, plan.widths)
    assert group_widths(pruned.spec)[plan.steps[0].group] == 4
    cache = ActivationCache(model, list(pset.pairs), scale=2, device="cpu", keep_points=False)
    assert plan.steps[-1].psnr_y == pytest.approx(cache.psnr(pruned, None), abs=1e-9)
    assert plan.steps[-1].params == params(pruned)
    assert plan.steps[0].drop_db == pytest.approx(plan.steps[0].drop_alone_db, abs=1e-9)
    text = plan.format()
    assert "meets the target" in text and "reached" in text and "not reached" in full.format()
    files = write_plan(plan, tmp_path / "plan")
    assert {f.name for f in files} == {"plan.json", "plan.csv", "plan.png"}
    rows = list(csv.DictReader((tmp_path / "plan" / "plan.csv").open()))
    assert [r["group"] for r in rows] == [s.group for s in plan.steps]
    assert float(rows[-1]["ratio_bf16"]) == pytest.approx(plan.steps[-1].latency_ratio["bf16"], abs=1e-4)
    saved = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert saved["widths"] == plan.widths and saved["reached"] is True


def test_plan_refuses_bad_settings(tiny):
    model, pset = tiny
    with pytest.raises(WorkbenchError, match=r"ratio in \(0, 1\]"):
        plan_cuts(model, pset, width=4, target_ratio=1.5, measure=params_ratio, progress=False)
    with pytest.raises(WorkbenchError, match="no channel group wider than 8"):
        plan_cuts(model, pset, width=8, target_ratio=0.8, groups=GROUPS, measure=params_ratio,
                  progress=False)
    with pytest.raises(WorkbenchError, match="unknown deploy mode|mode"):
        plan_cuts(model, pset, width=4, target_ratio=0.8, modes=["warp"], measure=params_ratio,
                  progress=False)


def _recipe(tmp_path: Path, plan: dict) -> Path:
    images = make_smooth_images(tmp_path / "images", n=3, size=48, small=6, seed=1, prefix="im")
    recipe = {"model": "rlfn_tiny_x2", "seed": 1, "device": "cpu",
              "data": {"train": [{"root": str(images), "layout": "folder"}], "val": {"sets": ["Set5"]}},
              "stages": [{"id": "cut", "stage": "prune", "plan": plan}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_prune_stage_prunes_to_the_plan_and_stops_when_it_misses(tmp_path, monkeypatch):
    from workbench.recipes.engine import run_recipe
    from workbench.recipes.loader import RecipeError, load_recipe

    monkeypatch.setattr(plan_module, "_stopwatch", lambda **_: params_ratio)
    run = tmp_path / "run"
    run_recipe(load_recipe(_recipe(tmp_path, {"latency_ratio": 0.97, "width": 4, "groups": GROUPS,
                                              "deploy": ["fused"], "rounds": 1})),
               run_dir=run, progress=False)
    saved = json.loads((run / "00-cut" / "plan.json").read_text())
    art = load_artifact(run / "00-cut" / "artifact")
    widths = group_widths(art.spec)
    assert saved["reached"] and saved["widths"] and all(widths[g] == 4 for g in saved["widths"])
    assert art.metrics["plan"]["widths"] == saved["widths"]
    assert art.metrics["plan"]["latency_ratio"]["fused"] <= 0.97
    assert (run / "00-cut" / "plan.png").stat().st_size > 0
    # the target out of reach: the recipe stops with the closest figure, unless on_missed: last
    other = tmp_path / "missed"
    other.mkdir()
    with pytest.raises(WorkbenchError, match=r"did not reach 0.01x .*closest fused"):
        run_recipe(load_recipe(_recipe(other, {"latency_ratio": 0.01, "width": 4, "groups": GROUPS})),
                   run_dir=other / "run", progress=False)
    last = tmp_path / "last"
    last.mkdir()
    run_recipe(load_recipe(_recipe(last, {"latency_ratio": 0.01, "width": 4, "groups": GROUPS,
                                          "on_missed": "last", "max_groups": 2})),
               run_dir=last / "run", progress=False)
    assert len(load_artifact(last / "run" / "00-cut" / "artifact").metrics["plan"]["widths"]) == 2
    with pytest.raises(RecipeError, match="not both"):
        bad = _recipe(tmp_path / "bad", {"width": 4})
        raw = yaml.safe_load(bad.read_text())
        raw["stages"][0]["targets"] = {"block1.mid1": 4}
        bad.write_text(yaml.safe_dump(raw))
        load_recipe(bad)


def test_cli_prune_plan_writes_the_table_and_the_artifact(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plan_module, "_stopwatch", lambda **_: params_ratio)
    out = tmp_path / "plan"
    assert main(["prune", "plan", "--model", "rlfn_tiny_x2", "--width", "4", "--latency-ratio", "0.97",
                 "--groups", *GROUPS, "--rounds", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "meets the target" in text and "widths:" in text
    art = load_artifact(out / "artifact")
    assert art.lineage["stage"] == "prune plan"
    assert group_widths(art.spec) != group_widths(load_model("rlfn_tiny_x2").spec)
    assert main(["prune", "plan", "--model", "rlfn_tiny_x2", "--width", "4", "--latency-ratio", "0.01",
                 "--groups", *GROUPS, "--out", str(tmp_path / "missed")]) == 1
    assert "no artifact (target not reached)" in capsys.readouterr().out
    assert (tmp_path / "missed" / "plan.csv").exists() and not (tmp_path / "missed" / "artifact").exists()


def test_plan_times_each_step_interleaved_with_the_parent(tiny):
    """The real stopwatch: each step timed in its deploy mode against the parent in that mode."""
    import math

    model, pset = tiny
    plan = plan_cuts(model, pset, width=4, target_ratio=1.0, groups=["block1.mid1"],
                     modes=["eager", "fused"], input_shape=(1, 3, 16, 16), rounds=3, progress=False)
    (step,) = plan.steps
    for mode in ("eager", "fused"):
        r = step.latency_ratio[mode]
        assert math.isfinite(r) and r > 0
        assert step.latency_ratio_p10[mode] <= r <= step.latency_ratio_p90[mode]
    assert plan.reached == all(step.latency_ratio[m] <= 1.0 for m in ("eager", "fused"))
