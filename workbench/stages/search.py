"""Recipe stages of workbench.search (registered with workbench.stages.registry.register_stage).

``search``: a latency-aware width search (see :mod:`workbench.search.study`) from the previous
stage's artifact; its output artifact is the selected configuration, so the next stage (the L2
``finetune``) starts from it. The study lives in the stage folder (``study.db``), so an interrupted
stage resumes the same study on rerun.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.errors import WorkbenchError
from workbench.search.objective import FinetuneSettings
from workbench.search.settings import DTYPES, LatencySettings
from workbench.stages.registry import StageContext, StageResult, register_stage
from workbench.train.settings import default_of

log = logging.getLogger("workbench.search")


def _check_losses(specs: list[dict] | None) -> list[str]:
    from workbench.train.losses import check_loss_specs

    return check_loss_specs(specs) if specs is not None else []


def _default_space() -> dict[str, Any]:
    return {"trunk": "32:48:8", "mid": "24:48:8"}


def _finetune(name: str, **metadata: Any) -> Any:
    """A field whose default is :class:`FinetuneSettings`'s (the candidates' fine-tune)."""
    return default_of(FinetuneSettings, name, **metadata)


def _latency(name: str, **metadata: Any) -> Any:
    """A field whose default is :class:`LatencySettings`'s (how candidates are timed)."""
    return default_of(LatencySettings, name, **metadata)


