"""Your own SR network as a family: wrap any ``nn.Module`` whose convs the dependency graph groups.

Usage (Python)::

    from workbench.models.generic import module_family
    from workbench.models import register_family

    register_family(module_family("my_edsr", build=lambda cfg: MyEDSR(**cfg),
                                  presets={"my_edsr_small": {"channels": 16, "blocks": 2}},
                                  scales=(4,)))
    # now "my_edsr_small_x4" is a model name for every command; pruned artifacts reload alone

``build(config)`` must return the model for a JSON-able ``config`` dict; ``config["scale"]`` is set
from the model name. The spec (:class:`ModuleSpec`) is that config plus the width of every channel
group that pruning changed, so a pruned model is rebuilt by building the original and removing
channels from the groups to those widths (with torch-pruning, then loading the saved weights
strictly). Groups, their names (the first producing conv's module path) and the protected convs
(feeding a PixelShuffle or producing the output) come from :func:`workbench.prune.groups.derive_groups`.

For the CLI, an installed package declares the family in the ``workbench.families`` entry-point
group (the entry point names a Family, or a function returning one); nothing a recipe names is
ever imported.

Deploy: ``fused`` and ``bf16`` use the generic forms of :mod:`workbench.measure.deploy` (torch.fx conv +
activation fusion; a bf16 body with the first and the protected convs in fp32). The width search
works on the derived groups (``--space 'body.*.conv1=4:8:2'``).

Limits: channel splits with sizes fixed in the forward (``torch.split(x, (4, 12))``) cannot shrink
consistently; a wrapped module declares no repeatable blocks (no ``blocks`` search dimension, no
``keep_blocks``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from workbench.models.family import Family, ModelPreset, strip_module_prefix, unwrap_wrappers


@dataclass(frozen=True)
class ModuleSpec:
    """A wrapped module's spec: its family, build config (canonical JSON) and pruned widths."""

    family: str
    config: str
    widths: tuple[tuple[str, int], ...] = ()

    #: group names and order come from the graph derivation itself (see derive_groups)
    GRAPH_NAMED = True

    @classmethod
    def make(cls, family: str, config: Mapping[str, Any],
             widths: Mapping[str, int] | None = None) -> "ModuleSpec":
        return cls(family, json.dumps(dict(config), sort_keys=True),
                   tuple(sorted((str(k), int(v)) for k, v in (widths or {}).items())))

    @property
    def config_dict(self) -> dict[str, Any]:
        return json.loads(self.config)

    @property
    def scale(self) -> int:
        return int(self.config_dict.get("scale", 1))

    @property
    def in_channels(self) -> int:
        return int(self.config_dict.get("in_channels", 3))

    @property
    def num_blocks(self) -> int:
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"arch": "module", "family": self.family, "config": self.config_dict,
                "widths": dict(self.widths)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModuleSpec":
        data = dict(data)
        if data.pop("arch", "module") != "module":
            raise ValueError("not a wrapped-module architecture record")
        unknown = set(data) - {"family", "config", "widths"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        return cls.make(str(data["family"]), data["config"], data.get("widths", {}))

    def group_widths(self) -> dict[str, int]:
        """Readable name -> width, from the graph of the unpruned model and the recorded widths."""
        base = _base_widths(self.family, self.config)
        return {**base, **{k: v for k, v in self.widths if k in base}}

    def with_widths(self, widths: Mapping[str, int]) -> "ModuleSpec":
        base = _base_widths(self.family, self.config)
        unknown = set(widths) - set(base)
        if unknown:
            raise KeyError(f"unknown channel groups {sorted(unknown)}; known: {sorted(base)}")
        merged = {**dict(self.widths), **{k: int(v) for k, v in widths.items()}}
        return ModuleSpec.make(self.family, self.config_dict,
                               {k: v for k, v in merged.items() if v != base[k]})

    def describe(self) -> str:
        pruned = f", pruned {dict(self.widths)}" if self.widths else ""
        return f"{self.family} x{self.scale} {self.config_dict}{pruned}"


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}
_BASE: dict[tuple[str, str], dict[str, int]] = {}


