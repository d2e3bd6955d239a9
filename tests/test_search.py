"""Latency-constrained search: space, constraints, latency cache, workers on one study, resume,
the CLI and the recipe stage -- all on tiny RLFNs (8 channels, 2 blocks, 16-32 px)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch

from workbench.core.errors import WorkbenchError
from workbench.models import RLFN, RLFNSpec
from workbench.search.latency import DeviceLock, LatencyMeasurer, LatencySettings
from workbench.search.objective import ObjectiveConfig, pareto_front
from workbench.search.space import IntRange, SearchSpace, spec_key, spec_summary
from workbench.search.study import SearchJob, open_study, run_worker

REPO = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- stand-ins: deterministic latency and PSNR, so constraint tests know the answer --------------

def fake_latency(spec: RLFNSpec) -> float:
    """Monotone in every width: 1 ms per 100 parameters (roughly what a CPU does)."""
    return sum(p.numel() for p in RLFN(spec).parameters()) / 100.0


def fake_psnr(spec: RLFNSpec) -> float:
    """Wider is better: 30 dB plus 0.05 dB per trunk channel and 0.02 per middle channel."""
    return 30.0 + 0.05 * spec.trunk + 0.02 * sum(b.mid1 for b in spec.blocks) / len(spec.blocks)


class StubMeasurer:
    """LatencyMeasurer's interface with a formula instead of a stopwatch."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock = DeviceLock(lock_dir / "device.lock")
        self.calls = 0

    def latency(self, spec: RLFNSpec) -> dict:
        self.calls += 1
        return {"median_ms": fake_latency(spec), "p90_ms": fake_latency(spec), "device": "stub",
                "cached": False}

    def compare(self, specs, *, rounds=5):
        return {n: {"median_ms": fake_latency(s)} for n, s in specs.items()}

    def close(self) -> None:
        pass


