"""Latency of the deployed model: exact hardware in the cache key, the deploy mode in the search,
sensitivity pairs with their spread, `profile` side by side, precision judged by PSNR."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import workbench.measure.deploy as deploy
import workbench.measure.profiling as profiling
from workbench.cli import main
from workbench.data.benchmark import load_set
from workbench.core.errors import WorkbenchError
from workbench.search.latency import (LatencyMeasurer, LatencySettings, cache_key_fields,
                                      device_name, measure_spec)

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
stepping\t: {stepping}
flags\t\t: fpu sse2 avx2 {extra}

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 99
model name\t: something else
"""


def fake_cpuinfo(family=25, model=1, stepping=1, extra="avx512f"):
    return CPUINFO.format(family=family, model=model, stepping=stepping, extra=extra)


def test_hardware_key_tells_cpus_with_one_name_apart():
    base = profiling.hardware_key("cpu", cpuinfo=fake_cpuinfo())
    assert base == profiling.hardware_key("cpu", cpuinfo=fake_cpuinfo())
    assert "AuthenticAMD" in base and "family 25" in base and "AMD EPYC" in base
    others = [fake_cpuinfo(family=26), fake_cpuinfo(model=2), fake_cpuinfo(stepping=0),
              fake_cpuinfo(extra="avx512f avx512_bf16")]
    keys = {profiling.hardware_key("cpu", cpuinfo=text) for text in others}
    assert len(keys) == 4 and base not in keys
    # the first processor's block only; flags are hashed, their order does not matter
    hw = profiling.hardware_id("cpu", cpuinfo=fake_cpuinfo(extra="b a"))
    assert hw["family"] == "25" and hw == profiling.hardware_id("cpu", cpuinfo=fake_cpuinfo(extra="a b"))
    # no /proc/cpuinfo (another OS): still a key, from what platform knows
    assert profiling.hardware_key("cpu", cpuinfo="").startswith("cpu:")


