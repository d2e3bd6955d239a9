"""The pruning recipe stages (sensitivity, sfp, prune) and `workbench prune` on tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import make_smooth_images
from workbench.models.artifacts import load_artifact
from workbench.cli import main
from workbench.models import group_widths
from workbench.recipes.engine import run_recipe
from workbench.recipes.loader import RecipeError, load_recipe


pytestmark = pytest.mark.usefixtures("one_thread")


def make_images(folder: Path, *, n: int = 3, size: int = 48) -> Path:
    return make_smooth_images(folder, n=n, size=size, small=size // 8, seed=1, prefix="im")


def write_recipe(tmp_path: Path, stages: list[dict]) -> Path:
    recipe = {"model": "rlfn_tiny_x2", "seed": 1, "device": "cpu",
              "data": {"train": [{"root": str(make_images(tmp_path / "images")), "layout": "folder"}],
                       "val": {"sets": ["Set5"]}},
              "stages": stages}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_pruning_stages_run_in_a_recipe(tmp_path):
    path = write_recipe(tmp_path, [
        {"id": "sens", "stage": "sensitivity", "groups": ["block2.*"], "ratios": [0.5]},
        {"id": "sfp", "stage": "sfp", "trunk": 6, "targets": {"block1.mid1": 5}, "iterations": 4,
         "mask_every": 2, "batch_size": 2, "patch_size": 32, "checkpoint_every": 2, "log_every": 1,
         "val": False, "criterion": "l2"},
        {"id": "cut", "stage": "prune", "targets": {"block*.esa.inner": 3}},
    ])
    run = tmp_path / "run"
    records = run_recipe(load_recipe(path), run_dir=run, progress=False)
    assert [r["id"] for r in records] == ["sens", "sfp", "cut"]
    sens = run / "00-sens"
    assert {"results.json", "sensitivity.csv", "ranking.csv", "overview.png"} <= {
        p.name for p in sens.iterdir()}
    assert len(list((sens / "plots").glob("block2.*.png"))) == 5
    sfp = load_artifact(run / "01-sfp" / "artifact")  # reloads from the artifact alone
    widths = group_widths(sfp.spec)
    assert [widths[f"trunk.{i}"] for i in range(3)] == [6, 6, 6] and widths["block1.mid1"] == 5
    assert sfp.metrics["masks"] == 2 and sfp.metrics["masked_vs_pruned_max_abs"] < 1e-4
    assert sfp.lineage["stage"] == "sfp" and sfp.config["trunk"] == 6
    cut = load_artifact(run / "02-cut" / "artifact")
    assert group_widths(cut.spec)["block2.esa.inner"] == 3 and group_widths(cut.spec)["trunk.1"] == 6
    assert cut.lineage["parent"] == str(run / "01-sfp" / "artifact")


def test_stage_config_errors(tmp_path):
    path = write_recipe(tmp_path, [
        {"id": "sens", "stage": "sensitivity", "ratios": [0.5, 1.2]},
        {"id": "sens2", "stage": "sensitivity", "criterion": "l3"},
        {"id": "sfp", "stage": "sfp", "iterations": 2},
    ])
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert "(sens).ratios[1]: must be in (0, 1)" in text and "(sens2).criterion" in text
    assert "trunk: give trunk" in text


def test_prune_cli_groups_and_apply(tmp_path, capsys):
    assert main(["prune", "groups", "--model", "rlfn_tiny_x2"]) == 0
    out = capsys.readouterr().out
    assert "trunk.0" in out and "block2.esa.inner" in out and "upsampler.0" in out
    assert main(["prune", "groups", "--model", "rlfn_tiny_x2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"group": "trunk.0", "width": 8, "producers": ["conv_1", "block_1.c3_r", "conv_2"],
                       "consumers": ["block_1.c1_r", "block_1.c5", "upsampler.0"]}
    target = tmp_path / "p"
    assert main(["prune", "apply", "--model", "rlfn_tiny_x2", "--widths", "trunk=6",
                 "block2.mid1=4", "block*.esa.inner=2", "--out", str(target)]) == 0
    art = load_artifact(target)
    w = group_widths(art.spec)
    assert w["trunk.0"] == w["trunk.2"] == 6 and w["block2.mid1"] == 4 and w["block1.esa.inner"] == 2
    assert art.lineage["stage"] == "prune" and art.lineage["widths"]["block2.mid1"] == 4
    capsys.readouterr()
    assert main(["prune", "apply", "--model", "rlfn_tiny_x2", "--widths", "trunk=9", "--out",
                 str(target)]) == 2
    assert "cannot prune it to 9" in capsys.readouterr().err
    assert main(["prune", "apply", "--model", "rlfn_tiny_x2", "--widths", "mid=x", "--out",
                 str(target)]) == 2
    assert main(["prune", "groups", "--model", str(tmp_path / "missing")]) == 2
