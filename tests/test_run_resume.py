"""A run SIGKILLed mid-stage and then resumed ends with weights bitwise equal to an uninterrupted run
(CPU, same seed, one thread in both), and `workbench run` reports what it did."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from conftest import kill_when_file_appears, make_smooth_images
from workbench.models.artifacts import load_artifact
from workbench.recipes.engine import run_recipe
from workbench.recipes.loader import load_recipe
from workbench.train.loop import load_checkpoint

ITERATIONS = 160


def _images(folder: Path) -> Path:
    return make_smooth_images(folder, n=5, size=40, small=8, seed=1, prefix="im")


def _recipe(tmp_path: Path) -> Path:
    images = _images(tmp_path / "images")
    settings = {"batch_size": 2, "patch_size": 32, "checkpoint_every": 10, "log_every": 10, "val": False}
    recipe = {
        "model": {"trunk": 4, "mid": 4, "esa": 4, "blocks": 1}, "scale": 2, "seed": 11, "device": "cpu",
        "data": {"train": [{"root": str(images), "layout": "folder"}]},
        "stages": [
            {"id": "first", "stage": "train", "iterations": 6, **settings},
            {"id": "second", "stage": "contrastive", "iterations": ITERATIONS, "halve_every": 40,
             "losses": [{"type": "l1"}, {"type": "contrastive", "weight": 2.0, "channels": 4}], **settings},
        ],
    }
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_sigkill_mid_stage_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    recipe_path = _recipe(tmp_path)
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "run", str(recipe_path), "--run-dir", str(killed),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "01-second" / "checkpoints" / "last.pt"
    kill_when_file_appears(proc, ckpt)
    at_kill = load_checkpoint(ckpt)["iteration"]
    assert 0 < at_kill < ITERATIONS, at_kill
    assert (killed / "00-first" / "DONE").exists() and not (killed / "01-second" / "DONE").exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = run_recipe(load_recipe(recipe_path), run_dir=killed, progress=False)
        reference = run_recipe(load_recipe(recipe_path), run_dir=tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert resumed[0].get("skipped") and not resumed[1].get("skipped")
    assert resumed[1]["metrics"]["resumed_from"] >= at_kill
    assert reference[1]["metrics"]["resumed_from"] is None
    a = load_artifact(killed / "01-second" / "artifact").model.state_dict()
    b = load_artifact(tmp_path / "straight" / "01-second" / "artifact").model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the schedule went on too: lr halved every 40 of the 160 iterations
    assert resumed[1]["metrics"]["lr"] == reference[1]["metrics"]["lr"] == 5e-4 * 0.5 ** (ITERATIONS // 40)
