"""Channel importance criteria: one score per channel of a coupled group (higher = keep).

A criterion is a plain function ``fn(model, group) -> Tensor[width]`` registered by name, so the
sensitivity analysis, soft filter pruning and the search can all be told ``--criterion l2`` (or a
new criterion) without knowing how it is computed. Scores are computed on the float64 CPU copy of
the weights so that ties and rankings do not depend on the device.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from workbench.core.errors import WorkbenchError
from workbench.prune.groups import ChannelGroup

ImportanceFn = Callable[[nn.Module, ChannelGroup], torch.Tensor]
IMPORTANCE: dict[str, ImportanceFn] = {}
#: The criterion every pruning entry point uses unless told otherwise (API, CLI, stages, search):
#: ``output``, the one that works on trained SR weights (with ``l1``, rlfn_s_x4 pruned to trunk 46
#: falls to 8.9 dB on Set5: a low-norm stem filter can carry the image through the long skip).
DEFAULT_CRITERION = "output"


def register_importance(name: str) -> Callable[[ImportanceFn], ImportanceFn]:
    """Register ``fn(model, group) -> Tensor[group.width]`` as criterion ``name``."""
    def decorate(fn: ImportanceFn) -> ImportanceFn:
        if name in IMPORTANCE and IMPORTANCE[name] is not fn:
            raise ValueError(f"importance criterion {name!r} is registered twice")
        IMPORTANCE[name] = fn
        return fn

    return decorate


def get_importance(name: str) -> ImportanceFn:
    try:
        return IMPORTANCE[name]
    except KeyError:
        raise WorkbenchError(f"unknown importance criterion {name!r}; known: "
                             f"{', '.join(sorted(IMPORTANCE))}") from None


def _conv(model: nn.Module, name: str) -> nn.Conv2d:
    return model.get_submodule(name)


def _out_filters(model: nn.Module, group: ChannelGroup) -> list[torch.Tensor]:
    """Each producer's weight as [width, fan_in] (float64, CPU)."""
    mats = []
    for name in group.producers:
        w = _conv(model, name).weight.detach().to("cpu", torch.float64)
        mats.append(w.reshape(w.shape[0], -1))
    return mats


def _in_slices(model: nn.Module, group: ChannelGroup) -> list[torch.Tensor]:
    """Each consumer's weight as [width, fan_out * k * k] (float64, CPU); a consumer that reads
    the group through a concatenation contributes the input slice(s) at the group's indices."""
    mats = []
    for name in group.consumers:
        w = _conv(model, name).weight.detach().to("cpu", torch.float64)
        rows = w.transpose(0, 1).reshape(w.shape[1], -1)
        idxs = group.input_indices(name)
        for start in range(0, len(idxs), group.width):
            mats.append(rows[idxs[start:start + group.width]])
    return mats


@register_importance("l1")
def l1_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Sum over the producing convs of each output filter's L1 norm (Li et al., 2017)."""
    return sum(m.abs().sum(1) for m in _out_filters(model, group))


@register_importance("l2")
def l2_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """L2 norm of each channel's output filters, all producers together (soft filter pruning)."""
    return torch.sqrt(sum(m.pow(2).sum(1) for m in _out_filters(model, group)))


@register_importance("l1_full")
def l1_full_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """L1 over the whole group: producers' output filters and consumers' input slices."""
    return sum(m.abs().sum(1) for m in _out_filters(model, group) + _in_slices(model, group))


def group_scores(model: nn.Module, group: ChannelGroup, *,
                 criterion: str = DEFAULT_CRITERION) -> torch.Tensor:
    """Scores of ``group``'s channels under ``criterion`` (float64, CPU, one per channel)."""
    scores = get_importance(criterion)(model, group)
    if scores.shape != (group.width,):
        raise ValueError(f"criterion {criterion!r} returned shape {tuple(scores.shape)} for "
                         f"{group.name} (width {group.width})")
    return scores


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` lowest scores, ascending by index (stable on ties: lower index
    goes first, so results are deterministic)."""
    if count <= 0:
        return []
    order = torch.argsort(scores, stable=True)
    return sorted(int(i) for i in order[:count])


# -- data-driven: what removing the channel does to the output ---------------------------------

_CALIBRATION: dict[tuple[int, int, int], torch.Tensor] = {}


def calibration_batch(scale: int, *, size: int = 32, channels: int = 3) -> torch.Tensor:
    """Centre crops (size x size) of the embedded Set5 LR images at ``scale``: a small, fixed,
    real-image batch (N, 3, size, size) on the 0..255 scale for data-driven criteria."""
    key = (scale, size, channels)
    if key not in _CALIBRATION:
        import numpy as np

        from workbench.data.benchmark import load_set

        crops = []
        for pair in load_set("Set5", scale):
            lr = np.asarray(pair.lr)
            top, left = max(0, (lr.shape[0] - size) // 2), max(0, (lr.shape[1] - size) // 2)
            crop = lr[top:top + size, left:left + size]
            if crop.shape[:2] == (size, size):
                crops.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))))
        _CALIBRATION[key] = torch.stack(crops).float()[:, :channels]
    return _CALIBRATION[key]


@register_importance("output")
@torch.no_grad()
def output_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Mean squared change of the model's output on real image crops when the channel is
    silenced (every producing filter and bias zeroed): the channel's actual contribution.

    Filter norms can badly misjudge RLFN's stem group ``trunk.0``: its inputs are on the 0..255
    scale and the long skip carries conv_1's output straight to the upsampler, so a low-norm
    conv_1 filter can carry the image itself (on rlfn_s_x4, removing the two lowest-L1 channels
    of trunk.0 costs about 21 dB). Costs one partial forward pass per channel (from the group's
    first producer on) on a 5x3x32x32 batch.
    """
    param = next(model.parameters())
    from workbench.models.family import model_input

    x = calibration_batch(model.spec.scale, channels=model.spec.in_channels).to(param.device,
                                                                                 param.dtype)
    x = model_input(model, x)  # the family's input range
    from workbench.models.rlfn import RLFN
    from workbench.prune.sensitivity import activation_at, forward_from, start_point

    # RLFN: only the part from the group's first producer is rerun; other families: all of it
    point = start_point(group.name) if isinstance(model, RLFN) else ("input", 0)
    if point[0] == "input":
        def run() -> torch.Tensor:
            return model(x)
    else:
        cached, feature = activation_at(model, x, point)

        def run() -> torch.Tensor:
            return forward_from(model, point, cached, feature)
    base = run()
    convs = [model.get_submodule(name) for name in group.producers]
    scores = torch.zeros(group.width, dtype=torch.float64)
    for c in range(group.width):
        saved = [(conv.weight[c].clone(), None if conv.bias is None else conv.bias[c].clone())
                 for conv in convs]
        for conv in convs:
            conv.weight[c] = 0
            if conv.bias is not None:
                conv.bias[c] = 0
        scores[c] = float((run() - base).double().pow(2).mean())
        for conv, (w, b) in zip(convs, saved):
            conv.weight[c] = w
            if b is not None:
                conv.bias[c] = b
    return scores
