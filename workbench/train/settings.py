"""How to train: the one source of the training defaults.

:class:`TrainSettings` is what :func:`workbench.train.loop.fit` takes. The recipe's training
stages (:class:`workbench.stages.train.TrainingConfig` and its subclasses) take their field
defaults from it and are turned into it field by field, so a default changed here changes there
and the two cannot drift. Only the standard library is imported: stage configs import this module
when the recipe loader registers them, without torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TrainSettings", "default_of"]


@dataclass
class TrainSettings:
    """How to train: optimiser, schedule, loss, batches and bookkeeping (see the module docstring)."""

    iterations: int
    batch_size: int = 64
    patch_size: int = 256
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    halve_every: int = 200_000
    gamma: float = 0.5
    losses: list[dict] = field(default_factory=lambda: [{"type": "l1", "weight": 1.0}])
    epoch_iterations: int | None = None
    checkpoint_every: int = 1000
    val_every: int = 0
    log_every: int = 50
    grad_clip: float | None = None
    num_workers: int = 0
    amp: str | None = None
    teacher: str | None = None
    ema: float | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the current run to be resumed."""
        keep = ("batch_size", "patch_size", "lr", "betas", "eps", "halve_every", "gamma", "losses",
                "epoch_iterations", "grad_clip", "amp")
        data = asdict(self)
        out = {k: data[k] for k in keep}
        if self.teacher is not None:  # absent otherwise, so checkpoints from before it still resume
            out["teacher"] = self.teacher
        if self.ema is not None:  # likewise
            out["ema"] = self.ema
        out["betas"] = list(out["betas"])
        return out


def default_of(cls: type, name: str, **metadata: Any) -> Any:
    """A dataclass ``field`` with the default of ``cls``'s field ``name`` (and ``metadata``): how
    another settings class takes its defaults from the one source instead of repeating them."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    if source.default_factory is not dataclasses.MISSING:
        return field(default_factory=source.default_factory, metadata=metadata)
    if source.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no default")
    return field(default=source.default, metadata=metadata)