class StubEvaluator:
    """Builds a random model of the spec; PSNR from the formula; an optional delay per build."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.finetuned = 0

    def build(self, spec: RLFNSpec) -> RLFN:
        time.sleep(self.delay)
        return RLFN(spec)

    def finetune(self, model: RLFN, *, seed: int) -> dict:
        self.finetuned += 1
        return {"iterations": 1}

    def psnr(self, model: RLFN) -> float:
        return fake_psnr(model.spec)


def tiny_job(tmp_path: Path, **kw) -> SearchJob:
    base = dict(parent="rlfn_tiny_x2", out_dir=str(tmp_path / "out"), n_trials=6,
                space=SearchSpace(trunk=IntRange(4, 8, 2), mid=IntRange(4, 8, 2)),
                latency=LatencySettings(input_shape=(1, 3, 16, 16), repeats=2, warmup=1, threads=1,
                                        cache_path=str(tmp_path / "latency.sqlite")),
                train_threads=1, progress=False)
    base.update(kw)
    return SearchJob(**base)


# -- the space ----------------------------------------------------------------------------------

def test_int_range_parsing_and_errors():
    assert IntRange.parse("32:48:8").values() == [32, 40, 48]
    assert IntRange.parse("16:20").values() == [16, 17, 18, 19, 20]
    assert IntRange.parse("48").fixed and IntRange.parse(48).values() == [48]
    with pytest.raises(WorkbenchError, match="not a multiple of step 8"):
        IntRange.parse("32:46:8")
    with pytest.raises(WorkbenchError, match="low 48 is above high 32"):
        IntRange.parse("48:32")
    with pytest.raises(WorkbenchError, match="LOW:HIGH"):
        IntRange.parse("a:b")
    with pytest.raises(WorkbenchError, match="unknown dimension 'width'"):
        SearchSpace.from_strings(["width=8:16"])
    with pytest.raises(WorkbenchError, match="NAME=LOW:HIGH"):
        SearchSpace.from_strings(["trunk"])


def test_space_validation_against_parent(tiny_spec):
    parent = tiny_spec  # trunk 8, mid 8, esa 4, 2 blocks
    SearchSpace(trunk=IntRange(4, 8, 2), mid=IntRange(2, 8, 2), esa=IntRange(2, 4, 2),
                blocks=IntRange(1, 2)).validate(parent)
    with pytest.raises(WorkbenchError, match="trunk up to 10 exceeds the parent's trunk width 8"):
        SearchSpace(trunk=IntRange(4, 10, 2)).validate(parent)
    with pytest.raises(WorkbenchError, match="esa up to 8 exceeds the parent's ESA width 4"):
        SearchSpace(esa=IntRange(4, 8, 4)).validate(parent)
    with pytest.raises(WorkbenchError, match="blocks up to 3 exceeds the parent's 2 blocks"):
        SearchSpace(blocks=IntRange(1, 3)).validate(parent)
    uneven = parent.with_widths({"trunk.1": 6})  # block 1 outputs 6, block 2 outputs 8
    with pytest.raises(WorkbenchError, match="keeping 1 blocks needs block 1's output width"):
        SearchSpace(blocks=IntRange(1, 2)).validate(uneven)


@pytest.mark.parametrize("per_block", [False, True])
def test_sampling_respects_ranges_steps_and_builds(tiny_spec, per_block):
    space = SearchSpace(trunk=IntRange(4, 8, 2), mid=IntRange(2, 8, 3), esa=IntRange(2, 4, 2),
                        blocks=IntRange(1, 2), per_block=per_block)
    space.validate(tiny_spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_blocks, seen_mid = set(), set()
    for _ in range(40):
        trial = study.ask()
        spec = space.sample(trial, tiny_spec)
        assert spec.trunk in (4, 6, 8) and all(b.out == spec.trunk for b in spec.blocks)
        assert spec.num_blocks in (1, 2)
        for i, b in enumerate(spec.blocks, start=1):
            assert b.mid1 == b.mid2 and b.mid1 in (2, 5, 8)
            assert b.esa == b.esa_inner == b.esa_fuse and b.esa in (2, 4)
            if per_block:
                assert trial.params[f"mid.b{i}"] == b.mid1
        if not per_block:
            assert len({b.mid1 for b in spec.blocks}) == 1
        assert space.spec_for(trial.params, tiny_spec) == spec  # rebuilt from stored params
        seen_blocks.add(spec.num_blocks)
        seen_mid.update(b.mid1 for b in spec.blocks)
        study.tell(trial, 0.0)
    assert seen_blocks == {1, 2} and seen_mid == {2, 5, 8}
    out = RLFN(spec)(torch.rand(1, 3, 16, 16) * 255)
    assert out.shape == (1, 3, 32, 32)


def test_spec_key_is_canonical(tiny_spec):
    same = RLFNSpec.from_dict(tiny_spec.to_dict())
    assert spec_key(same) == spec_key(tiny_spec)
    keys = {spec_key(tiny_spec), spec_key(tiny_spec.with_widths({"block1.mid1": 6})),
            spec_key(tiny_spec.with_widths({"block2.esa.inner": 2})), spec_key(replace(tiny_spec, scale=4))}
    assert len(keys) == 4
    assert spec_summary(tiny_spec) == "t8 m8 e4 b2"


def test_pareto_front_keeps_only_non_dominated():
    pts = [("a", 30.0, 10.0), ("b", 31.0, 20.0), ("c", 29.0, 15.0), ("d", 31.5, 30.0), ("e", 30.5, 25.0)]
    assert pareto_front(pts) == ["a", "b", "d"]


# -- objectives and constraints -------------------------------------------------------------------

def test_objective_config_requires_its_constraint():
    with pytest.raises(WorkbenchError, match="--psnr-min DB or --psnr-drop DB"):
        ObjectiveConfig(objective="latency")
    with pytest.raises(WorkbenchError, match="--latency-budget MS"):
        ObjectiveConfig(objective="psnr")
    cfg = ObjectiveConfig(objective="latency", psnr_drop=0.1)
    assert cfg.psnr_floor(32.0) == pytest.approx(31.9)
    assert cfg.constraints(psnr=31.95, latency_ms=5, psnr_floor=31.9)["psnr_db"] < 0
    assert cfg.constraints(psnr=31.80, latency_ms=5, psnr_floor=31.9)["psnr_db"] > 0


def test_psnr_floor_marks_infeasible_and_best_is_feasible(tmp_path):
    """objective latency under a PSNR floor: infeasible trials carry a positive constraint, the
    selected configuration is the fastest feasible one, and optuna's best trial agrees."""
    from workbench.search.results import trial_rows, write_results

    parent = RLFNSpec.uniform(scale=2, feature=8, mid=8, esa=4, blocks=2)
    floor = fake_psnr(parent) - 0.15     # excludes trunk 4 and trunk 6 with mid < 8
    job = tiny_job(tmp_path, n_trials=9, sampler="random",   # the space's 9 configurations
                   objective=ObjectiveConfig(objective="latency", psnr_min=floor),
                   finetune=replace(tiny_job(tmp_path).finetune, iterations=1))
    evaluator, measurer = StubEvaluator(), StubMeasurer(tmp_path)
    run_worker(job, evaluator=evaluator, measurer=measurer)
    study = open_study(job)
    skipped = [t for t in study.get_trials() if t.user_attrs.get("skipped_duplicate")]
    assert all(t.state.name == "FAIL" for t in skipped)   # repeats proposed by the sampler
    trials = [t for t in study.get_trials() if t not in skipped]
    assert len(trials) == 9 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["spec_key"] for t in trials}) == 9   # every one a new configuration
    feasible = [t for t in trials if all(v <= 0 for v in t.constraints.values())]
    infeasible = [t for t in trials if t not in feasible]
    assert infeasible and feasible, "the floor should split the trials"
    for t in infeasible:
        assert t.constraints["psnr_db"] > 0 and t.user_attrs["feasible"] is False
        assert t.user_attrs["psnr_y"] < floor
    assert all(t.user_attrs["psnr_y"] >= floor for t in feasible)
    fastest = min(feasible, key=lambda t: t.values[0])
    assert study.best_trial.number in {t.number for t in feasible}
    assert study.best_trial.values[0] == fastest.values[0]
    summary = write_results(study, job, measurer=measurer)
    assert summary["best"]["latency_ms"] == fastest.values[0]
    assert summary["best"]["psnr_y"] >= floor
    assert all(r.feasible for r in trial_rows(study) if r.number in {f["trial"] for f in summary["front"]})
    for name in ("trials.csv", "pareto.csv", "pareto.md", "pareto.png", "summary.json"):
        assert (Path(job.out_dir) / name).stat().st_size > 0
    from workbench.models.artifacts import load_artifact

    best = load_artifact(Path(job.out_dir) / "best")
    assert spec_key(best.spec) == summary["best"]["spec_key"]
    assert best.lineage["trial"] == summary["best"]["trial"] and best.lineage["study"] == "search"
    assert best.lineage["parent"] == "rlfn_tiny_x2"


