"""Recipe stages of workbench.prune: ``sensitivity``, ``sfp`` and ``prune``.

- ``sensitivity``: the one-shot per-group analysis of the previous stage's model (tables, plots
  and TensorBoard in the stage folder); passes the model on unchanged.
- ``sfp``: soft filter pruning while training (mask at every ``mask_every`` iterations), then
  physical removal of the zeroed channels; its artifact is the smaller model.
- ``prune``: one-shot physical pruning to given widths by importance (no training).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from workbench.stages.registry import StageContext, StageResult, register_stage
from workbench.stages.train import TrainingConfig

log = logging.getLogger("workbench.prune")

CRITERIA = ["l1", "l2", "l1_full", "output"]


def _default_ratios() -> list[float]:
    return [0.1, 0.25, 0.5, 0.75, 0.9]


@dataclass(frozen=True)
class SensitivityConfig:
    """One-shot pruning sensitivity of every channel group (no retraining)."""

    ratios: list[float] = field(default_factory=_default_ratios, metadata={
        "help": "fractions of each group's channels to remove, each in (0, 1)"})
    criterion: str = field(default="output", metadata={
        "help": "channel importance criterion (output: the measured output change; filter norms "
                "misjudge trained SR weights' stem group)", "choices": CRITERIA})
    groups: list[str] | None = field(default=None, metadata={
        "help": "shell patterns of the groups to analyse (default: every group)"})
    set: str | None = field(default=None, metadata={
        "help": "validation set (default: the first of data.val.sets, else the embedded Set5)"})
    root: str | None = field(default=None, metadata={
        "help": "folder holding the set (default: data.val.root)", "exists": "dir"})
    latency: bool = field(default=False, metadata={"help": "also measure each pruned model's latency"})
    latency_shape: list[int] = field(default_factory=lambda: [1, 3, 128, 128], metadata={
        "help": "input shape N, C, H, W of the latency measurement"})
    latency_repeats: int = field(default=5, metadata={
        "help": "(baseline, pruned) pairs timed interleaved per pruned model", "min": 1})
    deploy: str | None = field(default=None, metadata={
        "help": "deploy mode of the latency (eager, channels_last, fused, compile, bf16 ...; "
                "default: the device's fastest fp32 mode, fused on CPU)"})
    plots: bool = field(default=True, metadata={"help": "write the PNG plots"})

    def validate(self) -> list[str]:
        problems = []
        if not self.ratios:
            problems.append("ratios: give at least one ratio")
        for i, r in enumerate(self.ratios):
            if not 0 < r < 1:
                problems.append(f"ratios[{i}]: must be in (0, 1), got {r:g}")
        if len(self.latency_shape) != 4 or min(self.latency_shape, default=0) < 1:
            problems.append(f"latency_shape: must be four positive sizes, got {self.latency_shape}")
        if self.deploy is not None:
            from workbench.measure.deploy import MODES

            if self.deploy not in MODES:
                problems.append(f"deploy: unknown mode {self.deploy!r}; modes: {', '.join(MODES)}")
        return problems


def _val_set(ctx: StageContext, name: str | None, root: str | None) -> tuple[str, Any]:
    val = ctx.recipe.data.val if ctx.recipe is not None else None
    set_name = name or (val.sets[0] if val is not None and val.sets else "Set5")
    set_root = root if root is not None else (val.root if val is not None else None)
    return set_name, set_root


@register_stage("sensitivity", config=SensitivityConfig,
                help="one-shot pruning sensitivity per channel group: PSNR drop, params, FLOPs, plots")
def sensitivity_stage(cfg: SensitivityConfig, ctx: StageContext) -> StageResult:
    from workbench.data.benchmark import load_set
    from workbench.prune.sensitivity import analyze, format_ranking, write_outputs

    parent = ctx.load_parent()
    set_name, root = _val_set(ctx, cfg.set, cfg.root)
    pset = load_set(set_name, ctx.scale, data_root=root)
    label = parent.path.name if parent.path is not None else str(ctx.model_ref)
    result = analyze(parent.model, pset, ratios=cfg.ratios, criterion=cfg.criterion,
                     groups=cfg.groups, latency=cfg.latency, latency_shape=cfg.latency_shape,
                     latency_repeats=cfg.latency_repeats, deploy=cfg.deploy, device=ctx.device,
                     progress=ctx.progress, model_name=label)
    write_outputs(result, ctx.stage_dir, plots=cfg.plots)
    log.info("sensitivity of %s:\n%s", label, format_ranking(result, top=10))
    top = [r["group"] for r in result.ranking[:5]]
    metrics = {"baseline_psnr_y": result.baseline["psnr_y"], "set": result.set_name,
               "most_redundant": top, "evaluations": result.timing["evaluations"],
               "seconds": result.timing["total_s"]}
    if result.deploy_mode is not None:
        metrics.update({"deploy_mode": result.deploy_mode,
                        "baseline_latency_ms": result.baseline["latency_ms"]})
    return StageResult(artifact=None, metrics=metrics,
                       summary=f"{result.timing['evaluations']} one-shot prunes on {result.set_name}; "
                               f"most redundant: {', '.join(top[:3])}")


@dataclass(frozen=True)
class SFPConfig(TrainingConfig):
    """Soft filter pruning: training settings plus the target widths and the mask schedule."""

    patch_size: int = field(default=512, metadata={"help": "HR patch side in pixels (512 in ntire22)",
                                                   "min": 4})
    trunk: int | None = field(default=None, metadata={
        "help": "target width of every trunk group (46 in ntire22)", "min": 1})
    targets: dict[str, int] | None = field(default=None, metadata={
        "help": "target widths per group name or shell pattern, e.g. {block2.mid1: 40}"})
    mask_every: int | None = field(default=None, metadata={
        "help": "iterations between masks (an SFP 'epoch'; default: one pass over the data)", "min": 1})
    criterion: str = field(default="output", metadata={
        "help": "filter ranking criterion (output by default; l2 is classic SFP, but on trained SR "
                "weights a filter norm can rank an image-carrying channel lowest)", "choices": CRITERIA})
    reset_moments: bool = field(default=True, metadata={
        "help": "also zero Adam's moments of the zeroed filters"})

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.trunk is None and not self.targets:
            problems.append("trunk: give trunk (one width for every trunk group) and/or targets")
        for name, width in (self.targets or {}).items():
            if width < 1:
                problems.append(f"targets.{name}: must be a positive width, got {width}")
        if self.ema is not None:
            problems.append("ema: not in sfp (an average of the weights would blur the filters SFP "
                            "zeroes); average in the fine-tune after it")
        return problems

    def widths(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.trunk is not None:
            out["trunk"] = self.trunk
        out.update(self.targets or {})
        return out


@register_stage("sfp", distributed=True, config=SFPConfig,
                help="soft filter pruning to target widths while training, then physical removal")
def sfp_stage(cfg: SFPConfig, ctx: StageContext) -> StageResult:
    import copy

    import torch

    from workbench.prune.sfp import SoftFilterPruning
    from workbench.stages.utils import save_stage_artifact, stage_seed
    from workbench.train.loop import fit
    from workbench.stages.train import (build_train_dataset, make_val_fn, settings_from_config,
                                        stage_teacher, write_stage_curve)

    parent = ctx.load_parent()
    model = parent.model
    seed = stage_seed(ctx)
    teacher, teacher_lineage = stage_teacher(cfg, ctx, parent)  # taken before any mask
    dataset = build_train_dataset(ctx, cfg, seed=seed)
    settings = replace(settings_from_config(cfg, teacher=teacher_lineage.get("teacher_weights_sha256")),
                       epoch_iterations=cfg.mask_every)
    callback = SoftFilterPruning(model, cfg.widths(), criterion=cfg.criterion,
                                 reset_moments=cfg.reset_moments)
    val_fn = make_val_fn(ctx) if cfg.val else None
    metrics = fit(model, dataset, settings=settings, device=ctx.device, seed=seed,
                  checkpoint_dir=ctx.checkpoint_dir, callbacks=[callback], val_fn=val_fn,
                  writer=ctx.writer, progress=ctx.progress, desc=ctx.stage_id, teacher=teacher)
    write_stage_curve(ctx, metrics.pop("curve", {}))
    model.to("cpu").eval()
    params_before = sum(p.numel() for p in model.parameters())
    pruned = callback.finalize(model)
    # the masked and the removed model must agree; compared in float64 so that the check sees
    # the removal itself, not fp32 rounding (which a freshly masked, ill-conditioned model can
    # amplify to whole gray levels)
    x = torch.rand(1, model.spec.in_channels, 48, 48, generator=torch.Generator().manual_seed(seed)) * 255
    with torch.no_grad():
        diff = float((copy.deepcopy(model).double()(x.double())
                      - copy.deepcopy(pruned).double()(x.double())).abs().max())
    if diff > 1e-4:
        log.warning("%s: masked and pruned outputs differ by %.3g", ctx.stage_id, diff)
    metrics.update({"params_before": params_before,
                    "params": sum(p.numel() for p in pruned.parameters()),
                    "widths": callback.targets, "mask_swaps": [h["swapped"] for h in callback.history],
                    "masked_vs_pruned_max_abs": diff, "masks": len(callback.history)})
    if val_fn is not None:
        val = val_fn(pruned)
        val.pop("images", None)
        metrics.update({f"pruned_val_{k}": v for k, v in val.items()})
    path = save_stage_artifact(ctx, pruned, parent=parent, metrics=metrics, config=cfg,
                               lineage=teacher_lineage)
    summary = (f"{settings.iterations} it, {len(callback.history)} masks; params "
               f"{params_before:,} -> {metrics['params']:,}; masked vs removed max |diff| {diff:.2g}")
    if "pruned_val_psnr_y" in metrics:
        summary += f"; pruned val PSNR-Y {metrics['pruned_val_psnr_y']:.3f} dB"
    return StageResult(artifact=path, metrics=metrics, summary=summary)


@dataclass(frozen=True)
class PlanConfig:
    """Choose the groups to cut by measurement (:mod:`workbench.prune.plan`): groups pruned to
    ``width`` in order of their one-shot PSNR drop until the model runs at most ``latency_ratio``
    times the parent's latency in every deploy mode."""

    latency_ratio: float = field(default=0.8, metadata={
        "help": "target: latency <= this fraction of the parent's, in every mode", "gt": 0, "max": 1})
    width: int = field(default=16, metadata={
        "help": "the width each chosen group is cut to (16: oneDNN's channel block on AVX-512)", "min": 1})
    groups: list[str] | None = field(default=None, metadata={
        "help": "shell patterns of the candidate groups (default: every group wider than width)"})
    deploy: list[str] | None = field(default=None, metadata={
        "help": "deploy modes timed, e.g. [fused, bf16] (default: the device's fastest fp32 mode)"})
    input_shape: list[int] = field(default_factory=lambda: [1, 3, 256, 256], metadata={
        "help": "LR input shape N, C, H, W timed"})
    rounds: int = field(default=10, metadata={"help": "interleaved (parent, pruned) pairs per step", "min": 1})
    set: str | None = field(default=None, metadata={
        "help": "validation set of the one-shot scores (default: the first of data.val.sets)"})
    root: str | None = field(default=None, metadata={"help": "folder holding the set (default: data.val.root)",
                                                     "exists": "dir"})
    max_groups: int | None = field(default=None, metadata={"help": "take at most this many groups", "min": 1})
    on_missed: str = field(default="error", metadata={
        "help": "target not reached with every candidate: error (stop the recipe) or last (prune "
                "every group taken)", "choices": ["error", "last"]})

    def validate(self) -> list[str]:
        problems = []
        if len(self.input_shape) != 4 or min(self.input_shape, default=0) < 1:
            problems.append(f"plan.input_shape: must be four positive sizes, got {self.input_shape}")
        if self.deploy is not None:
            from workbench.measure.deploy import MODES

            problems += [f"plan.deploy: unknown mode {m!r}; modes: {', '.join(MODES)}"
                         for m in self.deploy if m not in MODES]
        return problems


