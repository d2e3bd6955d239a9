"""The typed top level of a recipe: model, scale, seed, device and data (stages have their own
config classes, registered with :func:`workbench.stages.registry.register_stage`).

A recipe file::

    name: ntire22                       # optional; names the default run folder
    model: rlfn_s_x4                    # a model name, an artifact/.pth path, or widths (see below)
    scale: 4                            # optional; must match the model's
    seed: 0
    device: auto                        # auto | cpu | cuda | cuda:N
    data:
      train:                            # one or more sources, concatenated
        - {root: datasets/DIV2K, layout: div2k}
        - {root: datasets/Flickr2K, layout: flickr2k}
      val: {sets: [Set5], root: null}   # root null: the embedded Set5
      leakage: error                    # refuse training images that copy an evaluation image
    stages:
      - {id: train, stage: train, iterations: 1000}
    smoke:                              # merged over the recipe by --smoke
      data: {train: [{layout: samples}]}

``model`` as widths: ``{trunk: 48, mid: 48, esa: 16, blocks: 4}`` (uniform) or a full
architecture record as stored in artifact.json (``trunk`` plus a ``blocks`` list of mappings).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LAYOUTS = ("div2k", "flickr2k", "folder", "benchmark", "samples")
#: A recipe name (and so a default run folder under runs/): never a path.
RUN_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
DEVICES_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"


@dataclass(frozen=True)
class TrainSource:
    """One training image source."""

    root: str | None = field(default=None, metadata={
        "help": "folder of the data set (relative to the working directory); null for layout samples",
        "exists": "dir"})
    layout: str = field(default="folder", metadata={
        "help": "div2k, flickr2k, benchmark (<root>/HR + LR_bicubic/X<s>), folder (HR only; LR made "
                "with MATLAB bicubic) or samples (the images shipped for the smoke run)",
        "choices": list(LAYOUTS)})
    bicubic_lr: bool = field(default=False, metadata={
        "help": "ignore the LR folder and make LR from HR with MATLAB bicubic"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N images", "min": 1})
    as_lr: bool = field(default=False, metadata={
        "help": "use the images themselves as LR inputs (no HR at the model's scale: a frozen teacher "
                "supplies the target, so the stage's losses must all be distill)"})
    downscale: int = field(default=1, metadata={
        "help": "with as_lr: shrink each image by this factor (MATLAB bicubic) before use, e.g. 2: "
                "HR photos become LR inputs with the statistics of bicubic LR and 4x the pixels of "
                "their x4 LR", "min": 1, "max": 8})
    exclude: list[str] = field(default_factory=list, metadata={
        "help": "HR image names or shell patterns to leave out (file name or stem, e.g. 302003.png, "
                "'30*'); each must match an image"})

    def validate(self) -> list[str]:
        if self.downscale != 1 and not self.as_lr:
            return [f"downscale: only with as_lr (a paired source's LR is HR / scale), got {self.downscale}"]
        if self.as_lr and self.layout not in ("folder", "samples"):
            return [f"as_lr: only for layout folder or samples, got {self.layout!r}"]
        if self.root is None and self.layout != "samples":
            return [f"root: required for layout {self.layout!r} (only layout 'samples' needs no root)"]
        return []


@dataclass(frozen=True)
class ValConfig:
    """Validation during training (and the default sets of `evaluate`)."""

    sets: list[str] = field(default_factory=lambda: ["Set5"], metadata={
        "help": "set names under root (or the embedded Set5), or set folders"})
    root: str | None = field(default=None, metadata={
        "help": "folder holding <Set>/HR and <Set>/LR_bicubic/X<s>; null: embedded Set5", "exists": "dir"})


@dataclass(frozen=True)
class DataConfig:
    train: list[TrainSource] = field(default_factory=list, metadata={
        "help": "training sources (concatenated); needed by training stages"})
    val: ValConfig = field(default_factory=ValConfig, metadata={"help": "validation sets"})
    leakage: str = field(default="error", metadata={
        "help": "a training image identical or nearly identical to an image of an evaluation or "
                "validation set the recipe uses: error (refuse to run), warn, or off (no check)",
        "choices": ["error", "warn", "off"]})


@dataclass(frozen=True)
class RecipeConfig:
    """Everything in a recipe except ``stages`` and ``smoke``."""

    model: Any = field(metadata={
        "help": "model name (rlfn_s_x4), artifact folder / .pth path, or a widths mapping"})
    name: str | None = field(default=None, metadata={
        "help": "recipe name (default: file name); names the run folder runs/<name>, so a plain name",
        "pattern": RUN_NAME_PATTERN,
        "pattern_help": "a plain name of letters, digits, '_', '-' and '.' not starting with '.' "
                        "(no '/', no '..': it names the run folder runs/<name>)"})
    description: str = field(default="", metadata={"help": "free text"})
    scale: int | None = field(default=None, metadata={"help": "upscaling factor; must match the model",
                                                      "choices": [1, 2, 3, 4, 8]})
    seed: int = field(default=0, metadata={"help": "seed of every stage (data order, init)", "min": 0})
    device: str = field(default="auto", metadata={"help": DEVICES_HELP, "pattern": r"auto|cpu|mps|cuda(:\d+)?",
                                                  "pattern_help": "auto, cpu, cuda or cuda:N"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "training and validation data"})