def test_latency_budget_skips_finetune_and_pareto_front_is_feasible(tmp_path):
    parent = RLFNSpec.uniform(scale=2, feature=8, mid=8, esa=4, blocks=2)
    budget = fake_latency(parent.with_widths({f"trunk.{i}": 6 for i in range(3)})) + 0.01
    job = tiny_job(tmp_path, n_trials=10, sampler="random",
                   objective=ObjectiveConfig(objective="pareto", latency_budget_ms=budget),
                   finetune=replace(tiny_job(tmp_path).finetune, iterations=1))
    evaluator = StubEvaluator()
    run_worker(job, evaluator=evaluator, measurer=StubMeasurer(tmp_path))
    study = open_study(job)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]   # not the skipped repeats
    over = [t for t in done if t.user_attrs["latency_ms"] > budget and "duplicate_of" not in t.user_attrs]
    assert over, "some candidates should exceed the budget"
    for t in over:
        assert t.constraints["latency_ms"] > 0 and t.user_attrs["finetuned"] is False
    assert study.best_trials and all(t.user_attrs["latency_ms"] <= budget for t in study.best_trials)
    fresh = [t for t in done if "duplicate_of" not in t.user_attrs]
    assert evaluator.finetuned == sum(t.user_attrs["latency_ms"] <= budget for t in fresh)


# -- latency: isolated, cached ------------------------------------------------------------------