@dataclass(frozen=True)
class PruneConfig:
    """One-shot physical pruning to target widths (no training), or to the widths a measured
    plan chooses (``plan``)."""

    trunk: int | None = field(default=None, metadata={"help": "width of every trunk group", "min": 1})
    targets: dict[str, int] | None = field(default=None, metadata={
        "help": "target widths per group name or shell pattern"})
    criterion: str = field(default="output", metadata={"help": "channel importance criterion",
                                                       "choices": CRITERIA})
    keep_blocks: list[int] | None = field(default=None, metadata={
        "help": "keep only these blocks (1-based, increasing), e.g. [1, 2, 3, 5], for a family with "
                "repeatable blocks (RLFN, DIPNet, SPAN); the last kept block feeds conv_2 (SPAN: "
                "also conv_cat's tapped slice); a fine-tune must follow"})
    plan: PlanConfig | None = field(default=None, metadata={
        "help": "choose the groups by measurement instead of targets: {latency_ratio: 0.8, width: 16, "
                "deploy: [fused, bf16]}; writes plan.csv, plan.json and plan.png"})

    def validate(self) -> list[str]:
        if self.plan is not None:
            if self.trunk is not None or self.targets:
                return ["plan: give either plan or trunk/targets, not both"]
            return self.plan.validate()
        if self.trunk is None and not self.targets and not self.keep_blocks:
            return ["trunk: give trunk, targets, keep_blocks and/or plan"]
        if self.keep_blocks is not None and (not self.keep_blocks or any(k < 1 for k in self.keep_blocks)
                                             or sorted(set(self.keep_blocks)) != list(self.keep_blocks)):
            return [f"keep_blocks: must be increasing block numbers from 1, got {self.keep_blocks}"]
        return []


