"""`torchrun --nproc_per_node 2 workbench run` on CPU (gloo): the same global batches split over two
processes give the weights a single process gets, and only rank 0 writes the run folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from workbench.models.artifacts import load_artifact
from workbench.recipes.engine import run_recipe
from workbench.recipes.loader import load_recipe


def _recipe(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((48, 48), Image.BICUBIC) \
            .save(images / f"im{i}.png")
    settings = {"batch_size": 4, "patch_size": 32, "checkpoint_every": 3, "log_every": 1, "val": False}
    recipe = {
        "model": "rlfn_tiny_x2", "seed": 5, "device": "cpu",
        "data": {"train": [{"root": str(images), "layout": "folder", "limit": 4}]},
        "stages": [
            {"id": "train", "stage": "train", "iterations": 6, "samples_per_epoch": 8, **settings},
            # distillation from the parent under DDP: every rank runs the teacher on its share
            {"id": "more", "stage": "warm_start", "iterations": 3, "lr": 1e-4, **settings,
             "losses": [{"type": "l1", "weight": 1.0}, {"type": "distill", "weight": 0.5}]},
            # soft filter pruning trains too: it must run on every process (it used to deadlock)
            {"id": "sfp", "stage": "sfp", "iterations": 4, "mask_every": 2, "criterion": "l1",
             "targets": {"trunk.2": 6}, **settings},
        ],
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    recipe_path = _recipe(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    ddp_dir = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "workbench", "run", str(recipe_path), "--run-dir", str(ddp_dir), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # rank 0 alone reports (one summary line per stage) and writes
    assert result.stdout.count("[1/3] train (train) done") == 1, result.stdout
    assert (ddp_dir / "02-sfp" / "DONE").is_file()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_recipe(load_recipe(recipe_path), run_dir=tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(threads)
    for stage in ("00-train", "01-more", "02-sfp"):
        a = load_artifact(ddp_dir / stage / "artifact").model.state_dict()
        b = load_artifact(tmp_path / "single" / stage / "artifact").model.state_dict()
        for key in a:
            # gradients averaged over two half batches equal the full-batch gradient up to rounding
            # (measured 1.5e-8; training on one half batch alone is 4e-3 away)
            assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), (stage, key, (a[key] - b[key]).abs().max())
    start = load_artifact(tmp_path / "single" / "00-train" / "artifact").model.state_dict()
    moved = load_artifact(ddp_dir / "01-more" / "artifact").model.state_dict()
    assert any(not torch.equal(start[k], moved[k]) for k in start)   # the DDP stage really trained
