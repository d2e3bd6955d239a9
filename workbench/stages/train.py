"""Recipe stages of workbench.train: ``train``, ``warm_start``, ``contrastive``, ``finetune``.

All four training stages share one config (:class:`TrainingConfig`) and one implementation; they
differ in where the weights start and in their defaults, which follow the RLFN paper / NTIRE 2022:

- ``train``: from scratch (the parent's architecture, seeded random init; ``init: parent`` starts
  from the parent's weights instead), L1, Adam(0.9, 0.999, 1e-8), lr 5e-4 halved every
  ``halve_every`` iterations, 256x256 HR patches with flips and 90-degree rotations, batch 64;
- ``warm_start``: the previous stage's weights, a fresh optimiser and schedule, same settings;
- ``contrastive``: a warm start whose loss defaults to L1 + 255 x contrastive loss (its own type so a
  recipe reads like the paper; ``warm_start`` with that ``losses`` list is the same thing);
- ``finetune``: a warm start with L2 loss, lr 1e-5 and 640x640 patches.

``evaluate`` (:mod:`workbench.stages.evaluate`) scores a stage's model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from workbench.stages.registry import StageContext, StageResult, register_stage
from workbench.train.settings import TrainSettings, default_of
from workbench.recipes.schema import TrainSource

log = logging.getLogger("workbench.train")


def _check_losses(specs: list[dict]) -> list[str]:
    from workbench.train.losses import check_loss_specs

    return check_loss_specs(specs)


def _train_default(name: str, **metadata: Any) -> Any:
    """A stage field whose default is :class:`TrainSettings`'s (the one source of the defaults)."""
    return default_of(TrainSettings, name, **metadata)


#: TrainSettings fields a stage config does not set: the loop's own bookkeeping, and ``teacher``,
#: which in a stage config names the teacher model while in TrainSettings it is its weights hash.
_NOT_FROM_CONFIG = {"epoch_iterations", "teacher"}


@dataclass(frozen=True)
class TrainingConfig:
    """Settings shared by every training stage (defaults: :class:`TrainSettings`'s)."""

    iterations: int = field(metadata={"help": "optimiser steps in this stage", "min": 1})
    batch_size: int = _train_default("batch_size", help="patches per step (all processes together)", min=1)
    patch_size: int = _train_default("patch_size", help="HR patch side in pixels (a multiple of the scale)",
                                     min=4)
    lr: float = _train_default("lr", help="initial learning rate (Adam)", gt=0, lt=1)
    betas: tuple[float, float] = _train_default("betas", help="Adam betas")
    eps: float = _train_default("eps", help="Adam eps", gt=0)
    halve_every: int = _train_default("halve_every", help="multiply lr by gamma every N iterations", min=1)
    gamma: float = _train_default("gamma", help="lr factor at each step of the schedule", gt=0, max=1)
    losses: list[dict] = _train_default("losses", help="weighted losses: [{type: l1|l2|contrastive, "
                                        "weight: W, ...}]", check=_check_losses)
    augment: bool = field(default=True, metadata={"help": "random flips and 90-degree rotations"})
    samples_per_epoch: int | None = field(default=None, metadata={
        "help": "patches per data epoch (default: one per training image)", "min": 1})
    checkpoint_every: int = _train_default("checkpoint_every", help="periodic resumable checkpoint every N "
                                           "iterations (0: only at the end)", min=0)
    val_every: int = _train_default("val_every", help="validate every N iterations (0: only at the end)", min=0)
    val: bool = field(default=True, metadata={"help": "validate on data.val at the end of the stage"})
    log_every: int = _train_default("log_every", help="TensorBoard/log interval in iterations", min=1)
    grad_clip: float | None = _train_default("grad_clip", help="clip the gradient norm", gt=0)
    num_workers: int = _train_default("num_workers", help="data loader worker processes", min=0)
    amp: str | None = _train_default("amp", help="mixed precision on CUDA: bf16 or fp16",
                                     choices=["bf16", "fp16"])
    ema: float | None = _train_default("ema", help="keep an exponential moving average of the weights "
                                       "with this decay per step (e.g. 0.999); validation and the "
                                       "stage's model use the average", gt=0, lt=1)
    cache_images: bool = field(default=True, metadata={
        "help": "decode training images once and keep them in memory (off for DIV2K+Flickr2K)"})
    data: list[TrainSource] | None = field(default=None, metadata={
        "help": "training sources for this stage only (default: the recipe's data.train)"})
    teacher: str = field(default="parent", metadata={
        "help": "the frozen teacher of distill losses: parent (the stage's starting model) or a model "
                "REF (name, artifact folder, .pth)"})

    def validate(self) -> list[str]:
        from workbench.train.losses import uses_hr

        problems = []
        if not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas: each must be in [0, 1), got {list(self.betas)}")
        if any(getattr(src, "as_lr", False) for src in (self.data or [])) and uses_hr(self.losses):
            problems.append("losses: sources with as_lr have no HR target; use only distill losses")
        return problems

    def validate_in(self, recipe: Any) -> list[str]:
        from workbench.train.losses import uses_hr

        problems = []
        if not self.data and any(getattr(src, "as_lr", False) for src in recipe.data.train) \
                and uses_hr(self.losses):
            problems.append("losses: data.train has as_lr sources (no HR target); use only distill losses "
                            "or give this stage its own data")
        if not self.data and not recipe.data.train:
            problems.append("data: this training stage needs training images: set data.train in the "
                            "recipe or data in the stage")
        from workbench.stages.utils import patch_size_problems

        return problems + patch_size_problems(self.patch_size, recipe.scale, recipe.model)


