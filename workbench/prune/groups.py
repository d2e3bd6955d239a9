"""Coupled channel groups of an RLFN: our readable names, their member convolutions, and the
torch-pruning dependency graph that confirms them.

A *channel group* is a set of channels that must be removed together: every convolution that
produces them (its output filters) and every convolution that reads them (its input slices). A
residual add or ESA's sigmoid multiply couples the producers on both sides. The names are the ones
:func:`workbench.models.rlfn.group_widths` uses (``trunk.0``, ``block2.mid1``,
``block3.esa.inner`` ...), so a width change maps straight onto ``spec.with_widths``.

The member lists are derived from the spec, then checked against the groups torch-pruning's
:class:`DependencyGraph` traces from a real forward pass (:func:`verify_groups`): if the model code
ever changes its wiring, the check fails loudly instead of pruning the wrong channels.

Note on torch-pruning: the upsampler's conv (before PixelShuffle) must not be passed to
``build_dependency(ignored_layers=...)`` — that removes it from tracing, so its *input* channels
are not pruned with ``trunk.0`` and the model breaks. It is excluded as a *root* instead
(``get_all_groups(ignored_layers=...)``), and no group here ever lists it as a producer.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models.rlfn import RLFN, RLFNSpec, group_widths

# Smallest input that the ESA branch accepts is 15x15; the graph trace uses this LR size.
TRACE_SIZE = 16


@dataclass(frozen=True)
class ChannelGroup:
    """One coupled channel group.

    ``producers`` are the convs whose output filters are the group's channels (pruning removes
    their filters and biases); ``consumers`` read the channels (pruning removes input slices).
    ``root`` is the producer that torch-pruning is asked to prune (the rest follows by the graph).
    """

    name: str
    width: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]

    @property
    def root(self) -> str:
        return self.producers[0]

    @property
    def kind(self) -> str:
        """'trunk', 'mid1', 'mid2', 'esa.reduce', 'esa.inner' or 'esa.fuse'."""
        return "trunk" if self.name.startswith("trunk.") else self.name.partition(".")[2]

    @property
    def block(self) -> int:
        """Block index (1-based) the group belongs to; 0 for the stem group ``trunk.0``."""
        if self.name.startswith("trunk."):
            return int(self.name.split(".")[1])
        return int(self.name.partition(".")[0][len("block"):])

    def members(self) -> list[tuple[str, str]]:
        """(conv name, 'out' | 'in') for every member, producers first."""
        return [(p, "out") for p in self.producers] + [(c, "in") for c in self.consumers]


def expected_groups(spec: RLFNSpec) -> dict[str, ChannelGroup]:
    """The groups an RLFN of this spec has, in network order, with their member convs.

    The stem group ``trunk.0`` is conv_1's output, which block 1 adds back after c3_r and which
    conv_2's output is added to before the upsampler. Each block's 1x1 c5 starts a new group
    ``trunk.<i>``: its output is multiplied by ESA's mask (so conv4 produces it too), feeds ESA's
    conv1 and the next block (whose c3_r produces it again for the residual) or conv_2.
    """
    n = spec.num_blocks
    widths = group_widths(spec)
    out: dict[str, ChannelGroup] = {}

    def add(name: str, producers: Iterable[str], consumers: Iterable[str]) -> None:
        out[name] = ChannelGroup(name, widths[name], tuple(producers), tuple(consumers))

    add("trunk.0", ["conv_1", "block_1.c3_r", "conv_2"],
        ["block_1.c1_r", "block_1.c5", "upsampler.0"])
    for i in range(1, n + 1):
        b = f"block_{i}."
        add(f"block{i}.mid1", [b + "c1_r"], [b + "c2_r"])
        add(f"block{i}.mid2", [b + "c2_r"], [b + "c3_r"])
        add(f"block{i}.esa.reduce", [b + "esa.conv1"], [b + "esa.conv_f", b + "esa.conv2"])
        add(f"block{i}.esa.inner", [b + "esa.conv2"], [b + "esa.conv3"])
        add(f"block{i}.esa.fuse", [b + "esa.conv_f", b + "esa.conv3"], [b + "esa.conv4"])
        producers = [b + "c5", b + "esa.conv4"]
        consumers = [b + "esa.conv1"]
        if i < n:
            nb = f"block_{i + 1}."
            producers.append(nb + "c3_r")
            consumers += [nb + "c1_r", nb + "c5"]
        else:
            consumers.append("conv_2")
        add(f"trunk.{i}", producers, consumers)
    # network order as in group_widths
    return {name: out[name] for name in widths}


def example_input(model: nn.Module, *, size: int = TRACE_SIZE) -> torch.Tensor:
    """A small LR input on the model's device and dtype, for tracing the graph."""
    param = next(model.parameters())
    return torch.rand(1, model.spec.in_channels, size, size, device=param.device,
                      dtype=param.dtype) * 255


