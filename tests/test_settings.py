"""One settings class per concept: the copies derive their defaults from the source, so they
cannot drift (training: TrainSettings; the search's fine-tune: FinetuneSettings; its latency:
LatencySettings; the CLI flags: the recipe stages' configs)."""
from __future__ import annotations

import dataclasses
import inspect

from workbench.cli import build_parser
from workbench.search.objective import FinetuneSettings
from workbench.search.settings import LatencySettings
from workbench.stages.prune import SensitivityConfig, SFPConfig
from workbench.stages.search import SearchStageConfig
from workbench.stages.train import (_NOT_FROM_CONFIG, ContrastiveConfig, FinetuneConfig, TrainingConfig,
                                    settings_from_config)
from workbench.train.settings import TrainSettings


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def _subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def test_training_stage_defaults_are_the_loops():
    loop, stage = _defaults(TrainSettings), _defaults(TrainingConfig)
    shared = {f.name for f in dataclasses.fields(TrainSettings)} - _NOT_FROM_CONFIG - {"iterations"}
    assert shared <= set(stage), "a TrainSettings field that no training stage can set"
    assert {k: stage[k] for k in shared} == {k: loop[k] for k in shared}
    assert settings_from_config(TrainingConfig(iterations=7)) == TrainSettings(iterations=7)
    # the stages that differ on purpose (the paper's fine-tune, ntire22's SFP) keep their own
    assert (FinetuneConfig.__dataclass_fields__["lr"].default, SFPConfig.__dataclass_fields__["patch_size"].default) \
        == (1e-5, 512)
    cfg = ContrastiveConfig(iterations=2, batch_size=3, lr=1e-3, grad_clip=1.0, amp="bf16")
    ts = settings_from_config(cfg, teacher="abc")
    assert (ts.batch_size, ts.lr, ts.grad_clip, ts.amp, ts.teacher) == (3, 1e-3, 1.0, "bf16", "abc")
    assert [x["type"] for x in ts.losses] == ["l1", "contrastive"]


def test_search_stage_defaults_are_the_settings_classes():
    stage, ft, lat = _defaults(SearchStageConfig), _defaults(FinetuneSettings), _defaults(LatencySettings)
    assert {k: stage[k] for k in ("batch_size", "patch_size", "lr", "teacher")} == \
        {k: ft[k] for k in ("batch_size", "patch_size", "lr", "teacher")}
    assert stage["finetune_iters"] == ft["iterations"]
    pairs = {"input_shape": "input_shape", "dtype": "dtype", "deploy": "deploy", "threads": "threads",
             "repeats": "repeats", "warmup": "warmup", "latency_statistic": "statistic",
             "ntire_folder": "ntire_folder", "latency_cache": "cache_path"}
    assert {k: stage[k] for k in pairs} == {k: lat[v] for k, v in pairs.items()}


def test_search_flags_default_to_the_stage():
    args = _subparser("search").parse_args(["--model", "rlfn_s_x4"])
    stage = _defaults(SearchStageConfig)
    for flag, key in {"trials": "trials", "objective": "objective", "finetune_iters": "finetune_iters",
                      "batch_size": "batch_size", "patch_size": "patch_size", "lr": "lr",
                      "teacher": "teacher", "sampler": "sampler", "criterion": "criterion",
                      "study_name": "study_name", "workers": "workers", "dtype": "dtype",
                      "deploy": "deploy", "repeats": "repeats", "warmup": "warmup",
                      "latency_stat": "latency_statistic", "premeasure": "premeasure",
                      "compare_rounds": "compare_rounds"}.items():
        assert getattr(args, flag) == stage[key], flag
    assert args.space == [f"{k}={v}" for k, v in stage["space"].items()]
    assert tuple(int(v) for v in args.input_shape.split(",")) == stage["input_shape"]
    assert args.finetune_loss == FinetuneSettings().loss


def test_profile_and_sensitivity_flags_default_to_their_source():
    from workbench.measure.profiling import measure_latency

    sig = inspect.signature(measure_latency).parameters
    args = _subparser("profile").parse_args(["--model", "rlfn_s_x4"])
    assert (args.warmup, args.repeats) == (sig["warmup"].default, sig["repeats"].default)
    args = _subparser("sensitivity").parse_args(["--model", "rlfn_s_x4"])
    d = SensitivityConfig()
    assert (args.ratios, args.criterion, args.latency_repeats) == (d.ratios, d.criterion, d.latency_repeats)
    assert [int(v) for v in args.latency_shape.split(",")] == d.latency_shape


def test_every_pruning_entry_point_defaults_to_the_one_criterion():
    """The criterion that works on trained SR weights (output) is every entry point's default:
    the algorithms (API), the stages, the search and the CLI flags."""
    from workbench.prune.importance import DEFAULT_CRITERION, group_scores
    from workbench.prune.sensitivity import analyze
    from workbench.prune.surgery import group_importance, prune_to_spec, prune_to_widths
    from workbench.search.objective import DefaultEvaluator
    from workbench.search.study import SearchJob
    from workbench.stages.prune import PruneConfig

    assert DEFAULT_CRITERION == "output"
    for fn in (group_scores, analyze, group_importance, prune_to_spec, prune_to_widths,
               DefaultEvaluator.__init__):
        assert inspect.signature(fn).parameters["criterion"].default == DEFAULT_CRITERION, fn
    for cls in (SensitivityConfig, SFPConfig, PruneConfig, SearchStageConfig, SearchJob):
        assert _defaults(cls)["criterion"] == DEFAULT_CRITERION, cls
    apply = _subparser("prune")
    sub = next(a for a in apply._actions if a.dest == "prune_command" or hasattr(a, "choices") and
               isinstance(a.choices, dict) and "apply" in a.choices).choices["apply"]
    assert sub.get_default("criterion") == DEFAULT_CRITERION
    assert _subparser("sensitivity").get_default("criterion") == DEFAULT_CRITERION


def test_quantize_stage_offers_every_int8_deploy_mode():
    import dataclasses as dc

    from workbench.measure.deploy import INT8_MODES
    from workbench.stages.quantize import QuantizeConfig

    field = next(f for f in dc.fields(QuantizeConfig) if f.name == "val_deploy")
    assert tuple(field.metadata["choices"]) == INT8_MODES
