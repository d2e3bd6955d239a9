"""Soft filter pruning (He et al., 2018) over RLFN's coupled channel groups.

At every epoch end the lowest-norm channels of each targeted group are *zeroed* (every producing
conv's output filter and bias: the whole coupled group), so the group carries exactly its target
width of live channels. Training goes on with the zeroed filters in the model, so they can grow
back and be re-ranked at the next epoch end. When training ends, the zeroed channels are removed
physically (:func:`prune_to_widths` with the mask's kept indices).

Why the masked and the pruned model compute the same thing: a channel whose every producer has
zero weights and zero bias is exactly 0 everywhere. For a trunk group that includes the convs on
*both* sides of each residual add (conv_1 and c3_r, or c5/conv4 and the next block's c3_r) and
conv_2 with the long skip, so each sum is 0 + 0; ESA's ``x * sigmoid(.)`` is 0 when x is 0;
LeakyReLU(0), max-pool of zeros and bilinear interpolation of zeros are 0. A consumer reading an
all-zero channel gets nothing from it, so dropping the channel and the consumer's input slice
changes the output only by floating-point summation order (well under 1e-4 on the 0..255 scale;
a test checks it). Zeroing only some producers of a residual group would NOT be equivalent.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from workbench.core.errors import WorkbenchError
from workbench.models.rlfn import RLFN, group_widths
from workbench.prune.groups import ChannelGroup, expand_widths, expected_groups
from workbench.prune.importance import get_importance, group_scores, lowest
from workbench.prune.surgery import prune_to_widths
from workbench.train.loop import Callback, TrainState


def _producer_params(model: nn.Module, group: ChannelGroup) -> list[nn.Parameter]:
    params = []
    for name in group.producers:
        conv = model.get_submodule(name)
        params.append(conv.weight)
        if conv.bias is not None:
            params.append(conv.bias)
    return params


@torch.no_grad()
def zero_channels(model: nn.Module, group: ChannelGroup, channels: list[int], *,
                  optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero ``channels`` of ``group`` in every producer (weights and biases). With ``optimizer``,
    also zero its per-parameter state rows for them (Adam's moments), so a zeroed filter restarts
    from its gradient alone rather than from momentum of the filter it was."""
    if not channels:
        return
    for param in _producer_params(model, group):
        idx = torch.as_tensor(channels, device=param.device)
        param.index_fill_(0, idx, 0.0)
        if optimizer is not None:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.index_fill_(0, idx, 0.0)


class SoftFilterPruning(Callback):
    """The SFP training callback: re-rank and zero each targeted group at every epoch end.

    ``targets`` maps group names, ``trunk`` or shell patterns to target widths (resolved against
    the model's spec). After :func:`workbench.train.loop.fit` returns, call :meth:`finalize` to get
    the physically pruned model. The mask (kept channel indices per group) is part of the
    callback's state, so it is saved with training checkpoints and resumes exactly.
    """

    def __init__(self, model: RLFN, targets: Mapping[str, int], *, criterion: str = "l2",
                 reset_moments: bool = True) -> None:
        get_importance(criterion)  # fail early on an unknown name
        self.spec = model.spec
        self.targets = expand_widths(self.spec, targets)
        current = group_widths(self.spec)
        for name, width in self.targets.items():
            if width > current[name]:
                raise WorkbenchError(f"sfp target {name}={width} exceeds its width {current[name]}")
        self.targets = {n: w for n, w in self.targets.items() if w < current[n]}
        self.groups = expected_groups(self.spec)
        self.criterion = criterion
        self.reset_moments = reset_moments
        self.keep: dict[str, list[int]] = {}
        self.history: list[dict[str, Any]] = []
        self._stale = True  # weights changed since the last mask (so finalize must re-mask)

    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
              *, epoch: int | None = None) -> dict[str, list[int]]:
        """Re-rank every targeted group and zero its lowest channels; returns the kept indices.

        Returns how many channels changed between the previous mask and this one in
        ``self.history`` (a recovered filter that outgrew a live one swaps in)."""
        changed = {}
        for name, width in self.targets.items():
            group = self.groups[name]
            scores = group_scores(model, group, criterion=self.criterion)
            drop = lowest(scores, group.width - width)
            keep = [i for i in range(group.width) if i not in set(drop)]
            zero_channels(model, group, drop, optimizer=optimizer if self.reset_moments else None)
            before = set(self.keep.get(name, keep))
            changed[name] = len(set(keep) - before)
            self.keep[name] = keep
        self.history.append({"epoch": epoch, "swapped": sum(changed.values())})
        self._stale = False
        return dict(self.keep)

    def on_step_end(self, state: TrainState) -> None:
        self._stale = True

    def on_epoch_end(self, state: TrainState) -> None:
        self.apply(state.model, state.optimizer, epoch=state.epoch)

    def finalize(self, model: RLFN) -> RLFN:
        """Apply the mask one last time (re-ranked, unless no step ran since the last mask) and
        remove the zeroed channels physically.

        Returns a new, smaller model whose output equals the masked ``model``'s (which is left
        masked in place)."""
        if self._stale or not self.keep:
            self.apply(model, None, epoch=None)
        return prune_to_widths(model, self.targets, keep=self.keep)

    def state_dict(self) -> dict:
        return {"keep": {k: list(v) for k, v in self.keep.items()},
                "history": list(self.history), "stale": self._stale}

    def load_state_dict(self, d: dict) -> None:
        self.keep = {k: [int(i) for i in v] for k, v in d.get("keep", {}).items()}
        self.history = list(d.get("history", []))
        self._stale = bool(d.get("stale", True))
