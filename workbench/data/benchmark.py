"""Paired HR/LR evaluation sets: the benchmark layout, the DIV2K layout, plain HR folders, and
the embedded Set5.

Layouts understood by :func:`load_set` (``<s>`` is the scale)::

    benchmark   <Set>/HR/<name>.png           <Set>/LR_bicubic/X<s>/<name>x<s>.png
    DIV2K       DIV2K_valid_HR/0801.png       DIV2K_valid_LR_bicubic/X<s>/0801x<s>.png
                (also DIV2K_train_*, Flickr2K_*: any ``<prefix>_HR`` beside ``<prefix>_LR_bicubic``)
    plain       <folder>/<name>.png           LR made with MATLAB bicubic (workbench.data.imresize)

Every HR image is mod-cropped to the scale, and every LR image must be exactly HR/scale in size:
a set whose files disagree is refused instead of being silently mis-scored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from workbench.data.images import list_images, mod_crop, read_image
from workbench.data.imresize import downscale
from workbench.core.errors import WorkbenchError

#: Folder holding the sets shipped inside the package.
EMBEDDED_ROOT = Path(__file__).resolve().parent / "sets"
#: Names of the embedded sets (usable without any data path).
EMBEDDED_SETS: tuple[str, ...] = ("Set5",)
#: Scales for which the embedded sets ship LR files (others are made with imresize).
EMBEDDED_SCALES: tuple[int, ...] = (2, 3, 4)


@dataclass
class ImagePair:
    """One evaluation image: ``hr`` mod-cropped to the scale, ``lr`` exactly ``hr`` / scale.

    Both are uint8 (H, W, 3) RGB arrays.
    """

    name: str
    hr: np.ndarray
    lr: np.ndarray
    #: The files they were read from (``lr_file`` is None when LR was made with bicubic).
    hr_file: Path | None = None
    lr_file: Path | None = None


@dataclass
class PairedSet:
    """A named set of HR/LR pairs at one scale; ``root`` is the folder it was read from."""

    name: str
    scale: int
    root: Path | None
    pairs: list[ImagePair] = field(default_factory=list)
    #: True when the pairs came from the copy shipped inside the package.
    embedded: bool = False

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ImagePair]:
        return iter(self.pairs)

    def __getitem__(self, index: int) -> ImagePair:
        return self.pairs[index]


def embedded_set_dir(name: str) -> Path:
    """Folder of the embedded set ``name`` (case-insensitive), e.g. ``Set5``."""
    for known in EMBEDDED_SETS:
        if known.lower() == str(name).lower():
            folder = EMBEDDED_ROOT / known
            if not (folder / "HR").is_dir():
                raise WorkbenchError(f"{folder}: the embedded set {known} is missing from this "
                                     "installation (reinstall workbench)")
            return folder
    raise WorkbenchError(f"no embedded set named {name!r}; embedded sets: {', '.join(EMBEDDED_SETS)}")


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise WorkbenchError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _looks_like_name(ref: str | Path) -> bool:
    text = str(ref)
    return not isinstance(ref, Path) and "/" not in text and os.sep not in text and text not in (".", "..")


def _resolve(ref: str | Path, data_root: Path | None) -> tuple[Path, bool]:
    """The folder a set reference points at, and whether it is the embedded copy.

    A data root that was given is never silently replaced by the embedded copy: a missing root, or
    a set name not under it, is an error."""
    if data_root is not None and not Path(data_root).is_dir():
        raise WorkbenchError(f"{data_root}: data root does not exist or is not a folder (leave it "
                             f"out to use the embedded {', '.join(EMBEDDED_SETS)})")
    if _looks_like_name(ref) and data_root is not None:
        candidate = Path(data_root) / str(ref)
        if candidate.is_dir():
            return candidate, False
    path = Path(ref).expanduser()
    if path.is_dir():
        return path, False
    if path.exists():
        raise WorkbenchError(f"{path}: is a file; a data set is a folder (benchmark layout "
                             "<Set>/HR + <Set>/LR_bicubic/X<s>, DIV2K layout, or a folder of HR images)")
    if data_root is not None:
        raise WorkbenchError(f"{ref}: no such data set folder under the data root {data_root} "
                             f"(leave the data root out to use the embedded {', '.join(EMBEDDED_SETS)})")
    if _looks_like_name(ref) and str(ref).lower() in (s.lower() for s in EMBEDDED_SETS):
        return embedded_set_dir(str(ref)), True
    raise WorkbenchError(f"{ref}: no such data set folder; embedded sets: {', '.join(EMBEDDED_SETS)}")


def _split_layout(folder: Path, scale: int) -> tuple[str, Path, Path | None]:
    """(set name, HR folder, LR folder or None when LR must be made) for a set folder."""
    lr_name = f"X{scale}"
    if (folder / "HR").is_dir():
        return folder.name, folder / "HR", folder / "LR_bicubic" / lr_name
    if folder.name.endswith("_HR"):
        prefix = folder.name[: -len("_HR")]
        return prefix, folder, folder.parent / f"{prefix}_LR_bicubic" / lr_name
    hr_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.endswith("_HR"))
    if hr_dirs:
        valid = [p for p in hr_dirs if "valid" in p.name.lower()]
        if len(hr_dirs) > 1 and len(valid) != 1:
            names = ", ".join(p.name for p in hr_dirs)
            raise WorkbenchError(f"{folder}: several HR folders ({names}); pass the one to use")
        hr = valid[0] if len(hr_dirs) > 1 else hr_dirs[0]
        prefix = hr.name[: -len("_HR")]
        return prefix, hr, folder / f"{prefix}_LR_bicubic" / lr_name
    return folder.name, folder, None


def lr_file_for(hr_file: Path, lr_dir: Path, scale: int, index: dict[str, Path] | None = None) -> Path | None:
    """The LR file of ``hr_file`` in ``lr_dir``: ``<stem>x<s>.<ext>``, else ``<stem>.<ext>``."""
    if index is None:
        index = {p.stem: p for p in list_images(lr_dir)}
    return index.get(f"{hr_file.stem}x{scale}") or index.get(hr_file.stem)


def check_pair_sizes(hr_shape: tuple[int, ...], lr_shape: tuple[int, ...], scale: int, *,
                     hr_file: Path | str, lr_file: Path | str) -> None:
    """Raise unless an LR image is exactly the mod-cropped HR size divided by ``scale``."""
    want = (hr_shape[0] // scale, hr_shape[1] // scale)
    got = (lr_shape[0], lr_shape[1])
    if got != want:
        raise WorkbenchError(
            f"{lr_file}: LR image is {got[0]}x{got[1]} (HxW) but HR {hr_file} is "
            f"{hr_shape[0]}x{hr_shape[1]}, so x{scale} needs {want[0]}x{want[1]}")


def _progress(items: list, desc: str):
    from workbench.core.progress import tqdm

    return tqdm(items, desc=desc, unit="img", leave=False, disable=len(items) < 8 or None)


def load_set(ref: str | Path, scale: int, *, data_root: Path | None = None,
             make_lr: bool = True) -> PairedSet:
    """Load an evaluation set as HR/LR pairs at ``scale``.

    ``ref`` is a set name (``Set5``: ``data_root/Set5`` when that exists, else the embedded copy),
    or a folder in the benchmark layout, the DIV2K layout, or a plain folder of HR images. When the
    LR folder for ``scale`` does not exist (or for a plain folder), LR images are made with MATLAB
    bicubic if ``make_lr``; otherwise that is an error. An HR image without its LR file, an LR file
    of the wrong size, or a set without images raises :class:`WorkbenchError`.
    """
    scale = _check_scale(scale)
    folder, embedded = _resolve(ref, Path(data_root) if data_root is not None else None)
    name, hr_dir, lr_dir = _split_layout(folder, scale)
    hr_files = list_images(hr_dir)
    if not hr_files:
        raise WorkbenchError(f"{hr_dir}: no images found (suffixes .png, .bmp, .jpg, ...)")
    if lr_dir is not None and not lr_dir.is_dir():
        if not make_lr:
            raise WorkbenchError(f"{lr_dir}: LR folder for x{scale} does not exist (and making LR "
                                 "with bicubic is turned off)")
        lr_dir = None
    lr_index = {p.stem: p for p in list_images(lr_dir)} if lr_dir is not None else None
    pairs: list[ImagePair] = []
    for hr_file in _progress(hr_files, f"load {name} x{scale}"):
        hr = mod_crop(read_image(hr_file), scale)
        if hr.shape[0] < scale or hr.shape[1] < scale:
            raise WorkbenchError(f"{hr_file}: image is smaller than the scale {scale}")
        lr_file = None
        if lr_dir is None:
            lr = downscale(hr, scale)
        else:
            lr_file = lr_file_for(hr_file, lr_dir, scale, lr_index)
            if lr_file is None:
                raise WorkbenchError(f"{lr_dir / f'{hr_file.stem}x{scale}.png'}: missing LR image "
                                     f"for HR {hr_file}")
            lr = read_image(lr_file)
            check_pair_sizes(hr.shape, lr.shape, scale, hr_file=hr_file, lr_file=lr_file)
        pairs.append(ImagePair(name=hr_file.stem, hr=hr, lr=lr, hr_file=hr_file, lr_file=lr_file))
    return PairedSet(name=name, scale=scale, root=folder, pairs=pairs, embedded=embedded)
