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
           "normalize_state_dict", "parse_model_name", "released_checkpoint", "spec_from_state_dict"]

SCALES = (2, 3, 4)


def checkpoint_dir() -> Path:
    """Where the released weights live: the repository's checkpoints/ folder."""
    return Path(__file__).resolve().parents[2] / "checkpoints"


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


def create_model(name: str, *, pretrained: bool = False) -> RLFN:
    """Build a named model ('rlfn_s_x4'); with ``pretrained`` load the released weights strictly."""
    preset, scale = parse_model_name(name)
    model = build_model(PRESETS[preset].spec(scale))
    if pretrained:
        path = released_checkpoint(preset, scale)
        if path is None:
            raise WorkbenchError(f"no released weights for {name}; released: "
                                 + ", ".join(f"{p}_x{s}" for p, v in PRESETS.items() for s in v.checkpoint))
        state = normalize_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.load_state_dict(state, strict=True)
    return model
