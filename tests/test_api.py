"""The public API (workbench.__init__ and workbench/api.py): every name resolves, each call gives
what its command gives, with the command's defaults, and the README's custom-model example runs."""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import workbench
from workbench.core.errors import WorkbenchError
from workbench.models import FAMILIES, RLFN, RLFNSpec, create_model

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def _rlfn(feature: int = 8, seed: int = 0) -> RLFN:
    torch.manual_seed(seed)
    return RLFN(RLFNSpec.uniform(scale=2, feature=feature, mid=8, esa=4, blocks=2)).eval()


def _tiny_edsr():
    from test_custom_family import _family

    _family()  # registers tiny_edsr (TinyEDSR: 8 channels, 2 residual blocks, x4)
    torch.manual_seed(0)
    return create_model("tiny_edsr_x4").eval()


# -- the names ------------------------------------------------------------------------------------

def test_every_public_name_resolves_and_says_how_to_call_it():
    assert {"evaluate", "profile", "sensitivity", "search_widths", "load_model", "channel_groups",
            "prune_to_widths"} <= set(workbench.__all__)
    for name in workbench.__all__:
        obj = getattr(workbench, name)
        assert obj is not None, name
        if name != "__version__":
            assert callable(obj) and (obj.__doc__ or "").strip(), name
    import workbench.api as api

    for name in api.__all__:  # the new calls: each docstring carries an example
        assert getattr(workbench, name) is getattr(api, name)
        assert "Example::" in getattr(api, name).__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        workbench.nonesuch  # noqa: B018


def test_import_workbench_stays_light_and_the_api_loads_on_first_use():
    code = ("import sys, workbench; light = ('torch' in sys.modules, 'workbench.api' in sys.modules); "
            "workbench.evaluate; print(light, 'workbench.api' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(False,", "False)", "True"]


def test_the_api_defaults_are_the_commands():
    from workbench.api import evaluate, profile, search_widths, sensitivity
    from workbench.cli import build_parser
    from workbench.measure.profiling import parse_shape
    from workbench.prune.importance import DEFAULT_CRITERION
    from workbench.stages.prune import SensitivityConfig
    from workbench.stages.search import SearchStageConfig

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert list(defaults(evaluate)["sets"]) == ["Set5"]  # the command's (test_evaluate_gives_...)
    pr = sub["profile"].parse_args(["--model", "m"])
    d = defaults(profile)
    assert (d["repeats"], d["warmup"], d["clock"]) == (pr.repeats, pr.warmup, pr.clock)
    assert tuple(d["input_shape"]) == parse_shape(pr.input)
    se, cfg = sub["sensitivity"].parse_args(["--model", "m"]), SensitivityConfig()
    d = defaults(sensitivity)
    assert (list(d["ratios"]), d["criterion"], d["latency_repeats"], d["set"], d["device"]) == \
        (se.ratios, se.criterion, se.latency_repeats, se.set, se.device)
    assert list(d["latency_shape"]) == cfg.latency_shape and d["criterion"] == DEFAULT_CRITERION
    sr, stage = sub["search"].parse_args(["--model", "m"]), SearchStageConfig()
    d = defaults(search_widths)
    assert (d["trials"], d["objective"], d["workers"], d["compare_rounds"], d["device"]) == \
        (sr.trials, sr.objective, sr.workers, sr.compare_rounds, sr.device)
    assert (stage.trials, stage.objective, stage.workers, stage.compare_rounds) == \
        (sr.trials, sr.objective, sr.workers, sr.compare_rounds)


# -- evaluate -------------------------------------------------------------------------------------