@dataclass(frozen=True)
class TrainFromScratchConfig(TrainingConfig):
    init: str = field(default="scratch", metadata={
        "help": "scratch: seeded random init of the parent's architecture; parent: its weights",
        "choices": ["scratch", "parent"]})


@dataclass(frozen=True)
class ContrastiveConfig(TrainingConfig):
    losses: list[dict] = field(default_factory=lambda: [{"type": "l1", "weight": 1.0},
                                                        {"type": "contrastive", "weight": 255.0}],
                               metadata={"help": "L1 + 255 x contrastive loss (RLFN paper)",
                                         "check": _check_losses})


@dataclass(frozen=True)
class FinetuneConfig(TrainingConfig):
    patch_size: int = field(default=640, metadata={"help": "HR patch side in pixels", "min": 4})
    lr: float = field(default=1e-5, metadata={"help": "initial learning rate (Adam)", "gt": 0, "lt": 1})
    losses: list[dict] = field(default_factory=lambda: [{"type": "l2", "weight": 1.0}],
                               metadata={"help": "L2 (MSE) loss", "check": _check_losses})


def settings_from_config(cfg: TrainingConfig, *, teacher: str | None = None):
    """The loop's TrainSettings for a training stage config (``teacher``: its weights hash)."""
    import dataclasses

    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainSettings)
              if f.name not in _NOT_FROM_CONFIG}
    values.update(betas=tuple(cfg.betas), losses=[dict(x) for x in cfg.losses])
    return TrainSettings(**values, teacher=teacher)


def build_train_dataset(ctx: StageContext, cfg: TrainingConfig, *, seed: int):
    """The stage's PatchDataset (crops, flips/rotations drawn per (seed, epoch, index))."""
    from workbench.data.training import PatchDataset
    from workbench.stages.utils import train_sources, training_files
    from workbench.train.losses import uses_hr

    hr, lr, as_lr = training_files(train_sources(ctx, cfg.data), scale=ctx.scale, with_lr_only=True)
    return PatchDataset(hr, scale=ctx.scale, patch_size=cfg.patch_size, lr_files=lr, augment=cfg.augment,
                        length=cfg.samples_per_epoch, seed=seed, cache=cfg.cache_images,
                        lr_only=as_lr, targets=uses_hr(cfg.losses))


