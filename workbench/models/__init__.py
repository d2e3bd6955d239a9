"""Model registry: named presets of the RLFN family, at any scale, with the released weights."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from workbench.errors import WorkbenchError
from workbench.models.rlfn import (ESA, MIN_LR_SIZE, PRESETS, RLFB, RLFN, BlockSpec, RLFNSpec,
                                   group_widths, normalize_state_dict, spec_from_state_dict)

__all__ = ["ESA", "MIN_LR_SIZE", "PRESETS", "RLFB", "RLFN", "BlockSpec", "RLFNSpec",
           "build_model", "checkpoint_dir", "create_model", "group_widths", "list_models",
           "normalize_state_dict", "parse_model_name", "released_checkpoint", "released_weights",
           "spec_from_state_dict", "RANDOM_PREFIX"]

SCALES = (2, 3, 4)


#: ``random:rlfn_s_x3``: the named architecture, randomly initialised, asked for explicitly.
RANDOM_PREFIX = "random:"


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
    return [f"{p}_x{s}" for p in PRESETS for s in SCALES]


def build_model(spec: RLFNSpec) -> RLFN:
    return RLFN(spec)


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


def create_model(name: str, *, pretrained: bool = False) -> RLFN:
    """Build a named model ('rlfn_s_x4'); with ``pretrained`` load the released weights strictly."""
    if name.startswith(RANDOM_PREFIX):
        name = name[len(RANDOM_PREFIX):]
        pretrained = False
    preset, scale = parse_model_name(name)
    model = build_model(PRESETS[preset].spec(scale))
    if pretrained:
        path = released_checkpoint(preset, scale)
        if path is None:
            raise WorkbenchError(f"no released weights for {name}; released: {_released_names()}")
        state = normalize_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.load_state_dict(state, strict=True)
    return model