@dataclass(frozen=True)
class SearchStageConfig:
    """A latency-constrained architecture search over channel widths.

    The fine-tune and latency fields take their defaults from :class:`FinetuneSettings` and
    :class:`LatencySettings`; ``workbench search`` takes its flag defaults from this class.
    """

    trials: int = field(default=30, metadata={"help": "total trials in the study (all workers)", "min": 1})
    objective: str = field(default="pareto", metadata={
        "help": "pareto (PSNR up, latency down), latency (min under a PSNR floor) or psnr (max under "
                "a latency budget)", "choices": ["pareto", "latency", "psnr"]})
    latency_budget_ms: float | None = field(default=None, metadata={
        "help": "constraint: latency <= this many ms", "gt": 0})
    latency_ratio: float | None = field(default=None, metadata={
        "help": "constraint: latency <= this fraction of the parent's, timed in the same study "
                "(0.8: at least 20% faster); instead of latency_budget_ms", "gt": 0, "max": 1})
    psnr_min: float | None = field(default=None, metadata={"help": "constraint: PSNR-Y >= this (dB)"})
    psnr_drop: float | None = field(default=None, metadata={
        "help": "constraint: PSNR-Y >= parent's PSNR - this (dB)", "min": 0})
    space: dict[str, Any] = field(default_factory=_default_space, metadata={
        "help": "dimension -> 'LOW:HIGH:STEP' (or one width) for trunk, mid, esa, blocks (RLFN), "
                "channel-group patterns ('block*.mid1') or groups: {NAME: RANGE} (any family)"})
    per_block: bool = field(default=False, metadata={"help": "sample mid and esa per block"})
    finetune_iters: int = _finetune("iterations", help="fine-tune iterations per candidate (0: score the "
                                    "pruned model)", min=0)
    batch_size: int = _finetune("batch_size", help="fine-tune batch size", min=1)
    patch_size: int = _finetune("patch_size", help="fine-tune HR patch side (pixels)", min=4)
    lr: float = _finetune("lr", help="fine-tune learning rate", gt=0, lt=1)
    finetune_losses: list[dict] | None = field(default=None, metadata={
        "help": "losses of each candidate's fine-tune (default [{type: l1}]); e.g. [{type: distill}] "
                "distils from the parent", "check": _check_losses})
    teacher: str = _finetune("teacher", help="the teacher of distill losses: parent (the search's starting "
                             "model) or a model REF")
    eval_set: str | None = field(default=None, metadata={
        "help": "validation set (default: the recipe's first data.val set)"})
    sampler: str = field(default="tpe", metadata={"help": "Optuna sampler",
                                                  "choices": ["tpe", "nsga2", "random"]})
    criterion: str = field(default="output", metadata={
        "help": "channel importance for pruning, ranked once on the parent (output, l1, l2, l1_full)"})
    storage: str | None = field(default=None, metadata={
        "help": "Optuna storage URL (default sqlite:///<stage folder>/study.db; journal:///path too)"})
    study_name: str = field(default="search", metadata={"help": "study name in the storage"})
    workers: int = field(default=1, metadata={"help": "worker processes on the study", "min": 1})
    input_shape: tuple[int, int, int, int] = _latency("input_shape", help="LR input shape timed (N, C, H, W)")
    dtype: str = _latency("dtype", help="precision timed", choices=list(DTYPES))
    deploy: str | None = _latency("deploy", help="deploy mode the candidates are timed in (eager, "
                                  "channels_last, fused, compile, bf16, fp16, cuda_graph ...; default: "
                                  "the device's fastest fp32 mode, fused on CPU)")
    threads: int | None = _latency("threads", help="CPU threads for latency", min=1)
    train_threads: int | None = field(default=None, metadata={
        "help": "torch threads per worker for fine-tunes and evaluation (default: cores / workers)",
        "min": 1})
    repeats: int = _latency("repeats", help="timed repeats per latency", min=1)
    warmup: int = _latency("warmup", help="warm-up runs per latency", min=0)
    latency_statistic: str = _latency("statistic", help="statistic of the repeats the search optimises: "
                                      "median, or min (resists load from other processes on a shared "
                                      "machine)", choices=["median", "min"])
    premeasure: int = field(default=0, metadata={
        "help": "time every configuration of the space before training when it has at most this "
                "many (0: off)", "min": 0})
    ntire_folder: str | None = _latency("ntire_folder", help="NTIRE protocol: mean time over this folder "
                                        "of LR images", exists="dir")
    latency_cache: str | None = _latency("cache_path", help="latency cache file (default "
                                         "~/.cache/workbench/latency.sqlite)")
    reference: str | None = field(default=None, metadata={
        "help": "a model to mark on the Pareto plot (e.g. rlfn_ntire_x4)"})
    compare_rounds: int = field(default=5, metadata={
        "help": "rounds of the final side-by-side parent/selected timing (0: skip)", "min": 0})
    on_infeasible: str = field(default="error", metadata={
        "help": "no feasible trial: error (stop the recipe) or parent (pass the parent on)",
        "choices": ["error", "parent"]})

    def validate(self) -> list[str]:
        from workbench.search.objective import ObjectiveConfig
        from workbench.search.space import SearchSpace

        problems = []
        try:
            SearchSpace.from_strings(self.space, per_block=self.per_block)
        except WorkbenchError as exc:
            problems.append(f"space: {exc}")
        if self.deploy is not None:
            from workbench.measure.deploy import MODES

            if self.deploy not in MODES:
                problems.append(f"deploy: unknown mode {self.deploy!r}; modes: {', '.join(MODES)}")
        try:
            ObjectiveConfig(objective=self.objective, latency_budget_ms=self.latency_budget_ms,
                            latency_ratio=self.latency_ratio,
                            psnr_min=self.psnr_min, psnr_drop=self.psnr_drop)
        except WorkbenchError as exc:
            problems.append(f"objective: {exc}")
        return problems

    def validate_in(self, recipe: Any) -> list[str]:
        from workbench.stages.utils import patch_size_problems

        problems = patch_size_problems(self.patch_size, recipe.scale, recipe.model)
        if self.finetune_iters > 0 and not recipe.data.train:
            problems.append("finetune_iters: fine-tuning candidates needs training images: set data.train")
        return problems


