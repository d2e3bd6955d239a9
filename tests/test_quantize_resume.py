"""The QAT quantize stage SIGKILLed mid-stage and resumed ends bitwise equal to an uninterrupted
run: fine-tuned weights, every fake-quantizer's state (quant.pt) and the reported loss."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("torchao", reason="the quantize stage needs torchao (pip install workbench[int8])")

from conftest import kill_when_file_appears, make_smooth_images  # noqa: E402
from workbench.models.artifacts import load_artifact  # noqa: E402
from workbench.core.errors import WorkbenchError  # noqa: E402
from workbench.stages.quantize import QAT_CHECKPOINT_FILE  # noqa: E402
from workbench.recipes.engine import run_recipe  # noqa: E402
from workbench.recipes.loader import load_recipe  # noqa: E402

ITERATIONS = 40


def _recipe(tmp_path: Path, **stage) -> Path:
    images = make_smooth_images(tmp_path / "images", n=4, size=64, small=8, seed=1, prefix="im")
    recipe = {
        "model": {"trunk": 4, "mid": 4, "esa": 4, "blocks": 1}, "scale": 2, "seed": 5, "device": "cpu",
        "data": {"train": [{"root": str(images), "layout": "folder"}]},
        "stages": [{"id": "int8", "stage": "quantize", "method": "qat", "iterations": ITERATIONS,
                    "batch_size": 2, "patch_size": 48, "checkpoint_every": 3, "log_every": 10,
                    "freeze_observers": 0.5, "hr_weight": 0.5, "val": False, **stage}],
    }
    path = tmp_path / "qat.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _read(path: Path):
    return torch.load(path, weights_only=True)


def test_qat_sigkill_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "run", str(recipe), "--run-dir",
                             str(killed), "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckpt = killed / "00-int8" / "checkpoints" / QAT_CHECKPOINT_FILE
    kill_when_file_appears(proc, ckpt)
    at_kill = _read(ckpt)["iteration"]
    assert 0 < at_kill < ITERATIONS // 2, at_kill  # killed before the observers froze
    assert not (killed / "00-int8" / "DONE").exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = run_recipe(load_recipe(recipe), run_dir=killed, progress=False)
        straight = run_recipe(load_recipe(recipe), run_dir=tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert resumed[0]["metrics"]["resumed_from"] >= at_kill
    assert straight[0]["metrics"]["resumed_from"] is None
    assert resumed[0]["metrics"]["loss"] == straight[0]["metrics"]["loss"]
    a_dir, b_dir = killed / "00-int8" / "artifact", tmp_path / "straight" / "00-int8" / "artifact"
    a, b = load_artifact(a_dir).model.state_dict(), load_artifact(b_dir).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    qa, qb = _read(a_dir / "quant.pt")["state"], _read(b_dir / "quant.pt")["state"]
    assert qa.keys() == qb.keys() and len(qa) > 0
    assert all(torch.equal(qa[k], qb[k]) for k in qa)
    assert _read(ckpt)["iteration"] == ITERATIONS


def test_qat_checkpoint_from_other_settings_or_damaged_is_refused(tmp_path: Path) -> None:
    from workbench.stages.quantize import _load_qat_checkpoint

    recipe = _recipe(tmp_path, iterations=3, checkpoint_every=1)
    run = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir=run, progress=False)
    ckpt = run / "00-int8" / "checkpoints" / QAT_CHECKPOINT_FILE
    saved = _read(ckpt)
    assert saved["iteration"] == 3
    _load_qat_checkpoint(ckpt, seed=saved["seed"], fingerprint=saved["fingerprint"])
    other = {**saved["fingerprint"], "stage": {**saved["fingerprint"]["stage"], "lr": 1e-3}}
    with pytest.raises(WorkbenchError, match="other settings"):
        _load_qat_checkpoint(ckpt, seed=saved["seed"], fingerprint=other)
    with pytest.raises(WorkbenchError, match="other settings"):
        _load_qat_checkpoint(ckpt, seed=saved["seed"] + 1, fingerprint=saved["fingerprint"])
    # an unfinished stage whose checkpoint is damaged stops in one line
    (run / "00-int8" / "DONE").unlink()
    ckpt.write_bytes(b"garbage")
    with pytest.raises(WorkbenchError, match="cannot read the QAT checkpoint"):
        run_recipe(load_recipe(recipe), run_dir=run, progress=False)