def stage_teacher(cfg: Any, ctx: StageContext, parent: Any):
    """The frozen teacher of the stage's distill losses and its lineage record, or (None, {}).

    ``cfg.teacher`` is ``parent`` (a copy of the stage's starting model, taken before training
    changes it) or a model REF. The teacher must have the student's scale.
    """
    import copy

    from workbench.models.artifacts import load_model, state_digest
    from workbench.core.errors import WorkbenchError
    from workbench.train.losses import needs_teacher

    if not needs_teacher(cfg.losses):
        return None, {}
    ref = getattr(cfg, "teacher", "parent") or "parent"
    if ref == "parent":
        art = parent
        name = str(parent.path) if parent.path is not None else str(ctx.parent or ctx.model_ref)
        model = copy.deepcopy(parent.model)
    else:
        art = load_model(ref)
        name, model = ref, art.model
    if art.spec.scale != ctx.scale:
        raise WorkbenchError(f"teacher {name}: scale x{art.spec.scale}, but the stage trains x{ctx.scale}")
    sha = art.weights_sha256 or state_digest(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {"teacher": name, "teacher_weights_sha256": sha}


def make_val_fn(ctx: StageContext, *, images: int = 1):
    """``val_fn(model) -> {"psnr_y", "ssim_y", "psnr_rgb", "images"}`` on the recipe's first val set.

    The set is loaded once; metrics are its means with the paper's protocol; ``images`` holds the
    SR of the first ``images`` pictures for TensorBoard.
    """
    from workbench.data.benchmark import load_set
    from workbench.measure.evaluate import evaluate_set, super_resolve

    val = ctx.recipe.data.val if ctx.recipe is not None else None
    name = val.sets[0] if val is not None and val.sets else "Set5"
    root = val.root if val is not None else None
    pset = load_set(name, ctx.scale, data_root=root)

    def val_fn(model):
        result = evaluate_set(model, pset, progress=False)
        out: dict[str, Any] = {k: float(v) for k, v in result.mean.items()}
        out["set"] = result.name
        out["images"] = {f"{result.name}/{p.name}": super_resolve(model, p.lr) for p in list(pset)[:images]}
        return out

    return val_fn


def write_stage_curve(ctx: StageContext, curve: dict) -> None:
    """``curve.json`` and ``curve.png`` in the stage folder (rank 0): the loss and validation
    PSNR-Y against the iteration (kept out of artifact.json, which stays small)."""
    from workbench.core.files import atomic_write_json
    from workbench.stages.utils import is_main
    from workbench.train.curves import write_curve

    if not is_main(ctx) or not curve:
        return
    atomic_write_json(ctx.stage_dir / "curve.json", curve)
    write_curve(curve, ctx.stage_dir / "curve.png", title=f"{ctx.stage_id} ({ctx.stage_type})")


def run_training(cfg: TrainingConfig, ctx: StageContext, *, from_scratch: bool,
                 callbacks: list | tuple = ()) -> StageResult:
    """Train from the parent (or from scratch on its architecture) and save the stage's artifact."""
    import torch

    from workbench.models import build_model
    from workbench.stages.utils import save_stage_artifact, stage_seed
    from workbench.train.loop import fit

    parent = ctx.load_parent()
    seed = stage_seed(ctx)
    model = parent.model
    teacher, teacher_lineage = stage_teacher(cfg, ctx, parent)
    if from_scratch:
        torch.manual_seed(seed)
        model = build_model(parent.spec)
    dataset = build_train_dataset(ctx, cfg, seed=seed)
    settings = settings_from_config(cfg, teacher=teacher_lineage.get("teacher_weights_sha256"))
    val_fn = make_val_fn(ctx) if cfg.val else None
    metrics = fit(model, dataset, settings=settings, device=ctx.device, seed=seed,
                  checkpoint_dir=ctx.checkpoint_dir, callbacks=list(callbacks), val_fn=val_fn,
                  writer=ctx.writer, progress=ctx.progress, desc=ctx.stage_id, teacher=teacher)
    metrics["train_images"] = len(dataset.hr_files)
    metrics["start"] = "scratch" if from_scratch else "parent"
    write_stage_curve(ctx, metrics.pop("curve", {}))
    model.to("cpu")
    path = save_stage_artifact(ctx, model, parent=parent, metrics=metrics, config=cfg,
                               lineage=teacher_lineage)
    parts = [f"{settings.iterations} it", f"loss {metrics['loss']:.4g}" if metrics.get("loss") is not None else ""]
    if "val_psnr_y" in metrics:
        parts.append(f"val {metrics.get('val_set', 'Set5')} PSNR-Y {metrics['val_psnr_y']:.3f} dB")
    return StageResult(artifact=path, metrics=metrics, summary=", ".join(p for p in parts if p))


@register_stage("train", distributed=True, config=TrainFromScratchConfig,
                help="train (default from scratch) with L1, Adam and a step lr schedule")
def train_stage(cfg: TrainFromScratchConfig, ctx: StageContext) -> StageResult:
    return run_training(cfg, ctx, from_scratch=cfg.init == "scratch")


@register_stage("warm_start", distributed=True, config=TrainingConfig,
                help="continue from the previous stage's weights with a fresh optimiser and schedule")
def warm_start_stage(cfg: TrainingConfig, ctx: StageContext) -> StageResult:
    return run_training(cfg, ctx, from_scratch=False)


@register_stage("contrastive", distributed=True, config=ContrastiveConfig,
                help="warm start with L1 + 255 x contrastive loss (frozen random Conv-Tanh-Conv features)")
def contrastive_stage(cfg: ContrastiveConfig, ctx: StageContext) -> StageResult:
    return run_training(cfg, ctx, from_scratch=False)


@register_stage("finetune", distributed=True, config=FinetuneConfig,
                help="fine-tune the previous stage with L2 loss, lr 1e-5 and large (640) patches")
def finetune_stage(cfg: FinetuneConfig, ctx: StageContext) -> StageResult:
    return run_training(cfg, ctx, from_scratch=False)


__all__ = ["TrainingConfig", "TrainFromScratchConfig", "ContrastiveConfig", "FinetuneConfig",
           "run_training", "write_stage_curve", "settings_from_config", "build_train_dataset", "make_val_fn",
           "stage_teacher"]
