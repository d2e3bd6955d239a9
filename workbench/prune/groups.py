"""Coupled channel groups of any family's model, derived from torch-pruning's dependency graph.

:func:`derive_groups` traces the model once and reads every coupled group off the graph: its
producing convs (output filters), its consuming convs (input slices, with the exact input indices
where a concatenation puts the group at an offset, e.g. SPAN's conv_cat) and a readable name from the
family (``Family.group_name``) or else the module path of the group's first producer. A conv whose
output feeds a PixelShuffle (or is the model's output) is *protected*: never a root, so its outputs
stay whole, while its inputs are pruned with their group. Residual adds and multiplicative
couplings (ESA's sigmoid mask, SPAN's attention) come out of the graph as shared groups.

For RLFN the hand-written table (:func:`rlfn_reference_groups`) is kept as an oracle: the tests
require the derivation to reproduce it exactly, and ``channel_groups(model, verify=True)`` checks a
model's traced grouping against the groups of a model freshly built from its spec.

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
import functools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from workbench.core.errors import WorkbenchError
from workbench.models import build_model, group_widths
from workbench.models.rlfn import RLFN, RLFNSpec

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
    #: (consumer, input channel indices) for consumers that read the group at other input indices
    #: than 0..width-1 (a concatenation); k*width indices when it reads the group k times, channel
    #: j at positions j, width + j, ... Empty when every consumer reads it at 0..width-1.
    slices: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def root(self) -> str:
        return self.producers[0]

    @property
    def kind(self) -> str:
        """RLFN: 'trunk', 'mid1', 'mid2', 'esa.reduce', 'esa.inner' or 'esa.fuse'; otherwise the
        name after 'block<i>.' (or the whole name)."""
        if self.name.startswith("trunk."):
            return "trunk"
        head, _, rest = self.name.partition(".")
        return rest if rest and head.startswith("block") and head[5:].isdigit() else self.name

    @property
    def block(self) -> int:
        """Block index (1-based) the group belongs to; 0 for the stem group ``trunk.0`` and for
        groups outside numbered blocks."""
        if self.name.startswith("trunk.") and self.name[6:].isdigit():
            return int(self.name[6:])
        head = self.name.partition(".")[0]
        return int(head[5:]) if head.startswith("block") and head[5:].isdigit() else 0

    def input_indices(self, consumer: str) -> list[int]:
        """The input channel indices of ``consumer`` that carry this group (see ``slices``)."""
        for name, idxs in self.slices:
            if name == consumer:
                return list(idxs)
        return list(range(self.width))

    def members(self) -> list[tuple[str, str]]:
        """(conv name, 'out' | 'in') for every member, producers first."""
        return [(p, "out") for p in self.producers] + [(c, "in") for c in self.consumers]


def rlfn_reference_groups(spec: RLFNSpec) -> dict[str, ChannelGroup]:
    """The hand-written group table of an RLFN of this spec (the derivation's test oracle).

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


def _trace_size(model: nn.Module) -> int:
    from workbench.models.family import family_of

    try:
        return max(TRACE_SIZE, family_of(model).min_lr_size)
    except WorkbenchError:
        return TRACE_SIZE


def example_input(model: nn.Module, *, size: int | None = None) -> torch.Tensor:
    """A small LR input on the model's device and dtype, for tracing the graph."""
    param = next(model.parameters())
    spec = getattr(model, "spec", None)
    channels = getattr(spec, "in_channels", None) or _first_conv(model).in_channels
    return torch.rand(1, channels, size or _trace_size(model), size or _trace_size(model),
                      device=param.device, dtype=param.dtype) * 255


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise WorkbenchError(f"{type(model).__name__} has no Conv2d: nothing to prune")


def protected_convs(model: nn.Module, x: torch.Tensor | None = None) -> list[str]:
    """Convs whose outputs must keep every channel: those feeding an ``nn.PixelShuffle`` (it needs
    all out*s^2 channels) and those whose output is the model's output. Found by one forward pass
    with hooks (a functional ``F.pixel_shuffle`` is not seen: use the module)."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []
    protected: list[str] = []

    def conv_hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        produced[id(out)] = names[mod]
        keep_alive.append(out)

    def shuffle_hook(_mod: nn.Module, inp: tuple) -> None:
        name = produced.get(id(inp[0]))
        if name is not None and name not in protected:
            protected.append(name)

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.PixelShuffle):
            handles.append(mod.register_forward_pre_hook(shuffle_hook))
    try:
        with torch.no_grad():
            out = model(example_input(model) if x is None else x)
    finally:
        for h in handles:
            h.remove()
    name = produced.get(id(out)) if isinstance(out, torch.Tensor) else None
    if name is not None and name not in protected:
        protected.append(name)
    return protected


def derive_groups(model: nn.Module, graph=None) -> dict[str, ChannelGroup]:
    """Every prunable coupled channel group of ``model``, read off torch-pruning's graph.

    Names come from the model's family (``Family.group_name(first producer path)``), falling back
    to the first producer's module path; the order is the family's ``group_widths`` order where
    every name is in it, else network (module registration) order. Groups that include a protected
    conv's outputs (see :func:`protected_convs`), groups no conv reads (channels that reach the
    model's output through elementwise ops) and groups a channel split divides among consumers
    (its sizes are written in the forward) are left out: they cannot shrink.
    """
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        protected = protected_convs(model)
        graph = graph if graph is not None else build_graph(model)
        names = {module: name for name, module in model.named_modules()}
        order = {name: i for i, name in enumerate(names.values())}
        namer = None
        spec = getattr(model, "spec", None)
        try:
            from workbench.models.family import family_of

            namer = family_of(model).group_name
        except WorkbenchError:
            pass
        ignored = [model.get_submodule(n) for n in protected]
        found: list[ChannelGroup] = []
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d,)):
            producers: dict[str, int] = {}
            consumers: dict[str, list[int]] = {}
            for item in group.items:
                module = item.dep.target.module
                if not isinstance(module, nn.Conv2d):
                    continue
                handler = item.dep.handler
                idxs = [int(i) for i in item.idxs]
                if handler == tp.prune_conv_out_channels:
                    producers[names[module]] = module.out_channels
                elif handler == tp.prune_conv_in_channels:
                    consumers.setdefault(names[module], []).extend(idxs)
            if not producers or any(p in protected for p in producers):
                continue
            if not consumers:  # no conv reads them: they reach the output (e.g. a scaled tail)
                continue
            width = producers[min(producers, key=order.__getitem__)]
            if any(len(v) % width for v in consumers.values()):
                # a channel split (torch.split / slicing) hands parts of the group to different
                # consumers; the split sizes live in the forward code, so the group cannot shrink
                continue
            prod = tuple(sorted(producers, key=order.__getitem__))
            width = producers[prod[0]]
            cons = tuple(sorted(consumers, key=order.__getitem__))
            slices = tuple((c, tuple(consumers[c])) for c in cons
                           if consumers[c] != list(range(width)))
            name = (namer(prod[0]) if namer else None) or prod[0]
            found.append(ChannelGroup(name, width, prod, cons, slices))
    finally:
        model.train(was_training)
    found.sort(key=lambda g: order[g.root])
    out = {g.name: g for g in found}
    if len(out) != len(found):
        dup = sorted({g.name for g in found if sum(h.name == g.name for h in found) > 1})
        raise WorkbenchError(f"two channel groups got the same name {dup}: the family's "
                             "group_name is ambiguous")
    # a wrapped module's spec takes its names from this very derivation: nothing to reorder by
    if spec is not None and hasattr(spec, "to_dict") and not getattr(spec, "GRAPH_NAMED", False):
        try:
            known = list(group_widths(spec))
        except (AttributeError, KeyError, TypeError, ValueError):
            known = []
        if set(known) == set(out):
            out = {n: out[n] for n in known}
    return out


@functools.lru_cache(maxsize=64)
def _spec_groups(spec: Any) -> tuple[tuple[str, ChannelGroup], ...]:
    return tuple(derive_groups(build_model(spec)).items())


def expected_groups(spec: Any) -> dict[str, ChannelGroup]:
    """The groups a model built from ``spec`` has (derived from the graph of a freshly built model
    of its family; cached per spec, so callers that only hold a spec pay the trace once)."""
    return dict(_spec_groups(spec))


def build_graph(model: nn.Module):
    """torch-pruning's DependencyGraph of ``model`` (traced with autograd on, as it requires)."""
    import torch_pruning as tp

    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model),
                                                     verbose=False)


def verify_groups(model: nn.Module, graph=None) -> dict[str, ChannelGroup]:
    """Derive ``model``'s groups from its graph and check them against the groups of a model
    freshly built from its spec; return them.

    Raises WorkbenchError naming the groups that differ (a model whose wiring no longer matches its
    spec must not be pruned: its pruned form would not rebuild from the spec).
    """
    traced = derive_groups(model, graph)
    spec = getattr(model, "spec", None)
    if spec is None:
        return traced
    expected = expected_groups(spec)
    if traced != expected:
        missing = [n for n, g in expected.items() if traced.get(n) != g]
        extra = [n for n, g in traced.items() if expected.get(n) != g]
        raise WorkbenchError(
            f"torch-pruning's channel groups do not match the model spec: groups {missing} not "
            f"found; traced groups not in the spec: {extra[:2]}")
    return traced


def channel_groups(model: nn.Module, *, verify: bool = True) -> dict[str, ChannelGroup]:
    """Readable name -> :class:`ChannelGroup` for every prunable group of ``model``.

    With ``verify`` (the default) the grouping traced from ``model`` itself (about 0.1 s for a tiny
    model) must equal that of its spec; without it, the spec alone decides.
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