def test_latency_cache_second_request_costs_nothing(tmp_path, tiny_spec):
    settings = LatencySettings(input_shape=(1, 3, 16, 16), repeats=2, warmup=1, threads=1,
                               cache_path=str(tmp_path / "lat.sqlite"))
    with LatencyMeasurer(settings) as m:
        first = m.latency(tiny_spec)
        again = m.latency(RLFNSpec.from_dict(tiny_spec.to_dict()))
        assert (m.measured, m.hits) == (1, 1)
        assert first["cached"] is False and again["cached"] is True
        assert again["median_ms"] == first["median_ms"] > 0
        assert first["pid"] != os.getpid(), "measured in the worker subprocess, not here"
    # another measurer (another study, another process) on the same file: still no measurement
    other = LatencyMeasurer(replace(settings, isolate=False))
    assert other.latency(tiny_spec)["cached"] is True and other.measured == 0
    # anything in the key changes -> measured again
    bigger = LatencyMeasurer(replace(settings, isolate=False, input_shape=(1, 3, 20, 20)))
    assert bigger.latency(tiny_spec)["cached"] is False and bigger.measured == 1
    rows = other.cache.rows()
    assert len(rows) == 2 and {r["input_shape"] for r in rows} == {"1x3x16x16", "1x3x20x20"}
    assert all(r["torch"] == torch.__version__ and r["threads"] == 1 for r in rows)


def test_trials_record_device_and_versions(tmp_path):
    job = tiny_job(tmp_path, n_trials=2, latency=replace(tiny_job(tmp_path).latency, isolate=False))
    run_worker(job, evaluator=StubEvaluator())
    t = open_study(job).trials[0]
    assert t.user_attrs["versions"]["torch"] == torch.__version__
    assert t.user_attrs["versions"]["optuna"] == optuna.__version__
    assert t.user_attrs["device"].startswith("cpu:")
    assert t.user_attrs["latency"]["input_shape"] == "1x3x16x16"


# -- workers and resume ---------------------------------------------------------------------------

WORKER_SCRIPT = textwrap.dedent("""
    import sys, pickle
    sys.path.insert(0, {tests!r})
    from test_search import StubEvaluator, StubMeasurer
    from pathlib import Path
    from workbench.search.study import run_worker
    job = pickle.loads(bytes.fromhex(sys.argv[1]))
    delay = float(sys.argv[2])
    run_worker(job, worker_index=int(sys.argv[3]), workers=2, evaluator=StubEvaluator(delay),
               measurer=StubMeasurer(Path(job.out_dir)))
""")


def _start_worker(tmp_path: Path, job: SearchJob, index: int, delay: float) -> subprocess.Popen:
    import pickle

    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), pickle.dumps(job).hex(), str(delay), str(index)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("storage", ["sqlite", pytest.param("journal", marks=pytest.mark.slow)])
def test_two_worker_processes_share_one_study_exactly(tmp_path, storage):
    url = None if storage == "sqlite" else f"journal:///{tmp_path / 'out' / 'study.log'}"
    job = tiny_job(tmp_path, n_trials=10, storage=url, keep_candidates=False,
                   space=SearchSpace(trunk=IntRange(2, 8, 1), mid=IntRange(4, 8, 1)))  # 35 configs
    procs = [_start_worker(tmp_path, job, i, delay=0.05) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-2000:]
    every = open_study(job).get_trials()
    trials = [t for t in every if not t.user_attrs.get("skipped_duplicate")]
    assert sorted(t.number for t in every) == list(range(len(every)))
    assert len(trials) == 10 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["spec_key"] for t in trials}) == 10   # no configuration twice
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 2, "both workers added trials"


