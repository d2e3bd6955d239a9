"""Helpers for stage functions: save the stage's artifact with its lineage, seed, find data.

Any stage (training, pruning, search) can use these so that every artifact a run writes records
its parent and hash, the seed, the recipe hash and the stage that produced it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from workbench.data.training import patch_size_problems  # noqa: F401  (stages import it from here)
from workbench.stages.registry import StageContext


def stage_seed(ctx: StageContext, salt: int = 0) -> int:
    """A seed for this stage: a function of the recipe seed and the stage's position only."""
    return (int(ctx.seed) * 1_000_003 + int(ctx.stage_index) * 10_007 + int(salt)) % (2 ** 31 - 1)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random (the engine does this before each stage)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


def is_main(ctx: StageContext) -> bool:
    return ctx.dist is None or getattr(ctx.dist, "is_main", True)


def save_stage_artifact(ctx: StageContext, model: nn.Module, *, parent: Any = None,
                        metrics: Mapping[str, Any] | None = None, config: Any = None,
                        path: Path | None = None, lineage: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` as this stage's artifact (``ctx.artifact_dir``) with full lineage.

    ``parent`` is the :class:`~workbench.models.artifacts.Artifact` the stage started from (its path and
    weights hash are recorded); ``config`` the stage's config dataclass (stored resolved);
    ``lineage`` extra lineage entries (e.g. the distillation teacher and its weights hash).
    Only rank 0 writes; other ranks get the path back without writing.
    """
    from workbench.models.artifacts import make_lineage, save_artifact
    from workbench.recipes.loader import to_plain

    target = Path(path) if path is not None else ctx.artifact_dir
    if not is_main(ctx):
        return target
    parent_ref = parent if parent is not None else (ctx.parent or ctx.model_ref)
    lineage = make_lineage(parent=parent_ref, seed=ctx.seed, stage=ctx.stage_id,
                           recipe_sha256=ctx.recipe_sha256, device=str(ctx.device),
                           stage_type=ctx.stage_type, stage_index=ctx.stage_index,
                           run_dir=str(ctx.run_dir), **dict(lineage or {}))
    cfg = {"stage": ctx.stage_type, "id": ctx.stage_id, **(to_plain(config) if config is not None else {})}
    core = model.module if hasattr(model, "module") else model
    return save_artifact(target, core, metrics=dict(metrics or {}), lineage=lineage, config=cfg)


def train_sources(ctx: StageContext, override: Sequence[Any] | None = None) -> list[Any]:
    """The training sources of a stage: its own ``data`` if given, else the recipe's."""
    if override:
        return list(override)
    recipe = ctx.recipe
    return list(recipe.data.train) if recipe is not None else []


def training_files(sources: Sequence[Any], *, scale: int, with_lr_only: bool = False):
    """HR files and (when every source has them) matching LR files of the training sources.

    With ``with_lr_only`` a third list says, per file, whether its source is ``as_lr`` (the
    image itself is an LR input; only teacher-based losses can train on it): 0 for a paired image,
    else the factor the image is shrunk by before use (the source's ``downscale``, 1 as it is).
    """
    from workbench.data.training import exclude_files, find_training_pairs, sample_images_dir
    from workbench.core.errors import WorkbenchError

    if not sources:
        raise WorkbenchError("no training data: set data.train in the recipe (or data in the stage)")
    hr_all: list[Path] = []
    lr_all: list[Path] | None = []
    as_lr: list[int] = []
    for source in sources:
        if source.layout == "samples":
            root, layout = (Path(source.root) if source.root else sample_images_dir()), "folder"
        else:
            root, layout = Path(source.root), source.layout
        hr, lr = find_training_pairs(root, layout=layout, scale=scale)
        if getattr(source, "exclude", None):
            hr, lr = exclude_files(hr, lr, source.exclude, root=root)
        if source.limit is not None:
            hr = hr[:source.limit]
            lr = lr[:source.limit] if lr is not None else None
        flag = bool(getattr(source, "as_lr", False))
        if flag:
            if not with_lr_only:
                raise WorkbenchError(f"{root}: as_lr images need a training stage with distill losses")
            lr = None  # the image itself is the LR input: no LR files to pair
        hr_all += hr
        as_lr += [int(getattr(source, "downscale", 1)) if flag else 0] * len(hr)
        if lr is None or source.bicubic_lr or lr_all is None:
            lr_all = None
        else:
            lr_all += lr
    if with_lr_only:
        return hr_all, lr_all, as_lr
    return hr_all, lr_all
