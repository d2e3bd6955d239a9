"""A recipe cannot choose where the workbench writes or deletes, cannot exhaust memory with YAML
aliases, two runs never share a run folder, and rerunning after an edit keeps the old artifacts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import make_smooth_images
from workbench.cli import main
from workbench.recipes.engine import run_recipe
from workbench.recipes.loader import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, **top) -> Path:
    recipe = {"model": "rlfn_tiny_x2", "device": "cpu",
              "stages": [{"id": "eval", "stage": "evaluate"}], **top}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- 1. the recipe's name never leaves the runs root ------------------------------------------

@pytest.mark.parametrize("name", ["ABSOLUTE", "../..", "..", "a/b", "runs/../../x", ".hidden", ""])
def test_unsafe_recipe_names_are_refused(tmp_path: Path, monkeypatch, capsys, name: str) -> None:
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "00-victim").mkdir()              # a NN-id folder without stage.json
    (tmp_path / "a" / "00-victim").mkdir()
    if name == "ABSOLUTE":
        name = str(target)
    path = _recipe(work, name=name)
    monkeypatch.chdir(work)
    before = _snapshot(tmp_path)
    assert main(["validate", str(path), "--skip-data-check"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "name:" in err, err
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "name:" in err, err
    assert _snapshot(tmp_path) == before          # nothing written, moved or deleted anywhere


def test_safe_name_runs_inside_the_runs_root(tmp_path: Path, monkeypatch) -> None:
    path = _recipe(tmp_path, name="my-run.v2")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--no-progress"]) == 0
    assert (tmp_path / "runs" / "my-run.v2" / "recipe.yaml").is_file()


def test_a_symlinked_run_folder_leaving_the_runs_root_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    path = _recipe(tmp_path, name="linked")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "linked").symlink_to(outside)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--no-progress"]) == 2
    assert "outside" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


def test_a_symlinked_stage_folder_is_not_followed(tmp_path: Path) -> None:
    path = _recipe(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside"
    (outside / "artifact").mkdir(parents=True)
    (run / "00-eval").symlink_to(outside)
    from workbench.core.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="outside the run folder"):
        run_recipe(load_recipe(path), run_dir=run, progress=False)
    assert (outside / "artifact").is_dir() and len(list(outside.iterdir())) == 1


# -- 2. YAML alias bombs ----------------------------------------------------------------------

def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["value", "top"])
def test_billion_laughs_is_refused_quickly(tmp_path: Path, capsys, where: str) -> None:
    bomb = _laughs()
    if where == "value":
        text = ("model: rlfn_tiny_x2\nstages:\n  - id: eval\n    stage: evaluate\n"
                "    extra:\n" + "".join(f"      {line}\n" for line in bomb.splitlines())
                + "    sets: *a8\n")
    else:
        text = bomb + "model: *a8\nstages: *a8\n"
    assert len(text) < 1500
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    assert main(["validate", str(path)]) == 2
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "alias" in err and len(err) < 400, err
    assert seconds < 5, seconds  # unbounded it took 99 s


def test_ordinary_aliases_still_work(tmp_path: Path) -> None:
    text = ("model: rlfn_tiny_x2\ndata: {train: [{layout: samples}]}\nstages:\n"
            "  - &a {id: a, stage: train, iterations: 2, batch_size: 2, patch_size: 32, val: false}\n"
            "  - {<<: *a, id: b, stage: finetune}\n")
    path = tmp_path / "alias.yaml"
    path.write_text(text)
    recipe = load_recipe(path)
    assert [s.config.patch_size for s in recipe.stages] == [32, 32]


def test_messages_bound_every_value(tmp_path: Path, capsys) -> None:
    long = "x" * 20_000
    path = _recipe(tmp_path, seed=long, device=[long] * 3)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err) < 1000, len(err)


# -- 3. one run per run folder ------------------------------------------------------------------

def _train_recipe(tmp_path: Path, iterations: int) -> Path:
    images = make_smooth_images(tmp_path / "images", n=2, size=40, small=8, seed=0)
    recipe = {"model": {"trunk": 4, "mid": 4, "esa": 4, "blocks": 1}, "scale": 2, "device": "cpu",
              "data": {"train": [{"root": str(images), "layout": "folder"}]},
              "stages": [{"id": "train", "stage": "train", "iterations": iterations, "batch_size": 1,
                          "patch_size": 32, "checkpoint_every": 5, "log_every": 5, "val": False}]}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    path = _train_recipe(tmp_path, iterations=100_000)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "workbench", "run", str(path), "--run-dir", str(run), "--no-progress"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (run / "00-train" / "checkpoints" / "last.pt").exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.time() < deadline, "the first run did not start training"
            time.sleep(0.05)
        assert f"pid {first.pid} " in (run / "run.lock").read_text()
        # the same folder, with changed settings (which would otherwise clear the stage in training)
        second = subprocess.run(cmd + ["--set", "stages.train.iterations=7"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "in use" in lines[0], second.stderr
        assert first.poll() is None and (run / "00-train" / "stage.json").is_file()
    finally:
        first.kill()
        first.wait(30)
    # the lock dies with its holder: the next run proceeds (and finishes with fewer iterations)
    run_recipe(load_recipe(path, overrides=["stages.train.iterations=7"]), run_dir=run, progress=False)
    assert json.loads((run / "00-train" / "metrics.json").read_text())["iterations"] == 7


def test_lock_names_its_holder(tmp_path: Path) -> None:
    from workbench.core.locks import LockedError, exclusive_lock

    with exclusive_lock(tmp_path / "x.lock", what="thing"):
        assert f"pid {os.getpid()} " in (tmp_path / "x.lock").read_text()
        with pytest.raises(LockedError, match=f"thing is in use by pid {os.getpid()} "):
            with exclusive_lock(tmp_path / "x.lock", what="thing"):
                pass
    with exclusive_lock(tmp_path / "x.lock"):
        pass


# -- 5. rerunning after an edit keeps the previous artifact ---------------------------------------

def test_changed_stage_goes_to_stale_with_its_artifact(tmp_path: Path) -> None:
    path = _train_recipe(tmp_path, iterations=2)
    run = tmp_path / "run"
    run_recipe(load_recipe(path), run_dir=run, progress=False)
    old_sha = json.loads((run / "00-train" / "artifact" / "artifact.json").read_text())["weights_sha256"]
    (run / "00-train" / "notes.txt").write_text("mine")
    run_recipe(load_recipe(path, overrides=["stages.train.iterations=3"]), run_dir=run, progress=False)
    kept = run / "stale" / "00-train"
    assert json.loads((kept / "artifact" / "artifact.json").read_text())["weights_sha256"] == old_sha
    assert (kept / "notes.txt").read_text() == "mine"
    assert json.loads((run / "00-train" / "metrics.json").read_text())["iterations"] == 3
    # a second edit keeps both earlier versions
    run_recipe(load_recipe(path, overrides=["stages.train.iterations=4"]), run_dir=run, progress=False)
    assert sorted(p.name for p in (run / "stale").iterdir()) == ["00-train", "00-train.2"]