def test_killed_worker_trial_is_abandoned_and_study_resumes(tmp_path):
    job = tiny_job(tmp_path, n_trials=5, keep_candidates=False)
    slow = _start_worker(tmp_path, job, 0, delay=60.0)   # claims trial 0 then sits in build()
    study = None
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(Exception):
            study = open_study(job)
            trials = study.get_trials()
            # wait until the worker has recorded itself and sampled: it then sits in build()
            if trials and trials[0].user_attrs.get("worker") and trials[0].params:
                break
        time.sleep(0.3)
    assert study is not None and study.get_trials()[0].state.name == "RUNNING"
    slow.kill()
    slow.wait()
    run_worker(job, evaluator=StubEvaluator(), measurer=StubMeasurer(tmp_path))
    trials = open_study(job).get_trials()
    assert trials[0].state.name == "FAIL" and trials[0].user_attrs["abandoned"] is True
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    counted = [t for t in trials if not t.user_attrs.get("skipped_duplicate")]
    assert len(complete) == 5 and len(counted) == 6
    retry = [t for t in complete if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params  # the abandoned config was retried
    # a rerun of a finished study adds nothing
    run_worker(job, evaluator=StubEvaluator(), measurer=StubMeasurer(tmp_path))
    assert len(open_study(job).get_trials()) == len(trials)


def test_resumed_study_refuses_other_settings(tmp_path):
    job = tiny_job(tmp_path, n_trials=2)
    run_worker(job, evaluator=StubEvaluator(), measurer=StubMeasurer(tmp_path))
    other = replace(job, n_trials=3, space=SearchSpace(trunk=IntRange(2, 8, 2)))
    with pytest.raises(WorkbenchError, match="was run with other settings"):
        run_worker(other, evaluator=StubEvaluator(), measurer=StubMeasurer(tmp_path))
    more = replace(job, n_trials=4)  # same settings, more trials: continues
    run_worker(more, evaluator=StubEvaluator(), measurer=StubMeasurer(tmp_path))
    assert len(open_study(job).get_trials()) == 4


# -- the real pipeline: CLI and recipe stage --------------------------------------------------

@pytest.mark.slow
def test_cli_search_on_tiny_model(tmp_path, monkeypatch):
    """Real pruning, a 1-iteration fine-tune, Set5 PSNR and isolated latency, from the CLI, with
    two worker processes (spawned) on one study."""
    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_LATENCY_CACHE", str(tmp_path / "lat.sqlite"))
    out = tmp_path / "run"
    rc = main(["search", "--model", "rlfn_tiny_x2", "--trials", "4", "--workers", "2",
               "--space", "trunk=4:8:4", "mid=4:8:4",
               "--finetune-iters", "1", "--batch-size", "2", "--patch-size", "32",
               "--input-shape", "1,3,16,16", "--repeats", "2", "--warmup", "1", "--compare-rounds", "1",
               "--threads", "1", "--train-threads", "1",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["complete"] == 4
    assert summary["best"] and (out / "best" / "artifact.json").is_file()
    assert summary["side_by_side"]["ratio"] > 0
    rows = (out / "trials.csv").read_text().splitlines()[1:]
    # the space holds exactly 4 configurations: each is trained once; a repeat draw is skipped
    assert sum(",COMPLETE," in r for r in rows) == 4
    assert all(",COMPLETE," in r or "skipped duplicate" in r for r in rows)


def test_cli_rejects_bad_space(tmp_path, capsys):
    from workbench.cli import main

    rc = main(["search", "--model", "rlfn_tiny_x2", "--space", "trunk=4:16:4", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 2
    assert "exceeds the parent's trunk width 8" in capsys.readouterr().err


def test_search_stage_in_a_tiny_recipe(tmp_path, monkeypatch):
    from workbench.models.artifacts import load_artifact
    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_LATENCY_CACHE", str(tmp_path / "lat.sqlite"))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent("""
        model: rlfn_tiny_x2
        seed: 0
        device: cpu
        data:
          train: [{layout: samples}]
          val: {sets: [Set5], root: null}
        stages:
          - id: search
            stage: search
            trials: 3
            objective: pareto
            space: {trunk: "4:8:4", mid: "4:8:4"}
            finetune_iters: 1
            batch_size: 2
            patch_size: 32
            input_shape: [1, 3, 16, 16]
            repeats: 2
            warmup: 1
            threads: 1
            train_threads: 1
            compare_rounds: 1
    """))
    run_dir = tmp_path / "run"
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 0
    stage_dirs = [p for p in run_dir.iterdir() if p.is_dir() and "search" in p.name]
    assert len(stage_dirs) == 1
    art = load_artifact(stage_dirs[0] / "artifact")
    assert art.spec.trunk in (4, 8) and art.lineage["study"] == "search"
    assert (stage_dirs[0] / "pareto.png").is_file()


def test_first_trial_is_the_parent_baseline_and_params_roundtrip(tmp_path, tiny_spec):
    space = SearchSpace(trunk=IntRange(4, 8, 2), mid=IntRange(4, 8, 4), esa=IntRange(2, 4, 2))
    assert space.spec_for(space.params_for(tiny_spec, tiny_spec), tiny_spec) == tiny_spec
    assert space.params_for(tiny_spec.with_widths({"block1.mid1": 6}), tiny_spec) is None  # not expressible
    job = tiny_job(tmp_path, n_trials=3, space=space)
    run_worker(job, evaluator=StubEvaluator(), measurer=StubMeasurer(tmp_path))
    first = open_study(job).trials[0]
    assert first.user_attrs["baseline"] == "parent widths"
    assert first.user_attrs["spec_key"] == spec_key(tiny_spec)


def test_premeasure_times_the_whole_space_once_then_trials_hit_the_cache(tmp_path, tiny_spec):
    space = SearchSpace(trunk=IntRange(4, 8, 4), mid=IntRange(4, 8, 4))
    assert space.size(tiny_spec) == len(space.all_specs(tiny_spec)) == 4
    job = tiny_job(tmp_path, n_trials=3, space=space, premeasure=10,
                   latency=replace(tiny_job(tmp_path).latency, isolate=False, statistic="min"))
    measurer = LatencyMeasurer(job.latency)
    run_worker(job, evaluator=StubEvaluator(), measurer=measurer)
    assert measurer.measured == 4                      # every configuration, parent included, once
    rows = measurer.cache.rows()
    assert len(rows) == 4
    record = measurer.latency(tiny_spec)
    assert record["interleaved_with"] == 4 and record["repeats"] == job.latency.repeats
    study = open_study(job)
    assert study.user_attrs["premeasured"] == 4
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert t.user_attrs["latency"]["cached"] is True
        assert t.user_attrs["latency_ms"] == t.user_attrs["latency"]["min_ms"]  # statistic: min


def test_ntire_protocol_latency_is_cached_under_its_own_key(tmp_path, tiny_spec):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "lr"
    folder.mkdir()
    for i, size in enumerate([(20, 16), (24, 18)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    base = LatencySettings(input_shape=(1, 3, 16, 16), repeats=2, warmup=1, threads=1, isolate=False,
                           cache_path=str(tmp_path / "lat.sqlite"))
    ntire = LatencyMeasurer(replace(base, ntire_folder=str(folder)))
    record = ntire.latency(tiny_spec)
    assert record["images"] == 2 and record["protocol"].startswith("ntire:")
    assert ntire.value(record) == record["mean_ms"]
    plain = LatencyMeasurer(base)
    assert plain.latency(tiny_spec)["cached"] is False  # another protocol, another cache entry
    assert ntire.latency(tiny_spec)["cached"] is True


def test_trial_orphaned_between_ask_and_claim_is_recovered(tmp_path):
    """A worker killed after study.ask() but before recording itself leaves a RUNNING trial with
    no owner; the next claim (under the same lock) marks it abandoned instead of leaving it."""
    from workbench.search.study import recover_stale_trials

    job = tiny_job(tmp_path, n_trials=2, keep_candidates=False)
    study = open_study(job)
    orphan = study.ask()
    assert recover_stale_trials(study) == [orphan.number]
    trial = open_study(job).get_trials()[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["abandoned"] is True


# -- a new user's findings: no repeated configurations, named objectives, a readable plot ----------

def test_small_space_gets_distinct_configurations_and_named_objectives(tmp_path):
    """TPE repeats itself in small discrete spaces (4 trials once ran the parent 3 times): every
    counted trial must be a new configuration when the space has enough of them."""
    job = tiny_job(tmp_path, n_trials=4, space=SearchSpace(trunk=IntRange(4, 8, 4), mid=IntRange(4, 8, 4)),
                   objective=ObjectiveConfig(objective="pareto", psnr_drop=0.1))
    evaluator = StubEvaluator()
    run_worker(job, evaluator=evaluator, measurer=StubMeasurer(tmp_path))
    study = open_study(job)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 4 and len({t.user_attrs["spec_key"] for t in done}) == 4
    assert not any("duplicate_of" in t.user_attrs for t in done)
    assert study.metric_names == ["psnr_y", "latency_ms"]
    assert all(isinstance(t.user_attrs["feasible"], bool) for t in done)
    # a fifth trial has no new configuration left: the study stops instead of repeating one
    more = replace(job, n_trials=5)
    run_worker(more, evaluator=evaluator, measurer=StubMeasurer(tmp_path))
    assert len(open_study(more).get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 4


def test_pareto_plot_focuses_on_what_matters_and_side_by_side_is_explained(tmp_path):
    from workbench.search.results import TrialRow, _focus_range, format_summary, write_results

    def row(n, psnr, feasible):
        return TrialRow(number=n, state="COMPLETE", summary="", params=1, latency_ms=10.0 + n,
                        psnr_y=psnr, psnr_pruned=psnr, feasible=feasible, duplicate_of=None,
                        candidate=None, spec_key=str(n), seconds=1.0, worker="", error="")

    rows = [row(0, 32.1, True), row(1, 32.0, True), row(2, 8.0, False)]
    lo, hi = _focus_range(rows, {"parent_psnr_y": 32.15, "psnr_floor": 32.05})
    assert 31.0 < lo < 32.0 and 32.15 < hi < 32.5    # the 8 dB point does not flatten the range

    class DriftingMeasurer(StubMeasurer):             # the machine got 10x busier meanwhile
        def compare(self, specs, *, rounds=5):
            return {n: {"median_ms": 10 * fake_latency(s), "min_ms": 10 * fake_latency(s)}
                    for n, s in specs.items()}

    job = tiny_job(tmp_path, n_trials=2, objective=ObjectiveConfig(objective="pareto"))
    run_worker(job, evaluator=StubEvaluator(), measurer=StubMeasurer(tmp_path))
    summary = write_results(open_study(job), job, measurer=DriftingMeasurer(tmp_path))
    side = summary["side_by_side"]
    assert abs(side["drift"] - 10) < 1e-6 and "another load" in side["explanation"]
    assert "note:" in format_summary(summary)


def test_dashboard_is_an_optional_extra(repo_dir):
    import tomllib

    extras = tomllib.loads((repo_dir / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("optuna-dashboard") for dep in extras["dashboard"])


# -- equal-cost configurations ------------------------------------------------------------------

def test_cost_key_is_equal_for_configurations_that_run_the_same_convolutions():
    from workbench.search.latency import cost_key

    def spec(*mids):
        s = RLFNSpec.uniform(scale=2, feature=8, mid=8, esa=4, blocks=len(mids))
        return s.with_widths({f"block{i}.mid{j}": m for i, m in enumerate(mids, 1) for j in (1, 2)})

    shape = (1, 3, 16, 16)
    early, late = cost_key(spec(4, 8, 8), shape), cost_key(spec(8, 8, 4), shape)
    assert early == cost_key(spec(8, 4, 8), shape) == late        # the narrow block moved: same work
    assert early != cost_key(spec(4, 4, 8), shape)                # a second narrow block: less
    assert early != cost_key(spec(4, 8, 8), (1, 3, 16, 24))      # another input: other tensors
    assert early != cost_key(spec(4, 8), shape)                   # one block fewer


def test_equal_cost_configurations_share_a_latency_and_psnr_decides(tmp_path, tiny_spec):
    """The noisier timing of two equal-cost configurations must not pick the worse one."""
    from workbench.search.results import trial_rows, write_results

    noisy = {(4, 8): 10.0, (8, 4): 11.0, (8, 8): 20.0, (4, 4): 5.0}   # (4, 8) reads faster by noise

    def mids(spec):
        return tuple(b.mid1 for b in spec.blocks)

    class NoisyMeasurer(StubMeasurer):
        def latency(self, spec):
            self.calls += 1
            value = noisy[mids(spec)]
            return {"median_ms": value, "p90_ms": value, "device": "stub", "cached": False}

        def compare(self, specs, *, rounds=5):
            return {n: {"median_ms": noisy[mids(s)]} for n, s in specs.items()}

    class Evaluator(StubEvaluator):   # a wide first block matters more than a wide second one
        def psnr(self, model):
            m = mids(model.spec)
            return 30.0 + 0.1 * m[0] + 0.05 * m[1]

    space = SearchSpace(mid=IntRange(4, 8, 4), per_block=True)
    for premeasure in (0, 8):
        job = tiny_job(tmp_path / f"p{premeasure}", n_trials=4, space=space, premeasure=premeasure,
                       objective=ObjectiveConfig(objective="latency", psnr_min=30.7))
        run_worker(job, evaluator=Evaluator(), measurer=NoisyMeasurer(tmp_path))
        study = open_study(job)
        rows = {tuple(b["mid1"] for b in study.trials[r.number].user_attrs["spec"]["blocks"]): r
                for r in trial_rows(study) if r.state == "COMPLETE"}
        assert set(rows) == set(noisy)
        assert rows[(4, 8)].cost_key == rows[(8, 4)].cost_key != rows[(4, 4)].cost_key
        assert rows[(4, 8)].latency_ms == rows[(8, 4)].latency_ms == 10.5     # the class median
        assert rows[(4, 8)].measured_latency_ms == 10.0 and rows[(4, 8)].cost_class_size == 2
        assert rows[(4, 4)].latency_ms == 5.0 and rows[(4, 4)].cost_class_size == 1
        summary = write_results(study, job, measurer=NoisyMeasurer(tmp_path))
        assert summary["best"]["config"] == rows[(8, 4)].summary            # 31.0 dB, not 30.8
        assert (study.user_attrs["cost_classes"] != {}) == bool(premeasure)
        text = (Path(job.out_dir) / "pareto.md").read_text()
        assert "| 10.5 |" in text and "same cost" in text
    # a latency budget is judged on the class latency: (4, 8) reads 10.0 ms alone, but its class
    # costs 10.5, over a 10.2 ms budget, so the feasible best is (4, 4), not (4, 8)
    job = tiny_job(tmp_path / "budget", n_trials=4, space=space, premeasure=8,
                   objective=ObjectiveConfig(objective="psnr", latency_budget_ms=10.2))
    run_worker(job, evaluator=Evaluator(), measurer=NoisyMeasurer(tmp_path))
    study = open_study(job)
    feasible = {tuple(b["mid1"] for b in study.trials[r.number].user_attrs["spec"]["blocks"])
                for r in trial_rows(study) if r.feasible}
    assert feasible == {(4, 4)}
    assert write_results(study, job)["best"]["latency_ms"] == 5.0
    # the sampler is told the class latency too: optuna's value of (4, 8) is 10.5, not its 10.0
    by_mids = {tuple(b["mid1"] for b in t.user_attrs["spec"]["blocks"]): t for t in study.trials
               if t.state.name == "COMPLETE"}
    assert by_mids[(4, 8)].user_attrs["latency_ms"] == 10.0
    assert by_mids[(4, 8)].user_attrs["class_latency_ms"] == 10.5
    assert by_mids[(4, 8)].constraints["latency_ms"] == pytest.approx(10.5 - 10.2)
    # a relative budget: 0.51 x the parent's (8, 8) = 10.2 ms, the same decision on any machine
    for premeasure in (0, 8):
        job = tiny_job(tmp_path / f"ratio{premeasure}", n_trials=4, space=space, premeasure=premeasure,
                       objective=ObjectiveConfig(objective="psnr", latency_ratio=0.51))
        run_worker(job, evaluator=Evaluator(), measurer=NoisyMeasurer(tmp_path))
        study = open_study(job)
        assert study.user_attrs["latency_budget_ms"] == pytest.approx(0.51 * 20.0)
        feasible = {tuple(b["mid1"] for b in study.trials[r.number].user_attrs["spec"]["blocks"])
                    for r in trial_rows(study) if r.feasible}
        assert feasible == {(4, 4)}
        summary = write_results(study, job)
        assert summary["latency_ratio"] == 0.51 and summary["best"]["latency_ms"] == 5.0


def test_latency_ratio_is_a_fraction_of_the_parent_and_excludes_a_budget_in_ms(tmp_path, capsys):
    cfg = ObjectiveConfig(objective="psnr", latency_ratio=0.8)
    assert cfg.has_budget and cfg.budget_ms(50.0) == pytest.approx(40.0)
    assert ObjectiveConfig(objective="psnr", latency_budget_ms=7.0).budget_ms(50.0) == 7.0
    assert ObjectiveConfig().budget_ms(50.0) is None and not ObjectiveConfig().has_budget
    with pytest.raises(WorkbenchError, match="not both"):
        ObjectiveConfig(latency_budget_ms=5.0, latency_ratio=0.8)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(WorkbenchError, match=r"in \(0, 1\]"):
            ObjectiveConfig(latency_ratio=bad)
    with pytest.raises(WorkbenchError, match="parent's latency"):
        cfg.budget_ms(None)
    # a study made before the ratio existed still resumes: the unset field is not fingerprinted
    assert "latency_ratio" not in tiny_job(tmp_path).fingerprint()["objective"]
    assert tiny_job(tmp_path, objective=cfg).fingerprint()["objective"]["latency_ratio"] == 0.8
    from workbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["search", "--model", "rlfn_s_x4", "--latency-budget", "5", "--latency-ratio", "0.8"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    from workbench.stages.search import SearchStageConfig

    assert SearchStageConfig(objective="psnr", latency_ratio=0.8).validate() == []
    assert any("not both" in p for p in SearchStageConfig(latency_ratio=0.8,
                                                          latency_budget_ms=3.0).validate())