def build_graph(model: RLFN):
    """torch-pruning's DependencyGraph of ``model`` (traced with autograd on, as it requires)."""
    import torch_pruning as tp

    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model),
                                                     verbose=False)


def _tp_member_sets(model: RLFN, graph) -> list[frozenset[tuple[str, str]]]:
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    sets = []
    for group in graph.get_all_groups(ignored_layers=[model.upsampler[0]],
                                      root_module_types=(nn.Conv2d,)):
        members = set()
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.Conv2d):
                continue
            handler = item.dep.handler
            if handler == tp.prune_conv_out_channels:
                members.add((names[module], "out"))
            elif handler == tp.prune_conv_in_channels:
                members.add((names[module], "in"))
        sets.append(frozenset(members))
    return sets


def verify_groups(model: RLFN, graph=None) -> dict[str, ChannelGroup]:
    """Check that torch-pruning's grouping of ``model`` equals the spec's groups; return them.

    Raises WorkbenchError naming the first group that differs (a model whose wiring no longer
    matches its spec must not be pruned).
    """
    expected = expected_groups(model.spec)
    graph = graph if graph is not None else build_graph(model)
    traced = _tp_member_sets(model, graph)
    wanted = {frozenset(g.members()): name for name, g in expected.items()}
    unmatched = [sorted(s) for s in traced if s not in wanted]
    if unmatched or len(traced) != len(expected):
        missing = [name for members, name in wanted.items() if members not in traced]
        raise WorkbenchError(
            f"torch-pruning's channel groups do not match the model spec: groups {missing} not "
            f"found; traced groups not in the spec: {unmatched[:2]}")
    return expected


def channel_groups(model: RLFN, *, verify: bool = True) -> dict[str, ChannelGroup]:
    """Readable name -> :class:`ChannelGroup` for every prunable group of ``model``.

    With ``verify`` (the default) the grouping is confirmed against torch-pruning's dependency
    graph traced from ``model`` (about 0.1 s); without it, the spec alone decides.
    """
    if verify:
        return verify_groups(model)
    return expected_groups(model.spec)


def expand_widths(spec: RLFNSpec, widths: Mapping[str, int]) -> dict[str, int]:
    """Resolve shorthands in a width request to concrete group names.

    ``trunk`` means every ``trunk.*`` group; a shell-style pattern (``block*.esa.inner``) means
    every group it matches; exact names pass through. Later entries override earlier ones.
    Raises WorkbenchError for a name that matches nothing or a width that is not a positive int.
    """
    known = list(group_widths(spec))
    out: dict[str, int] = {}
    for key, width in widths.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise WorkbenchError(f"width for {key!r} must be a positive integer, got {width!r}")
        if key == "trunk":
            names = [n for n in known if n.startswith("trunk.")]
        elif key in known:
            names = [key]
        else:
            names = [n for n in known if fnmatch.fnmatchcase(n, key)]
        if not names:
            close = [n for n in known if key.split(".")[0] in n][:4] or known[:4]
            raise WorkbenchError(f"no channel group matches {key!r}; e.g. {', '.join(close)} "
                                 f"(see 'workbench prune groups')")
        for name in names:
            out[name] = width
    return out


def select_groups(spec: RLFNSpec, patterns: Iterable[str] | None) -> list[str]:
    """Group names matching any of ``patterns`` (shell-style; None or empty = all), network order."""
    known = list(group_widths(spec))
    patterns = list(patterns or [])
    if not patterns:
        return known
    chosen = [n for n in known if any(fnmatch.fnmatchcase(n, p) or n == p for p in patterns)]
    if not chosen:
        raise WorkbenchError(f"--groups {' '.join(patterns)} matches no channel group; names look "
                             f"like trunk.0, block1.mid1, block2.esa.inner")
    return chosen
