"""Physical channel removal: prune an RLFN to given group widths and get a smaller RLFN back.

torch-pruning's dependency graph does the removal (every member of a coupled group loses the same
channels); the result is then rebuilt from its new spec and loaded *strictly*, which proves that the
pruned model is exactly the architecture its spec describes (so an artifact of it reloads alone).
The upsampler's output (the conv before PixelShuffle) never loses channels: it is never a root
and no group lists it as a producer.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Mapping, Sequence

import torch
from torch import nn

from workbench.core.errors import WorkbenchError
from workbench.models import build_model, group_widths
from workbench.models.rlfn import RLFN, RLFNSpec
from workbench.prune.groups import (ChannelGroup, build_graph, channel_groups, expand_widths,
                                    expected_groups)
from workbench.prune.importance import DEFAULT_CRITERION, group_scores, lowest

__all__ = ["ChannelGroup", "channel_groups", "group_importance", "prune_to_spec",
           "prune_to_widths", "drop_blocks", "rebuild"]


def group_importance(model: RLFN, name: str, *, criterion: str = DEFAULT_CRITERION) -> torch.Tensor:
    """One score per channel of group ``name`` (higher = more important)."""
    groups = expected_groups(model.spec)
    if name not in groups:
        raise WorkbenchError(f"no channel group {name!r}; known: {', '.join(groups)}")
    return group_scores(model, groups[name], criterion=criterion)


def rebuild(model: nn.Module, spec: RLFNSpec) -> RLFN:
    """A fresh RLFN built from ``spec`` holding ``model``'s weights (strict load), same device,
    dtype and train/eval mode. Raises WorkbenchError if the weights do not fit the spec."""
    param = next(model.parameters())
    fresh = build_model(spec).to(device=param.device, dtype=param.dtype)
    try:
        fresh.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise WorkbenchError(f"pruned weights do not match the pruned spec ({first[1] if len(first) > 1 else first[0]})") from None
    return fresh.train(model.training)


def prune_to_widths(model: RLFN, widths: Mapping[str, int], *, criterion: str = DEFAULT_CRITERION,
                    keep: Mapping[str, Sequence[int]] | None = None,
                    inplace: bool = False) -> RLFN:
    """Remove channels so every named group has the requested width; return the pruned model.

    ``widths`` maps group names (or ``trunk`` for every trunk group, or a shell pattern such as
    ``block*.esa.inner``) to widths no larger than the current ones. The channels removed are the
    lowest-scoring under ``criterion`` (see :mod:`workbench.prune.importance`), unless ``keep``
    names the exact channel indices to keep for a group (soft filter pruning passes its mask).
    The returned model's ``.spec`` is ``model.spec.with_widths(...)`` and it rebuilds exactly
    from it. ``model`` is left untouched unless ``inplace``.
    """
    import torch_pruning as tp

    spec = model.spec
    current = group_widths(spec)
    wanted = expand_widths(spec, widths)
    keep = dict(keep or {})
    for name, idxs in keep.items():
        if name not in current:
            raise WorkbenchError(f"keep: no channel group {name!r}")
        idxs = sorted({int(i) for i in idxs})
        if not idxs or idxs[0] < 0 or idxs[-1] >= current[name]:
            raise WorkbenchError(f"keep[{name}]: indices must lie in 0..{current[name] - 1}")
        if name in wanted and wanted[name] != len(idxs):
            raise WorkbenchError(f"keep[{name}] keeps {len(idxs)} channels but the width asked is "
                                 f"{wanted[name]}")
        wanted[name] = len(idxs)
        keep[name] = idxs
    for name, width in wanted.items():
        if width > current[name]:
            raise WorkbenchError(f"{name} has {current[name]} channels; cannot prune it to "
                                 f"{width} (pruning only removes channels)")
    target = spec.with_widths(wanted)
    work = model if inplace else copy.deepcopy(model)
    groups = expected_groups(spec)
    removals: dict[str, list[int]] = {}
    for name, width in wanted.items():
        if width == current[name]:
            continue
        if name in keep:
            kept = set(keep[name])
            removals[name] = [i for i in range(current[name]) if i not in kept]
        else:
            scores = group_scores(work, groups[name], criterion=criterion)
            removals[name] = lowest(scores, current[name] - width)
    if removals:
        graph = build_graph(work)
        for name, idxs in removals.items():
            root = work.get_submodule(groups[name].root)
            group = graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs=idxs)
            group.prune()
    rebuilt = rebuild(work, target)
    if inplace:
        work.spec = target
        return work
    return rebuilt


def drop_blocks(model: RLFN, num_blocks: int | None = None, *, keep: Sequence[int] | None = None,
                inplace: bool = False) -> RLFN:
    """Keep the first ``num_blocks`` blocks, or the blocks numbered ``keep`` (1-based, in order),
    through the family's ``drop_blocks`` (RLFN: the last kept block then feeds conv_2; SPAN: the
    last kept block feeds conv_2 and conv_cat's tapped slice).

    conv_2 keeps its weights, reading the last kept block's output channels in place of the
    dropped last block's (channel j for channel j). This changes what the network computes (the
    dropped blocks' work is lost and the blocks after a gap see features they were not trained
    on), so a fine-tune must follow; the weights of everything kept are inherited. Requires the
    kept blocks to chain (each one's input width is the previous kept one's output width, true
    for every released model); otherwise prune first.
    """
    from workbench.models.family import family_of

    spec = model.spec
    fam = family_of(model)
    if fam.drop_blocks is None:
        raise WorkbenchError(f"model family {fam.name!r} declares no repeatable blocks: its blocks "
                             f"cannot be dropped")
    n = spec.num_blocks
    if keep is None:
        if num_blocks is None or not 1 <= num_blocks <= n:
            raise WorkbenchError(f"cannot keep {num_blocks} blocks of a {n}-block model")
        keep = list(range(1, num_blocks + 1))
    keep = [int(k) for k in keep]
    if not keep or any(not 1 <= k <= n for k in keep) or sorted(set(keep)) != keep:
        raise WorkbenchError(f"blocks to keep must be increasing numbers in 1..{n}, got {keep}")
    if keep == list(range(1, n + 1)):
        return model if inplace else copy.deepcopy(model)
    return fam.drop_blocks(model, keep)


def prune_to_spec(model: RLFN, target: RLFNSpec, *, criterion: str = DEFAULT_CRITERION) -> RLFN:
    """Prune (a copy of) ``model`` to exactly ``target``'s widths, inheriting its weights.

    ``target`` must have the same scale and image channels, no wider groups, and at most as many
    blocks: fewer blocks keep the first ones (see :func:`drop_blocks`, which changes the function
    and needs a fine-tune), then every group is pruned by importance to the target's width.
    """
    spec = model.spec
    if (target.scale, target.in_channels, target.out_channels) != (spec.scale, spec.in_channels,
                                                                   spec.out_channels):
        raise WorkbenchError(f"target is x{target.scale} with {target.in_channels}->"
                             f"{target.out_channels} channels; the model is x{spec.scale} with "
                             f"{spec.in_channels}->{spec.out_channels}")
    if target.num_blocks > spec.num_blocks:
        raise WorkbenchError(f"target has {target.num_blocks} blocks; the model only "
                             f"{spec.num_blocks} (pruning cannot add blocks)")
    work = model
    if target.num_blocks < spec.num_blocks:
        work = drop_blocks(model, target.num_blocks)
    pruned = prune_to_widths(work, group_widths(target), criterion=criterion,
                             inplace=work is not model)
    if pruned.spec != target:  # pragma: no cover - guarded by with_widths + strict rebuild
        raise WorkbenchError(f"pruned spec {pruned.spec} differs from target {target}")
    return pruned