def _base_widths(family: str, config: str) -> dict[str, int]:
    key = (family, config)
    if key not in _BASE:
        from workbench.prune.groups import derive_groups

        model = _attach(_BUILDERS[family](json.loads(config)), ModuleSpec(family, config))
        _BASE[key] = {n: g.width for n, g in derive_groups(model).items()}
    return _BASE[key]


def _attach(model: nn.Module, spec: ModuleSpec) -> nn.Module:
    model.spec = spec
    if not isinstance(getattr(model, "scale", None), int):
        model.scale = spec.scale
    return model


def _build(spec: ModuleSpec) -> nn.Module:
    """Build the original module, then remove channels so every recorded group has its width
    (the last channels go; the saved weights replace all values afterwards)."""
    model = _attach(_BUILDERS[spec.family](spec.config_dict), ModuleSpec(spec.family, spec.config))
    if spec.widths:
        import torch_pruning as tp

        from workbench.prune.groups import build_graph, derive_groups

        groups = derive_groups(model)
        graph = build_graph(model)
        for name, width in spec.widths:
            group = groups[name]
            if width < group.width:
                root = model.get_submodule(group.root)
                graph.get_pruning_group(root, tp.prune_conv_out_channels,
                                        idxs=list(range(width, group.width))).prune()
        model.spec = spec
    return model


def _spec_from_state_dict_for(family: str, presets: Mapping[str, Mapping[str, Any]],
                              scales: tuple[int, ...]):
    def infer(state: Mapping[str, torch.Tensor]) -> ModuleSpec:
        for config in presets.values():
            for scale in scales:
                model = _BUILDERS[family]({**config, "scale": scale})
                own = model.state_dict()
                if own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own):
                    return ModuleSpec.make(family, {**config, "scale": scale})
        raise ValueError(f"the weights match no preset of family {family!r} (a pruned model "
                         "reloads from its artifact, which records its widths)")
    return infer


def module_family(name: str, *, build: Callable[[dict[str, Any]], nn.Module],
                  presets: Mapping[str, Mapping[str, Any]] | None = None,
                  scales: tuple[int, ...] = (2, 3, 4), input_range: float = 255.0,
                  checkpoints: Mapping[str, Mapping[int, str]] | None = None,
                  int8_fp32: tuple[str, ...] | None = None, int8_min_side: int | None = None,
                  about: str = "") -> Family:
    """A :class:`Family` for any module ``build(config)`` returns (see the module docstring).

    ``presets`` name configs (each becomes ``<preset>_x<scale>``); ``checkpoints`` optionally maps
    a preset to {scale: file under checkpoints/}; ``input_range`` is 255.0 or 1.0. int8:
    ``int8_fp32`` names the modules (fnmatch patterns) kept fp32 (None: the first conv, the convs
    feeding a PixelShuffle and the last conv); ``int8_min_side`` the smallest LR side the exported
    graph must accept (None: 2; raise it for a network that pools or strides).
    """
    if input_range not in (1.0, 255.0):
        raise ValueError(f"input_range must be 1 or 255, got {input_range!r}")
    _BUILDERS[name] = build
    presets = dict(presets or {})
    checkpoints = dict(checkpoints or {})

    def preset(pname: str, config: Mapping[str, Any]) -> ModelPreset:
        return ModelPreset(pname, lambda s, c=dict(config): ModuleSpec.make(name, {**c, "scale": s}),
                           about or f"{name} ({pname})", checkpoints.get(pname, {}), scales)

    def claims(state: Mapping[str, torch.Tensor]) -> bool:
        try:
            _spec_from_state_dict_for(name, presets, scales)(state)
            return True
        except (ValueError, KeyError, TypeError):
            return False

    return Family(
        name=name, spec_type=ModuleSpec, build=_build,
        spec_from_state_dict=_spec_from_state_dict_for(name, presets, scales),
        normalize_state_dict=lambda st: {strip_module_prefix(k): v
                                         for k, v in unwrap_wrappers(st).items()},
        claims=claims, presets={p: preset(p, c) for p, c in presets.items()},
        input_range=lambda spec: input_range,
        int8_fp32=None if int8_fp32 is None else (lambda model, k=tuple(int8_fp32): k),
        int8_min_side=int8_min_side, about=about or f"wrapped module family {name}")
