"""The engine end to end on a tiny model: every training stage and evaluate, the run folder's files,
lineage, skipping finished stages, rerunning changed ones, --from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_smooth_images
from workbench.models.artifacts import load_artifact
from workbench.recipes.engine import run_recipe
from workbench.recipes.loader import load_recipe


pytestmark = pytest.mark.usefixtures("one_thread")


def make_images(folder: Path, *, n: int = 4, size: int = 48) -> Path:
    """Smooth random RGB images (so bicubic LR is meaningful)."""
    return make_smooth_images(folder, n=n, size=size, small=size // 8, seed=0, prefix="img")


def tiny_recipe(tmp_path: Path) -> Path:
    images = make_images(tmp_path / "images")
    common = {"batch_size": 2, "patch_size": 32, "checkpoint_every": 2, "log_every": 1, "val": False}
    recipe = {
        "model": "rlfn_tiny_x2", "seed": 3, "device": "cpu",
        "data": {"train": [{"root": str(images), "layout": "folder"}], "val": {"sets": ["Set5"]}},
        "stages": [
            {"id": "train", "stage": "train", "iterations": 4, **common, "val": True},
            {"id": "warm", "stage": "warm_start", "iterations": 2, **common, "lr": 1e-12},
            {"id": "cl", "stage": "contrastive", "iterations": 2, **common},
            {"id": "ft", "stage": "finetune", "iterations": 2, **common},
            {"id": "eval", "stage": "evaluate"},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_artifact(path).model.state_dict()


def test_every_stage_runs_and_reruns(tmp_path: Path, capsys) -> None:
    recipe_path = tiny_recipe(tmp_path)
    run = tmp_path / "run"
    recipe = load_recipe(recipe_path)
    records = run_recipe(recipe, run_dir=run, progress=False)
    assert [r["id"] for r in records] == ["train", "warm", "cl", "ft", "eval"]

    # run folder: resolved recipe + hash, one folder per stage with its files
    assert (run / "recipe.yaml").read_text() == recipe.text
    assert (run / "recipe.sha256").read_text().strip() == recipe.sha256
    folders = ["00-train", "01-warm", "02-cl", "03-ft", "04-eval"]
    for name in folders:
        assert {"DONE", "metrics.json", "log.txt", "stage.json"} <= {p.name for p in (run / name).iterdir()}
    assert all((run / name / "tb").is_dir() for name in folders[:4])
    assert not (run / "04-eval" / "tb").exists()   # nothing logged: no empty event file
    for name in folders[:4]:
        assert (run / name / "artifact" / "artifact.json").is_file()
        assert (run / name / "checkpoints" / "last.pt").is_file()

    # lineage chains each artifact to its parent, with seed and recipe hash
    previous = None
    for name in folders[:4]:
        art = load_artifact(run / name / "artifact")
        lineage = art.lineage
        assert lineage["recipe_sha256"] == recipe.sha256 and lineage["seed"] == 3
        assert lineage["stage"] == name.split("-", 1)[1]
        if previous is not None:
            assert lineage["parent"] == str(previous.path) and lineage["parent_weights_sha256"] == previous.weights_sha256
        previous = art
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "00-train" / "tb"))
    events.Reload()
    assert {"loss/total", "lr", "val/psnr_y"} <= set(events.Tags()["scalars"])
    assert any(tag.startswith("sr/Set5/") for tag in events.Tags()["images"])
    train_metrics = json.loads((run / "00-train" / "metrics.json").read_text())
    assert train_metrics["iterations"] == 4 and "val_psnr_y" in train_metrics and train_metrics["start"] == "scratch"
    # train started from scratch (a seeded random init), warm_start from train's weights (lr ~ 0)
    train_w, warm_w = _weights(run / "00-train" / "artifact"), _weights(run / "01-warm" / "artifact")
    for key in train_w:
        assert torch.allclose(train_w[key], warm_w[key], atol=1e-8), key
    cl = load_artifact(run / "02-cl" / "artifact")
    assert cl.config["losses"][1] == {"type": "contrastive", "weight": 255.0}
    assert set(cl.metrics["loss_terms"]) == {"l1", "contrastive"}
    ft = load_artifact(run / "03-ft" / "artifact")
    assert ft.config["lr"] == 1e-5 and ft.config["losses"] == [{"type": "l2", "weight": 1.0}]
    # evaluate wrote its means into the finetuned artifact
    assert 5 < ft.metrics["Set5"]["psnr_y"] < 60
    assert json.loads((run / "04-eval" / "eval.json").read_text())
    out = capsys.readouterr().out
    assert "[5/5] eval (evaluate) done" in out and "Set5 PSNR-Y" in out

    # rerun: every stage is skipped
    records = run_recipe(load_recipe(recipe_path), run_dir=run, progress=False)
    assert all(r.get("skipped") for r in records)

    # a changed setting reruns that stage and every later one, nothing before it
    before = (run / "01-warm" / "DONE").read_text()
    changed = load_recipe(recipe_path, overrides=["stages.ft.iterations=3"])
    records = run_recipe(changed, run_dir=run, progress=False)
    assert [bool(r.get("skipped")) for r in records] == [True, True, True, False, False]
    assert (run / "01-warm" / "DONE").read_text() == before
    assert load_artifact(run / "03-ft" / "artifact").metrics["iterations"] == 3

    # --from reruns from that stage on
    records = run_recipe(changed, run_dir=run, from_id="ft", progress=False)
    assert [bool(r.get("skipped")) for r in records] == [True, True, True, False, False]
    assert load_artifact(run / "03-ft" / "artifact").metrics["resumed_from"] is None  # cleared, not resumed


def test_model_given_as_widths_and_failure_keeps_done_stages(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", n=2)
    recipe = {
        "model": {"trunk": 6, "mid": 6, "esa": 4, "blocks": 1}, "scale": 2, "device": "cpu",
        "data": {"train": [{"root": str(images), "layout": "folder"}]},
        "stages": [
            {"id": "a", "stage": "train", "iterations": 2, "batch_size": 2, "patch_size": 32, "val": False},
            {"id": "b", "stage": "warm_start", "iterations": 2, "batch_size": 2, "patch_size": 64, "val": False},
        ],
    }
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    from workbench.core.errors import WorkbenchError

    # stage b's 64-pixel patches do not fit the 48-pixel images: a clear error; stage a stays done
    with pytest.raises(WorkbenchError, match="smaller than the 64x64 training patch"):
        run_recipe(load_recipe(path), run_dir=run, progress=False)
    assert (run / "00-a" / "DONE").is_file() and not (run / "01-b" / "DONE").exists()
    art = load_artifact(run / "00-a" / "artifact")
    assert art.spec.trunk == 6 and art.spec.num_blocks == 1
    assert (run / "model-init" / "artifact.json").is_file()


def test_stages_removed_from_the_recipe_are_set_aside(tmp_path: Path) -> None:
    recipe_path = tiny_recipe(tmp_path)
    run = tmp_path / "run"
    run_recipe(load_recipe(recipe_path), run_dir=run, progress=False)
    data = yaml.safe_load(recipe_path.read_text())
    data["stages"] = [s for s in data["stages"] if s["id"] != "cl"]   # ft and eval move to 02, 03
    recipe_path.write_text(yaml.safe_dump(data, sort_keys=False))
    records = run_recipe(load_recipe(recipe_path), run_dir=run, progress=False)
    assert [r.get("skipped", False) for r in records] == [True, True, False, False]
    stage_folders = sorted(p.name for p in run.iterdir() if (p / "stage.json").is_file())
    assert stage_folders == ["00-train", "01-warm", "02-ft", "03-eval"]
    # nothing the earlier run produced is deleted: the old folders are kept under stale/
    assert sorted(p.name for p in (run / "stale").iterdir()) == ["02-cl", "03-ft", "04-eval"]
    assert (run / "stale" / "02-cl" / "artifact" / "artifact.json").is_file()