def test_evaluate_gives_the_eval_commands_scores(tmp_path):
    from workbench.cli import main

    model = _rlfn()
    path = workbench.save_artifact(tmp_path / "tiny", model)
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(path), "--device", "cpu", "--no-progress", "--summary",
                 "--out", str(out)]) == 0
    cli = json.loads(out.read_text())["models"]["tiny"]["sets"]["Set5"]
    for ref in (model, str(path), workbench.load_model(path)):  # module, REF, artifact
        got = workbench.evaluate(ref, device="cpu", progress=False)
        assert list(got) == ["Set5"] and got["Set5"].scale == 2
        assert got["Set5"].mean == cli["mean"]
        assert [im["psnr_y"] for im in got["Set5"].images] == [im["psnr_y"] for im in cli["images"]]
    assert main(["eval", "--model", str(path), "--device", "cpu", "--no-progress", "--summary",
                 "--deploy", "fused", "--out", str(out)]) == 0
    fused = json.loads(out.read_text())["models"]["tiny"]["sets"]["Set5"]["mean"]
    got = workbench.evaluate(model, deploy="fused", device="cpu", progress=False)["Set5"].mean
    assert got == fused and abs(got["psnr_y"] - cli["mean"]["psnr_y"]) < 0.05  # one gray level at most
    with pytest.raises(WorkbenchError, match="set is x4 but the model upscales x2"):
        workbench.evaluate(model, scale=4, progress=False)


# -- profile --------------------------------------------------------------------------------------

def test_profile_times_models_side_by_side_with_ratios_to_the_first():
    from workbench.measure.deploy import default_mode
    from workbench.measure.profiling import ntire_counts

    small, wide = _rlfn(8), _rlfn(32)
    shape = (1, 3, 48, 48)
    rows = workbench.profile([small, wide], input_shape=shape, device="cpu", repeats=3, warmup=1)
    assert [r["name"] for r in rows] == [f"model1 [{default_mode('cpu', small)}]",
                                         f"model2 [{default_mode('cpu', small)}]"]
    assert rows[0]["ratio"] == rows[0]["ratio_p10"] == rows[0]["ratio_p90"] == 1.0
    assert all(r["reference"] == rows[0]["name"] and r["input_shape"] == list(shape) for r in rows)
    assert rows[1]["ratio"] > 1.0  # 16x the multiply-accumulates of the first
    assert rows[1]["counts"] == ntire_counts(wide, input_shape=shape)
    rows = workbench.profile({"a": small, "b": wide}, ["eager", "fused"], input_shape=shape,
                             device="cpu", repeats=2, warmup=1)
    assert [(r["name"], r["model"], r["deploy_mode"]) for r in rows] == [
        ("a [eager]", "a", "eager"), ("a [fused]", "a", "fused"),
        ("b [eager]", "b", "eager"), ("b [fused]", "b", "fused")]
    assert rows[0]["ratio"] == 1.0 and all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows)
    with pytest.raises(WorkbenchError, match="needs a CUDA GPU"):
        workbench.profile(small, ["cuda_graph"], device="cpu")


# -- sensitivity ----------------------------------------------------------------------------------

