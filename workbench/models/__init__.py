"""Model registry: the families (RLFN, SPAN, ...) and their named presets, at any scale, with the
released weights. See :mod:`workbench.models.family` for what a family declares."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from workbench.core.errors import WorkbenchError
from workbench.models.family import (FAMILIES, Family, ModelPreset, family_of, family_of_spec,
                                     get_family, input_range, model_input, model_output,
                                     register_family)
from workbench.models.rlfn import (ESA, MIN_LR_SIZE, RLFB, RLFN, BlockSpec, RLFNSpec,
                                   group_widths as _rlfn_group_widths, normalize_state_dict,
                                   spec_from_state_dict)
from workbench.models import span as _span  # noqa: F401  (registers the SPAN family)
from workbench.models.span import SPAN, SPABSpec, SPANSpec

__all__ = ["ESA", "FAMILIES", "Family", "MIN_LR_SIZE", "ModelPreset", "PRESETS", "RANDOM_PREFIX", "RLFB",
           "RLFN", "BlockSpec", "RLFNSpec", "SPAN", "SPABSpec", "SPANSpec", "build_model", "checkpoint_dir",
           "create_model", "family_of", "family_of_spec", "get_family", "group_widths",
           "input_range", "list_models", "load_state_dict_file", "model_input", "model_output",
           "normalize_state_dict", "parse_model_name", "preset_family", "register_family",
           "released_checkpoint", "released_weights", "spec_from_state_dict", "spec_from_record"]

SCALES = (2, 3, 4)


#: ``random:rlfn_s_x3``: the named architecture, randomly initialised, asked for explicitly.
RANDOM_PREFIX = "random:"


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


def family_of_ref(ref: Any) -> Family | None:
    """The family a model REF names without loading weights: a preset name (``span_ch28_x4``) or
    an artifact folder (its artifact.json); None for anything else (a bare .pth, a typo)."""
    import json

    text = str(ref)
    try:
        return preset_family(parse_model_name(text)[0])
    except WorkbenchError:
        pass
    meta = Path(text) / "artifact.json"
    try:
        name = json.loads(meta.read_text(encoding="utf-8")).get("family") or "rlfn"
        return get_family(str(name))
    except (OSError, ValueError, AttributeError, WorkbenchError):
        return None


def min_lr_side(ref: Any) -> tuple[int, str]:
    """The smallest LR side a model REF's family runs on, and who says so. A REF whose family is
    not known before loading gets the strictest registered family's limit."""
    fam = family_of_ref(ref)
    if fam is not None:
        return fam.min_lr_size, fam.name
    strictest = max(FAMILIES.values(), key=lambda f: f.min_lr_size)
    return strictest.min_lr_size, strictest.name


def group_widths(spec: Any) -> dict[str, int]:
    """Readable channel-group name -> width, in network order, for a spec of any family."""
    if isinstance(spec, RLFNSpec):
        return _rlfn_group_widths(spec)
    return spec.group_widths()


def checkpoint_dir() -> Path:
    """Where the released weights live: ``workbench/checkpoints/`` in an installed package (the
    repository's top-level checkpoints/ is mapped there as package data, see setup.py), else the
    repository's checkpoints/ folder (a source checkout or an editable install)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "checkpoints"
    if installed.is_dir():
        return installed
    return package.parent / "checkpoints"


def parse_model_name(name: str) -> tuple[str, int]:
    """'rlfn_s_x4' -> ('rlfn_s', 4). Raises WorkbenchError with the known names otherwise."""
    match = re.fullmatch(r"(?P<preset>[a-z0-9_]+?)_x(?P<scale>\d+)", name)
    if not match or match["preset"] not in PRESETS:
        raise WorkbenchError(f"unknown model {name[:60]!r}; known: {', '.join(list_models())}")
    if int(match["scale"]) not in SCALES:
        raise WorkbenchError(f"model {name!r}: scale x{match['scale']} is not one of "
                             f"{', '.join(f'x{s}' for s in SCALES)}")
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


def _released_names() -> str:
    return ", ".join(f"{p}_x{s}" for p, v in PRESETS.items() for s in v.checkpoint)


def released_weights(name: str, *, must_exist: bool = True) -> Path | None:
    """The released weights file a model name stands for, or None for a random initialisation.

    A random initialisation must be asked for: ``random:<name>``, or a test preset that has no
    released weights at all (``rlfn_tiny_x4``). A name whose architecture was released but not at
    this scale (``rlfn_s_x3``), or whose weights file is missing from this installation, raises a
    WorkbenchError instead of silently evaluating random weights.
    """
    if name.startswith(RANDOM_PREFIX):
        parse_model_name(name[len(RANDOM_PREFIX):])
        return None
    preset, scale = parse_model_name(name)
    released = PRESETS[preset].checkpoint
    if not released:
        return None  # a test/smoke model, documented as randomly initialised
    fname = released.get(scale)
    if fname is None:
        raise WorkbenchError(f"{name}: no released weights at x{scale} (released: {_released_names()}); "
                             f"for a randomly initialised model ask for it explicitly: {RANDOM_PREFIX}{name}")
    path = checkpoint_dir() / fname
    if must_exist and not path.is_file():
        raise WorkbenchError(f"{name}: released weights {fname} not found in {checkpoint_dir()} "
                             "(an incomplete installation: reinstall workbench)")
    return path


def load_state_dict_file(path: Path, family: Family) -> dict[str, torch.Tensor]:
    return family.normalize_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def create_model(name: str, *, pretrained: bool = False) -> nn.Module:
    """Build a named model ('rlfn_s_x4'); with ``pretrained`` load the released weights strictly."""
    if name.startswith(RANDOM_PREFIX):
        name = name[len(RANDOM_PREFIX):]
        pretrained = False
    preset, scale = parse_model_name(name)
    fam = preset_family(preset)
    model = fam.build(PRESETS[preset].spec(scale))
    if pretrained:
        path = released_checkpoint(preset, scale)
        if path is None:
            raise WorkbenchError(f"no released weights for {name}; released: {_released_names()}")
        model.load_state_dict(load_state_dict_file(path, fam), strict=True)
    return model