def test_hardware_key_of_a_gpu_names_driver_cuda_and_cudnn(monkeypatch):
    from types import SimpleNamespace

    props = SimpleNamespace(name="NVIDIA H200", major=9, minor=0, total_memory=141 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(profiling, "_gpu_driver", lambda: "570.86")
    key = profiling.hardware_key("cuda")
    assert all(part in key for part in ("NVIDIA H200", "driver 570.86", "cuda 12.8", "cudnn 91002",
                                        "sm9.0"))
    monkeypatch.setattr(profiling, "_gpu_driver", lambda: "575.1")
    assert profiling.hardware_key("cuda") != key


def test_cache_key_holds_mode_and_exact_hardware(tmp_path, tiny_spec, monkeypatch):
    settings = LatencySettings(input_shape=(1, 3, 16, 16), repeats=2, warmup=1, threads=1,
                               isolate=False, cache_path=str(tmp_path / "lat.sqlite"))
    assert settings.deploy == "fused"  # the default on CPU: the fastest fp32 mode
    fused = cache_key_fields(tiny_spec, settings)
    cl = cache_key_fields(tiny_spec, replace(settings, deploy="channels_last"))
    assert fused["deploy"].split(".r")[0] == "fused" and cl["deploy"].split(".r")[0] == "channels_last"
    assert {k for k in fused if fused[k] != cl[k]} == {"deploy"}
    assert fused["device"] == profiling.hardware_key("cpu")
    monkeypatch.setattr(profiling, "_read_cpuinfo", lambda: fake_cpuinfo(family=26))
    zen5 = device_name("cpu")
    monkeypatch.setattr(profiling, "_read_cpuinfo", lambda: fake_cpuinfo(family=25))
    assert device_name("cpu") != zen5 and "family 25" in device_name("cpu")
    monkeypatch.undo()
    # one file, two modes: two measurements, two rows
    a, b = LatencyMeasurer(settings), LatencyMeasurer(replace(settings, deploy="channels_last"))
    ra, rb = a.latency(tiny_spec), b.latency(tiny_spec)
    assert not ra["cached"] and not rb["cached"]
    assert ra["deploy_mode"] == "fused" and rb["deploy_mode"] == "channels_last"
    rev = f".r{deploy.FORMS_REVISION}"
    assert ra["deploy"] == "fused" and ra["deploy_key"] == "fused" + rev
    assert sorted(r["deploy"] for r in a.cache.rows()) == ["channels_last" + rev, "fused" + rev]
    assert a.latency(tiny_spec)["cached"] is True


def test_latency_settings_modes():
    assert LatencySettings().deploy == "fused"
    assert LatencySettings(dtype="bfloat16").deploy == "eager"  # a cast model, as before
    assert LatencySettings(deploy="bf16").deploy == "bf16"
    with pytest.raises(WorkbenchError, match="sets the precision"):
        LatencySettings(dtype="bfloat16", deploy="fused")
    with pytest.raises(WorkbenchError, match="choose one of"):
        LatencySettings(deploy="turbo")
    with pytest.raises(WorkbenchError, match="CUDA"):
        LatencySettings(deploy="cuda_graph")
    assert deploy.default_mode("cpu") == "fused" and deploy.default_mode("cuda") == "cuda_graph"
    assert deploy.default_mode("cpu", torch.nn.Conv2d(3, 3, 1)) == "channels_last"


class _Recorder:
    """Wraps workbench.measure.deploy.prepare: records each requested mode, optionally runs another."""

    def __init__(self, monkeypatch, run_as: str | None = None) -> None:
        self.modes: list[str] = []
        real = deploy.prepare

        def fake(model, *, mode="eager", **kw):
            self.modes.append(mode)
            return real(model, mode=run_as or mode, **kw)

        monkeypatch.setattr(deploy, "prepare", fake)


def test_search_times_candidates_in_the_deploy_mode(tmp_path, monkeypatch):
    from test_search import StubEvaluator, tiny_job

    from workbench.search.study import open_study, run_worker

    rec = _Recorder(monkeypatch)
    job = tiny_job(tmp_path, n_trials=3)
    job = replace(job, latency=replace(job.latency, isolate=False, deploy="channels_last"))
    run_worker(job, evaluator=StubEvaluator())
    study = open_study(job)
    assert rec.modes and set(rec.modes) == {"channels_last"}
    assert study.user_attrs["deploy_mode"] == "channels_last"
    assert study.user_attrs["fingerprint"]["latency"]["deploy"] == "channels_last"
    timed = [t for t in study.trials if "latency" in t.user_attrs]  # repeats are skipped, not timed
    assert timed
    for t in timed:
        assert t.user_attrs["latency"]["deploy"] == "channels_last"
    # a new mode is a new study: the fingerprint refuses to mix them
    other = replace(job, latency=replace(job.latency, deploy="eager"))
    with pytest.raises(WorkbenchError, match="other settings"):
        run_worker(other, evaluator=StubEvaluator())


def test_compile_mode_starts_each_candidate_from_a_clean_dynamo(tiny_spec, tmp_path, monkeypatch):
    resets = []
    monkeypatch.setattr(deploy, "fresh_compile", lambda limit=64: resets.append(limit))
    rec = _Recorder(monkeypatch, run_as="channels_last")  # no real compile in a unit test
    settings = LatencySettings(input_shape=(1, 3, 16, 16), repeats=1, warmup=0, threads=1,
                               isolate=False, deploy="compile", cache_path=str(tmp_path / "c.db"))
    for width in (4, 6):
        record = measure_spec(tiny_spec.with_widths({"block1.mid1": width}), settings)
        assert record["deploy_mode"] == "compile" and record["warmup"] == 1  # +1: the compile call
    assert rec.modes == ["compile", "compile"] and len(resets) == 2
    from workbench.search.latency import compare_specs

    compare_specs({"a": tiny_spec, "b": tiny_spec.with_widths({"block1.mid1": 4})}, settings,
                  rounds=1, per_round=1)
    assert len(resets) == 3 and resets[-1] >= 12  # once for all, room for every model


def test_fresh_compile_raises_the_recompile_limit():
    import torch._dynamo.config as dc

    old = dc.recompile_limit
    try:
        deploy.fresh_compile(limit=200)
        assert dc.recompile_limit >= 200
    finally:
        dc.recompile_limit = old


def test_one_statistics_definition_everywhere(tiny_spec, tmp_path, monkeypatch):
    values = list(range(1, 11))
    from workbench.measure import timing

    assert profiling.spread is timing.spread
    s = timing.spread(values, "_ms")
    assert s["p90_ms"] == pytest.approx(9.1) and s["median_ms"] == 5.5  # numpy's linear rule
    assert s["iqr_ms"] == pytest.approx(s["p75_ms"] - s["p25_ms"]) and s["max_ms"] == 10
    calls = []
    real = timing.spread

    def marked(vals, suffix=""):
        calls.append(len(list(vals)))
        out = real(vals, suffix)
        out[f"p90{suffix}"] = 123.0
        return out

    monkeypatch.setattr(timing, "spread", marked)
    settings = LatencySettings(input_shape=(1, 3, 16, 16), repeats=3, warmup=0, threads=1,
                               isolate=False, cache_path=str(tmp_path / "s.db"))
    assert measure_spec(tiny_spec, settings)["p90_ms"] == 123.0           # profiling's path
    m = LatencyMeasurer(settings)
    m.measure_many([tiny_spec.with_widths({"block1.mid1": 4})])
    assert m.latency(tiny_spec.with_widths({"block1.mid1": 4}))["p90_ms"] == 123.0  # the search's


def test_sensitivity_latency_is_paired_with_the_baseline(tiny_model, tmp_path, monkeypatch):
    from workbench.prune.sensitivity import analyze, format_ranking, write_outputs

    calls: list[str] = []
    real = deploy.prepare

    def logged(model, **kw):
        dep = real(model, **kw)
        tag = "base" if not calls else "cut"
        calls.append(f"prepare-{tag}")

        class Logged(torch.nn.Module):
            def forward(self, x):
                calls.append(tag)
                return dep(x)

        return Logged()

    monkeypatch.setattr(deploy, "prepare", logged)
    pset = load_set("Set5", 2)
    pset.pairs = pset.pairs[:2]
    res = analyze(tiny_model, pset, ratios=[0.5], groups=["block1.mid1"], latency=True,
                  latency_shape=(1, 3, 16, 16), latency_repeats=4, deploy="channels_last",
                  progress=False)
    assert res.deploy_mode == "channels_last" and res.baseline["deploy_mode"] == "channels_last"
    (row,) = res.rows
    assert row["latency_ratio_p10"] <= row["latency_ratio"] <= row["latency_ratio_p90"]
    assert row["latency_ratio_iqr"] >= 0 and row["latency_ms"] > 0
    assert row["latency_saved_pct"] == pytest.approx(100 * (1 - row["latency_ratio"]))
    # after the cut's warm-up: base, cut, base, cut ... (interleaved pairs)
    after = calls[calls.index("prepare-cut") + 1:]
    timed = after[2:]  # one warm-up pass each
    assert timed == ["base", "cut"] * 4
    assert res.baseline["latency_runs"] == 4 + 4  # its own rounds, then one per pair
    paths = write_outputs(res, tmp_path / "out", tensorboard=False)
    assert paths["latency_tradeoff"].read_bytes()[:4] == b"\x89PNG"
    assert "deploy mode channels_last" in format_ranking(res)
    header = (tmp_path / "out" / "sensitivity.csv").read_text().splitlines()[0]
    assert "latency_ratio_p90" in header and "latency_saved_pct" in header


def test_profile_times_models_and_modes_side_by_side(tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = main(["profile", "--model", "rlfn_tiny_x4", "rlfn_tiny_x2", "--deploy", "eager",
               "channels_last", "bf16", "--input", "1x3x24x24", "--repeats", "3", "--warmup", "1",
               "--threads", "1", "--judge", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "x first" in text and "rlfn_tiny_x2 [channels_last]" in text and "accepted" in text
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == [f"{m} [{d}]" for m in ("rlfn_tiny_x4", "rlfn_tiny_x2")
                                         for d in ("eager", "channels_last", "bf16")]
    assert rows[0]["ratio"] == 1.0 and all(r["rounds"] == 3 and r["median_ms"] > 0 for r in rows)
    assert all(r["ratio_p10"] <= r["ratio"] <= r["ratio_p90"] for r in rows)
    assert rows[1]["deploy_mode"] == "channels_last" and rows[3]["model"] == "rlfn_tiny_x2"
    assert "precision" in rows[2] and "precision" not in rows[1]
    assert rows[2]["precision"]["set"] == "Set5" and "hardware" in rows[0]
    assert main(["profile", "--model", "rlfn_tiny_x4", "rlfn_tiny_x2", "--sweep", "4:8:4"]) == 2
    assert "--sweep" in capsys.readouterr().err
    # one model, no --deploy: timed in the device's default mode
    single = tmp_path / "one.json"
    assert main(["profile", "--model", "rlfn_tiny_x4", "--input", "1x3x24x24", "--repeats", "2",
                 "--warmup", "0", "--out", str(single)]) == 0
    assert json.loads(single.read_text())["latency"]["deploy_mode"] == "fused"


def test_judge_precision_by_psnr(tiny_model):
    pset = load_set("Set5", 2)
    same = deploy.judge_precision(tiny_model, "eager", pset)
    assert same["drop"] == 0 and same["max_gray_diff"] == 0 and same["accepted"]
    assert same["psnr_fp32"] == same["psnr_mode"] and same["images"] == 5
    bf = deploy.judge_precision(tiny_model, "bf16", pset)
    assert bf["mode"] == "bf16" and np.isfinite(bf["psnr_mode"]) and bf["max_drop_db"] == 0.01
    assert bf["accepted"] == (bf["drop"] <= 0.01)
    strict = deploy.judge_precision(tiny_model, "eager", pset, max_drop_db=-1.0)
    assert strict["accepted"] is False  # the limit decides, whatever the pixels say
    assert deploy.reduced_precision_mode("cpu", cpuinfo=fake_cpuinfo(extra="amx_bf16")) == "bf16"
    assert deploy.reduced_precision_mode("cpu", cpuinfo=fake_cpuinfo(extra="avx512_bf16")) == "bf16"
    assert deploy.reduced_precision_mode("cpu", cpuinfo=fake_cpuinfo()) is None
    assert deploy.reduced_precision_mode("cuda") == "fp16"


def test_eval_deploy_bf16_reports_the_judgement(tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", "--model", "rlfn_tiny_x4", "--deploy", "bf16", "--summary",
                 "--no-progress", "--out", str(out)]) == 0
    assert "bf16 vs fp32 on Set5" in capsys.readouterr().out
    judged = json.loads(out.read_text())["models"]["rlfn_tiny_x4"]["precision"]["Set5"]
    assert set(judged) >= {"psnr_fp32", "psnr_mode", "drop", "max_gray_diff", "accepted"}


def test_stage_configs_take_a_deploy_mode():
    from workbench.stages.prune import SensitivityConfig
    from workbench.stages.search import SearchStageConfig

    assert SearchStageConfig(deploy="fused").validate() == []
    assert any("deploy" in p for p in SearchStageConfig(deploy="warp").validate())
    assert SensitivityConfig(deploy="channels_last").validate() == []
    assert any("deploy" in p for p in SensitivityConfig(deploy="warp").validate())


def test_prune_apply_reports_latency_in_the_deploy_mode(tmp_path, capsys):
    assert main(["prune", "apply", "--model", "rlfn_tiny_x2", "--widths", "trunk=6", "--out",
                 str(tmp_path / "p"), "--latency", "--deploy", "channels_last", "--latency-shape",
                 "1x3x24x24", "--latency-rounds", "2"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("latency")][0]
    assert "deploy mode channels_last" in line and "2 interleaved pairs" in line
    assert main(["prune", "apply", "--model", "rlfn_tiny_x2", "--widths", "trunk=6", "--out",
                 str(tmp_path / "q"), "--latency", "--deploy", "cuda_graph"]) == 2
    assert not (tmp_path / "q").exists()  # refused before writing anything


def test_premeasure_times_cached_configurations_again(tiny_spec, tmp_path):
    """A cached timing comes from another hour's load: the interleaved block measures every spec
    again (fresh), unless asked to fill only the gaps."""
    settings = LatencySettings(input_shape=(1, 3, 16, 16), repeats=2, warmup=0, threads=1,
                               isolate=False, cache_path=str(tmp_path / "c.db"))
    m = LatencyMeasurer(settings)
    a, b = tiny_spec, tiny_spec.with_widths({"block1.mid1": 4})
    m.cache.put(m.key(a), {**m.key(a), "median_ms": 9999.0, "p90_ms": 9999.0, "min_ms": 9999.0})
    assert m.measure_many([a, b], fresh=False) == 1                  # only the missing one
    assert m.latency(a)["median_ms"] == 9999.0
    assert m.measure_many([a, b]) == 2                               # both, in one block
    assert m.latency(a)["median_ms"] < 9999.0


def test_cache_key_names_the_revision_of_the_deploy_form(tiny_spec, tmp_path, monkeypatch):
    """A timing of an older form of a mode is not reused once the form changes."""
    from workbench.measure import deploy as deploy_mod
    from workbench.search.latency import cache_key_fields

    settings = LatencySettings(input_shape=(1, 3, 16, 16), deploy="fused", threads=1,
                               cache_path=str(tmp_path / "k.db"))
    now = cache_key_fields(tiny_spec, settings)
    assert now["deploy"] == f"fused.r{deploy_mod.FORMS_REVISION}"
    monkeypatch.setattr(deploy_mod, "FORMS_REVISION", deploy_mod.FORMS_REVISION + 1)
    assert cache_key_fields(tiny_spec, settings)["deploy"] != now["deploy"]