@register_stage("prune", config=PruneConfig,
                help="remove the lowest-importance channels physically to given widths (one shot)")
def prune_stage(cfg: PruneConfig, ctx: StageContext) -> StageResult:
    from workbench.prune.surgery import drop_blocks, prune_to_widths
    from workbench.stages.utils import save_stage_artifact

    parent = ctx.load_parent()
    widths = ({"trunk": cfg.trunk} if cfg.trunk is not None else {}) | dict(cfg.targets or {})
    before = sum(p.numel() for p in parent.model.parameters())
    model = drop_blocks(parent.model, keep=cfg.keep_blocks) if cfg.keep_blocks else parent.model
    metrics: dict[str, Any] = {"params_before": before}
    note = ""
    if cfg.plan is not None:
        plan = _run_plan(cfg, ctx, model)
        widths = plan.widths
        last = plan.steps[-1]
        metrics["plan"] = {"widths": widths, "reached": plan.reached, "target_ratio": plan.target_ratio,
                           "latency_ratio": last.latency_ratio, "one_shot_drop_db": last.drop_db,
                           "set": plan.set_name}
        note = (f"; plan: {len(widths)} groups to {plan.width}, "
                + ", ".join(f"{m} {r:.3f}x" for m, r in last.latency_ratio.items())
                + f", one-shot {-last.drop_db:+.3f} dB on {plan.set_name}")
    pruned = prune_to_widths(model, widths, criterion=cfg.criterion) if widths else model
    after = sum(p.numel() for p in pruned.parameters())
    metrics["params"] = after
    path = save_stage_artifact(ctx, pruned, parent=parent, config=cfg, metrics=metrics)
    return StageResult(artifact=path, metrics=metrics, summary=f"params {before:,} -> {after:,}{note}")