def test_sensitivity_scores_every_group_as_the_command_does(tmp_path):
    from workbench.cli import main
    from workbench.prune.sensitivity import channels_to_remove

    model = _rlfn()
    path = workbench.save_artifact(tmp_path / "tiny", model)
    res = workbench.sensitivity(model, ratios=[0.5], out_dir=tmp_path / "api", plots=False,
                                progress=False)
    groups = workbench.channel_groups(model)
    assert [r["group"] for r in res.rows] == list(groups)  # one row per group at the one ratio
    assert sorted(r["group"] for r in res.ranking) == sorted(groups)
    for row in res.rows:
        assert row["removed"] == channels_to_remove(row["width"], 0.5) and row["params_saved"] > 0
    assert res.criterion == "output" and res.set_name == "Set5"
    baseline = workbench.evaluate(model, progress=False)["Set5"].mean["psnr_y"]
    assert res.baseline["psnr_y"] == pytest.approx(baseline, abs=1e-9)
    assert (tmp_path / "api" / "results.json").is_file() and (tmp_path / "api" / "sensitivity.csv").is_file()
    assert main(["sensitivity", "--model", str(path), "--ratios", "0.5", "--no-plots", "--no-progress",
                 "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert [(r["group"], r["psnr_drop"]) for r in cli["rows"]] == \
        [(r["group"], r["psnr_drop"]) for r in res.rows]


# -- search ---------------------------------------------------------------------------------------

def _latency(tmp_path: Path) -> dict:
    # a family registered in this process only: time in it (the latency worker cannot import it)
    return {"isolate": False, "input_shape": (1, 3, 16, 16), "repeats": 2, "warmup": 1,
            "threads": 1, "cache_path": str(tmp_path / "latency.sqlite")}


def test_search_runs_trials_on_a_custom_model_and_returns_the_selected_configuration(tmp_path):
    from workbench.models.artifacts import load_artifact, state_digest

    model = _tiny_edsr()
    out = tmp_path / "search"
    kw = dict(trials=2, out_dir=out, latency=_latency(tmp_path), train_threads=1,
              compare_rounds=1, progress=False)
    summary = workbench.search_widths(model, {"group:head": "6:8:2"}, **kw)
    assert summary["trials"]["complete"] == 2
    best = summary["best"]
    assert best["config"] and math.isfinite(best["psnr_y"]) and best["latency_ms"] > 0
    art = load_artifact(best["artifact"])
    assert art.spec.group_widths()["head"] in (6, 8)
    assert re.match(r"w[68],", best["config"])
    parents = list(out.glob("parent-*"))  # the module, saved for the trials to load
    assert len(parents) == 1 and state_digest(load_artifact(parents[0]).model) == state_digest(model)
    again = workbench.search_widths(model, {"group:head": "6:8:2"}, **kw)  # the same study, resumed
    assert again["trials"]["counted"] == 2 and again["best"]["trial"] == best["trial"]


def test_search_refuses_fine_tune_images_that_copy_the_validation_set(tmp_path):
    from workbench.data.benchmark import EMBEDDED_ROOT

    train = tmp_path / "train"
    train.mkdir()
    shutil.copy(EMBEDDED_ROOT / "Set5" / "HR" / "baby.png", train / "mine.png")
    with pytest.raises(WorkbenchError, match="leakage: training image"):
        workbench.search_widths(_tiny_edsr(), {"group:head": "6:8:2"}, trials=1, out_dir=tmp_path / "s",
                         finetune={"iterations": 1, "patch_size": 64, "batch_size": 2},
                         train_data=str(train), latency=_latency(tmp_path), progress=False)
    assert not (tmp_path / "s" / "study.db").exists()  # refused before the study started


# -- the README -----------------------------------------------------------------------------------

def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Model families and your own network", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def my_models(monkeypatch, tmp_path):
    """The README's ``my_models.MyEDSR`` is the tests' TinyEDSR; its outputs go to tmp_path."""
    from test_custom_family import TinyEDSR

    module = types.ModuleType("my_models")
    module.MyEDSR = TinyEDSR
    monkeypatch.setitem(sys.modules, "my_models", module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_LATENCY_CACHE", str(tmp_path / "latency.sqlite"))
    # the search trains with cores / workers threads by default: slow on a shared 2-core machine
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    yield tmp_path
    FAMILIES.pop("my_edsr", None)


def test_the_readme_custom_model_example_runs(my_models, capsys):
    code = _readme_snippet()
    for call in ("evaluate(", "profile(", "sensitivity(", "prune_to_widths(", "search_widths("):
        assert f"workbench.{call}" in code, call
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102
    groups = list(workbench.channel_groups(ns["art"].model))
    assert groups == ["head", "body.0.conv1", "body.1.conv1"]
    assert ns["scores"]["Set5"].mean["psnr_y"] > 0
    assert [r["name"] for r in ns["rows"]] == ["full [eager]", "full [fused]", "pruned [eager]",
                                               "pruned [fused]"]
    assert ns["rows"][0]["ratio"] == 1.0
    assert sorted(r["group"] for r in ns["sens"].ranking) == sorted(groups)
    assert {r["ratio"] for r in ns["sens"].rows} == {0.25, 0.5}
    best = workbench.load_model(ns["found"]["best"]["artifact"])
    assert best.spec.group_widths().get("head", 16) in (8, 12, 16)
    assert (my_models / "my_edsr_pruned" / "artifact.json").is_file()
    printed = capsys.readouterr().out
    assert "x the first row" in printed and ns["found"]["best"]["config"] in printed