def job_for_stage(cfg: SearchStageConfig, ctx: StageContext) -> Any:
    """The :class:`~workbench.search.study.SearchJob` a stage runs."""
    from workbench.search.objective import ObjectiveConfig
    from workbench.search.space import SearchSpace
    from workbench.search.study import SearchJob

    recipe = ctx.recipe
    val = recipe.data.val if recipe is not None else None
    eval_set = cfg.eval_set or (val.sets[0] if val is not None and val.sets else "Set5")
    data_root = val.root if val is not None else None
    train_files: tuple[str, ...] = ()
    train_lr: tuple[str, ...] | None = None
    if cfg.finetune_iters > 0:
        from workbench.stages.utils import train_sources, training_files

        hr, lr = training_files(train_sources(ctx), scale=ctx.scale)
        train_files = tuple(str(p) for p in hr)
        train_lr = tuple(str(p) for p in lr) if lr is not None else None
    device = str(ctx.device)
    return SearchJob(
        parent=str(ctx.parent if ctx.parent is not None else ctx.model_ref), out_dir=str(ctx.stage_dir),
        n_trials=cfg.trials, space=SearchSpace.from_strings(cfg.space, per_block=cfg.per_block),
        objective=ObjectiveConfig(objective=cfg.objective, latency_budget_ms=cfg.latency_budget_ms,
                                  latency_ratio=cfg.latency_ratio,
                                  psnr_min=cfg.psnr_min, psnr_drop=cfg.psnr_drop),
        finetune=FinetuneSettings(iterations=cfg.finetune_iters, batch_size=cfg.batch_size,
                                  patch_size=cfg.patch_size, lr=cfg.lr,
                                  losses=tuple(dict(x) for x in (cfg.finetune_losses or ())),
                                  teacher=cfg.teacher),
        latency=LatencySettings(device=device, input_shape=tuple(cfg.input_shape), dtype=cfg.dtype,
                                threads=cfg.threads, warmup=cfg.warmup, repeats=cfg.repeats,
                                ntire_folder=cfg.ntire_folder, cache_path=cfg.latency_cache,
                                statistic=cfg.latency_statistic, deploy=cfg.deploy),
        storage=cfg.storage, study_name=cfg.study_name, eval_set=eval_set, data_root=data_root,
        train_files=train_files, train_lr_files=train_lr, device=device, seed=ctx.seed,
        sampler=cfg.sampler, criterion=cfg.criterion, reference=cfg.reference,
        train_threads=cfg.train_threads, premeasure=cfg.premeasure, best_dir=str(ctx.artifact_dir), progress=ctx.progress)


@register_stage("search", config=SearchStageConfig,
                help="latency-aware width search (Optuna); passes on the selected configuration")
def search_stage(cfg: SearchStageConfig, ctx: StageContext) -> StageResult:
    from workbench.search.results import format_summary
    from workbench.search.study import run_search

    job = job_for_stage(cfg, ctx)
    summary = run_search(job, workers=cfg.workers, compare_rounds=cfg.compare_rounds)
    log.info("%s", format_summary(summary))
    best = summary.get("best")
    if not best or not best.get("artifact"):
        if cfg.on_infeasible == "parent":
            return StageResult(artifact=None, metrics={"search": summary["trials"]},
                               summary="search: no feasible configuration; the parent is passed on")
        raise WorkbenchError(f"search stage {ctx.stage_id}: no feasible configuration in "
                             f"{summary['trials']['complete']} trials; relax the constraint, widen the "
                             f"space or set on_infeasible: parent (results in {ctx.stage_dir})")
    metrics = {"psnr_y": best["psnr_y"], "latency_ms": best["latency_ms"], "trial": best["trial"],
               "config": best["config"], "params": best["params"]}
    if "side_by_side" in summary:
        metrics["latency_ratio_to_parent"] = summary["side_by_side"]["ratio"]
    parent = summary.get("parent", {})
    line = (f"search: trial {best['trial']} {best['config']}: {best['psnr_y']:.3f} dB, "
            f"{best['latency_ms']:.1f} ms (parent {parent.get('psnr_y', float('nan')):.3f} dB, "
            f"{parent.get('latency_ms', float('nan')):.1f} ms); front in {Path(ctx.stage_dir) / 'pareto.png'}")
    return StageResult(artifact=Path(best["artifact"]), metrics=metrics, summary=line)