def _run_plan(cfg: PruneConfig, ctx: StageContext, model: Any) -> Any:
    """The stage's measured plan (written to its folder); an unreached target stops the recipe
    unless ``on_missed: last``."""
    from workbench.core.errors import WorkbenchError
    from workbench.data.benchmark import load_set
    from workbench.prune.plan import plan_cuts, write_plan

    p = cfg.plan
    set_name, root = _val_set(ctx, p.set, p.root)
    plan = plan_cuts(model, load_set(set_name, ctx.scale, data_root=root), width=p.width,
                     target_ratio=p.latency_ratio, groups=p.groups, criterion=cfg.criterion,
                     modes=p.deploy, input_shape=p.input_shape, rounds=p.rounds, device=ctx.device,
                     max_groups=p.max_groups, progress=ctx.progress)
    write_plan(plan, ctx.stage_dir)
    log.info("pruning plan of %s:\n%s", ctx.stage_id, plan.format())
    if not plan.reached and p.on_missed == "error":
        closest = ", ".join(f"{m} {r:.3f}x" for m, r in plan.steps[-1].latency_ratio.items())
        raise WorkbenchError(f"prune stage {ctx.stage_id}: the plan did not reach {p.latency_ratio:g}x "
                             f"the parent's latency with {len(plan.steps)} groups at width {p.width} "
                             f"(closest {closest}; table in {ctx.stage_dir / 'plan.csv'}); raise "
                             f"latency_ratio, widen groups, or set plan.on_missed: last")
    return plan


__all__ = ["SensitivityConfig", "SFPConfig", "PlanConfig", "PruneConfig"]
