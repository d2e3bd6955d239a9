"""The width search for every family: group dimensions from the derived groups, blocks where the
family declares repeatable blocks, latency cached under the family and spec."""
from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import optuna
import pytest
import torch

from workbench.core.errors import WorkbenchError
from workbench.models import FAMILIES, PRESETS, build_model, group_widths, register_family
from workbench.models.generic import module_family
from workbench.search.latency import LatencySettings
from workbench.search.space import IntRange, SearchSpace, spec_key
from workbench.search.study import SearchJob, run_search

pytestmark = pytest.mark.usefixtures("one_thread")


def _span_tiny():
    return PRESETS["span_tiny"].spec(4)  # feature 8, three blocks of mid 6/6


def test_span_space_samples_groups_and_blocks_and_roundtrips():
    parent = _span_tiny()
    space = SearchSpace.from_strings(["block*.mid1=2:6:2", "group:feature=4:8:4", "blocks=2:3"])
    assert [p for p, _ in space.groups] == ["block*.mid1", "feature"]
    space.validate(parent)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        spec = space.sample(trial, parent)
        widths = group_widths(spec)
        assert spec.num_blocks in (2, 3) and widths["feature"] in (4, 8)
        mids = {widths[f"block{i}.mid1"] for i in range(1, spec.num_blocks + 1)}
        assert len(mids) == 1 and mids <= {2, 4, 6}
        assert all(widths[f"block{i}.mid2"] == 6 for i in range(1, spec.num_blocks + 1))
        assert space.params_for(spec, parent) == trial.params
        build_model(spec)(torch.rand(1, 3, 8, 8))  # every candidate builds and runs
        seen.add(spec_key(spec))
        study.tell(trial, 0.0)
    assert len(seen) > 3
    specs = space.all_specs(parent)
    assert space.size(parent) == len(specs) == 2 * 3 * 2 == len({spec_key(s) for s in specs})
    assert spec_key(parent).startswith("span:")
    per = SearchSpace.from_strings(["block*.mid1=2:6:2"], per_block=True)
    assert per.names(parent) == ["block1.mid1", "block2.mid1", "block3.mid1"]


def test_space_errors_name_the_families_groups():
    parent = _span_tiny()
    with pytest.raises(WorkbenchError, match="RLFN's shorthand.*feature, block1.mid1"):
        SearchSpace.from_strings(["trunk=4:8:4"]).validate(parent)
    with pytest.raises(WorkbenchError, match=r"no channel group matches 'block\*\.esa'"):
        SearchSpace.from_strings(["block*.esa=2:4:2"]).validate(parent)
    with pytest.raises(WorkbenchError, match="up to 12 exceeds the parent's width 8"):
        SearchSpace.from_strings(["group:feature=4:12:8"]).validate(parent)
    with pytest.raises(WorkbenchError, match="blocks up to 4 exceeds"):
        SearchSpace.from_strings(["blocks=2:4"]).validate(parent)
    with pytest.raises(WorkbenchError, match="unknown dimension 'width'"):  # plain names: RLFN's
        SearchSpace.from_strings(["width=8:16"])


def _edsr():
    from test_custom_family import TinyEDSR

    if "tiny_edsr" not in FAMILIES:
        register_family(module_family("tiny_edsr", build=lambda cfg: TinyEDSR(**cfg),
                                      presets={"tiny_edsr": {"channels": 8, "blocks": 2}},
                                      scales=(4,)))


def test_custom_family_has_no_blocks_dimension():
    _edsr()
    parent = PRESETS["tiny_edsr"].spec(4)
    with pytest.raises(WorkbenchError, match="declares no repeatable blocks"):
        SearchSpace.from_strings(["blocks=1:2", "body.*.conv1=4:8:4"]).validate(parent)
    space = SearchSpace.from_strings(["body.*.conv1=4:8:4", "group:head=6:8:2"])
    space.validate(parent)
    assert space.size(parent) == 4 and spec_key(parent).startswith("tiny_edsr:")


def _job(tmp_path: Path, parent: str, space: list[str], **kw) -> SearchJob:
    latency = LatencySettings(input_shape=(1, 3, 16, 16), repeats=2, warmup=1, threads=1,
                              cache_path=str(tmp_path / "latency.sqlite"),
                              isolate=kw.pop("isolate", True))
    return SearchJob(parent=parent, out_dir=str(tmp_path / "out"), n_trials=3,
                     space=SearchSpace.from_strings(space), latency=latency, train_threads=1,
                     criterion="l1", progress=False, **kw)


def _cached_specs(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "latency.sqlite") as db:
        return [r[0] for r in db.execute("SELECT spec FROM latency_v2")]


def test_search_on_tiny_span_with_blocks(tmp_path):
    from workbench.models.artifacts import load_artifact

    summary = run_search(_job(tmp_path, "span_tiny_x4", ["block*.mid1=2:6:4", "blocks=2:3"]),
                         compare_rounds=1)
    assert summary["trials"]["complete"] == 3
    import json

    best = load_artifact(summary["best"]["artifact"])  # reloads from itself alone
    meta = json.loads((Path(summary["best"]["artifact"]) / "artifact.json").read_text())
    assert meta["family"] == "span"
    assert best.spec.num_blocks in (2, 3)
    keys = _cached_specs(tmp_path)
    assert keys and all(k.startswith("span:") for k in keys)  # the family is in the cache key
    assert len(set(keys)) == len(keys)


def test_search_on_tiny_custom_edsr_in_process(tmp_path):
    from workbench.models.artifacts import load_artifact

    _edsr()
    # a family registered in this process only: the latency worker cannot import it, so time
    # in-process (isolate=False)
    job = _job(tmp_path, "tiny_edsr_x4", ["body.*.conv1=4:8:4", "group:head=6:8:2"],
               isolate=False, finetune=__import__("workbench.search.objective", fromlist=["x"])
               .FinetuneSettings(iterations=1, batch_size=2, patch_size=64))
    summary = run_search(job, compare_rounds=1)
    assert summary["trials"]["complete"] == 3
    art = load_artifact(summary["best"]["artifact"])
    widths = art.spec.group_widths()
    assert widths["head"] in (6, 8) and widths["body.0.conv1"] in (4, 8)
    x = torch.rand(1, 3, 8, 8) * 255
    with torch.no_grad():
        assert art.model.eval()(x).shape == (1, 3, 32, 32)
    assert all(k.startswith("tiny_edsr:") for k in _cached_specs(tmp_path))


def test_search_stage_on_span_in_a_recipe(tmp_path, monkeypatch):
    from workbench.models.artifacts import load_artifact
    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_LATENCY_CACHE", str(tmp_path / "lat.sqlite"))
    recipe = tmp_path / "span.yaml"
    recipe.write_text(textwrap.dedent("""
        model: span_tiny_x4
        seed: 0
        device: cpu
        data:
          train: [{layout: samples}]
          val: {sets: [Set5], root: null}
        stages:
          - id: search
            stage: search
            trials: 2
            space: {groups: {"block*.mid2": "2:6:4"}, blocks: "2:3"}
            criterion: l1
            finetune_iters: 1
            batch_size: 2
            patch_size: 64
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
    stage = next(p for p in run_dir.iterdir() if p.is_dir() and "search" in p.name)
    art = load_artifact(stage / "artifact")
    assert art.spec.num_blocks in (2, 3) and art.spec.blocks[0].mid2 in (2, 6)
