"""Registered recipe stages: the `stage:` value in YAML names one of these.

A stage is a frozen config dataclass plus a plain function ``fn(cfg, ctx) -> StageResult``. The
strict recipe loader turns a YAML mapping into the config dataclass, using the field's type hint
and its ``metadata``:

- ``help``: one line for ``workbench validate --explain`` and error messages;
- ``min`` / ``max`` (inclusive), ``gt`` / ``lt`` (exclusive): numeric range;
- ``choices``: allowed values.

Registration is explicit (a decorator in the stage's own module; the module is imported by
:mod:`workbench.stages.builtin`), never by scanning file names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from workbench.models.artifacts import Artifact


@dataclass
class StageContext:
    """What a stage gets from the engine besides its own config."""

    run_dir: Path                 # the run folder (holds recipe.yaml and one folder per stage)
    stage_dir: Path               # this stage's folder: write outputs here
    stage_id: str
    stage_index: int
    parent: Path | None           # the previous stage's artifact (or the recipe's model reference)
    model_ref: str                # the recipe's starting model (name, artifact or .pth)
    scale: int
    seed: int
    device: "torch.device"
    smoke: bool = False
    data: Mapping[str, Any] = field(default_factory=dict)   # the recipe's resolved data section
    recipe_sha256: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)    # engine-provided services (writer, ...)
    recipe: Any = None            # the typed RecipeConfig (workbench.recipes.schema) of the run
    writer: Any = None            # TensorBoard SummaryWriter for this stage (None on ranks > 0)
    progress: bool = True         # show progress bars
    dist: Any = None              # workbench.train.distributed.DistInfo of this process
    stage_type: str = ""          # the registered type name of this stage

    @property
    def artifact_dir(self) -> Path:
        """Where the stage's output artifact goes."""
        return self.stage_dir / "artifact"

    @property
    def checkpoint_dir(self) -> Path:
        """Where periodic (resumable) training checkpoints go."""
        return self.stage_dir / "checkpoints"

    def load_parent(self) -> "Artifact":
        from workbench.models.artifacts import load_model

        return load_model(self.parent if self.parent is not None else self.model_ref)


@dataclass
class StageResult:
    artifact: Path | None                      # None: the stage passes its parent on unchanged
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""                          # one or two lines shown after the stage


@dataclass(frozen=True)
class StageType:
    name: str
    config: type
    fn: Callable[[Any, StageContext], StageResult]
    help: str
    distributed: bool = False   # runs on every process under torchrun (it trains through fit)


STAGES: dict[str, StageType] = {}


def register_stage(name: str, *, config: type, help: str, distributed: bool = False) -> Callable:
    """Register ``fn(cfg, ctx) -> StageResult`` under ``name`` with its config dataclass.

    ``distributed``: under ``torchrun`` the stage runs on every process (a training stage whose
    ``fit`` wraps the model in DistributedDataParallel); otherwise it runs on rank 0 while the
    other processes wait. A training stage left undeclared would deadlock under torchrun.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"stage {name!r}: config must be a dataclass, got {config!r}")

    def decorate(fn: Callable[[Any, StageContext], StageResult]) -> Callable:
        if name in STAGES and STAGES[name].fn is not fn:
            raise ValueError(f"stage {name!r} is registered twice")
        STAGES[name] = StageType(name=name, config=config, fn=fn, help=help, distributed=distributed)
        return fn

    return decorate


def get_stage(name: str) -> StageType:
    from workbench.stages import builtin as stages  # noqa: F401  (imports register every stage)

    return STAGES[name]


def all_stages() -> dict[str, StageType]:
    from workbench.stages import builtin as stages  # noqa: F401

    return dict(STAGES)
