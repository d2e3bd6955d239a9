"""Model registry: the families (RLFN, SPAN, ...) and their named presets, at any scale, with the
released weights. See :mod:`workbench.models.family` for what a family declares."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models.family import (FAMILIES, Family, ModelPreset, family_of, family_of_spec,
                                     get_family, input_range, model_input, model_output,
                                     register_family)
from workbench.models.rlfn import (ESA, MIN_LR_SIZE, RLFB, RLFN, BlockSpec, RLFNSpec,
                                   group_widths as _rlfn_group_widths, normalize_state_dict,
                                   spec_from_state_dict)
from workbench.models import span as _span  # noqa: F401  (registers the SPAN family)
from workbench.models.span import SPAN, SPABSpec, SPANSpec

__all__ = ["ESA", "FAMILIES", "Family", "MIN_LR_SIZE", "ModelPreset", "PRESETS", "RLFB", "RLFN",
           "BlockSpec", "RLFNSpec", "SPAN", "SPABSpec", "SPANSpec", "build_model", "checkpoint_dir",
           "create_model", "family_of", "family_of_spec", "get_family", "group_widths",
           "input_range", "list_models", "load_state_dict_file", "model_input", "model_output",
           "normalize_state_dict", "parse_model_name", "preset_family", "register_family",
           "released_checkpoint", "spec_from_state_dict", "spec_from_record"]

SCALES = (2, 3, 4)


class _AllPresets(Mapping):
    """Preset name -> preset over every registered family (read live, so plug-ins appear)."""

    def _merged(self) -> dict[str, Any]:
        from workbench.models.family import _load_entry_points

        _load_entry_points()
        out: dict[str, Any] = {}
        for fam in FAMILIES.values():
            out.update(fam.presets)
        return out

    def __getitem__(self, key: str) -> Any:
        return self._merged()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._merged())

    def __len__(self) -> int:
        return len(self._merged())


PRESETS: Mapping[str, Any] = _AllPresets()


def preset_family(preset: str) -> Family:
    for fam in FAMILIES.values():
        if preset in fam.presets:
            return fam
    raise WorkbenchError(f"unknown preset {preset!r}")


def group_widths(spec: Any) -> dict[str, int]:
    """Readable channel-group name -> width, in network order, for a spec of any family."""
    if isinstance(spec, RLFNSpec):
        return _rlfn_group_widths(spec)
    return spec.group_widths()


def checkpoint_dir() -> Path:
    """Where the released weights live: the repository's checkpoints/ folder."""
    return Path(__file__).resolve().parents[2] / "checkpoints"


def parse_model_name(name: str) -> tuple[str, int]:
    """'rlfn_s_x4' -> ('rlfn_s', 4). Raises WorkbenchError with the known names otherwise."""
    match = re.fullmatch(r"(?P<preset>[a-z0-9_]+?)_x(?P<scale>\d+)", name)
    if not match or match["preset"] not in PRESETS:
        raise WorkbenchError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return match["preset"], int(match["scale"])


def list_models() -> list[str]:
    return [f"{n}_x{s}" for n, p in PRESETS.items() for s in getattr(p, "scales", SCALES)]


def build_model(spec: Any) -> nn.Module:
    """A fresh (randomly initialised) model of whatever family ``spec`` belongs to."""
    return family_of_spec(spec).build(spec)


def spec_from_record(record: Mapping[str, Any], family: str | None = None) -> Any:
    """The spec an artifact recorded (``family`` missing: 'rlfn', as older artifacts are)."""
    return get_family(family or "rlfn").spec_from_dict(record)


def released_checkpoint(preset: str, scale: int) -> Path | None:
    """Path of the released weights for a preset and scale, or None where none were released."""
    fname = PRESETS[preset].checkpoint.get(scale)
    return checkpoint_dir() / fname if fname else None


def load_state_dict_file(path: Path, family: Family) -> dict[str, torch.Tensor]:
    return family.normalize_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def create_model(name: str, *, pretrained: bool = False) -> nn.Module:
    """Build a named model ('rlfn_s_x4'); with ``pretrained`` load the released weights strictly."""
    preset, scale = parse_model_name(name)
    fam = preset_family(preset)
    model = fam.build(PRESETS[preset].spec(scale))
    if pretrained:
        path = released_checkpoint(preset, scale)
        if path is None:
            raise WorkbenchError(f"no released weights for {name}; released: "
                                 + ", ".join(f"{p}_x{s}" for p, v in PRESETS.items() for s in v.checkpoint))
        model.load_state_dict(load_state_dict_file(path, fam), strict=True)
    return model
