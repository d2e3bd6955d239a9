"""Training data: random aligned LR/HR patches with flips and rotations, reproducible per sample.

:class:`PatchDataset` takes HR files (and optionally their LR files; otherwise LR is made with
MATLAB bicubic, :mod:`workbench.data.imresize`) and serves ``(lr, hr)`` float32 tensors on the
0..255 scale. Every random choice for sample ``i`` of epoch ``e`` comes from a generator seeded by
``(seed, e, i)``, never from global state, so the sample is a pure function of those three numbers:
a training run resumed at any position sees exactly the batches an uninterrupted run saw, whatever
the number of loader workers.

:func:`find_training_pairs` lists the files of the layouts the recipes name (DIV2K, Flickr2K,
benchmark, a plain folder) and :func:`sample_images_dir` the small images shipped for the smoke run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from workbench.data.benchmark import check_pair_sizes, lr_file_for
from workbench.data.images import image_size, list_images, mod_crop, read_image
from workbench.data.imresize import downscale
from workbench.core.errors import WorkbenchError

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

LAYOUTS: dict[str, str] = {
    "div2k": "DIV2K_train_HR/<id>.png and DIV2K_train_LR_bicubic/X<s>/<id>x<s>.png",
    "flickr2k": "Flickr2K_HR/<id>.png and Flickr2K_LR_bicubic/X<s>/<id>x<s>.png "
                "(directly under the root or under <root>/Flickr2K)",
    "benchmark": "HR/<name>.png and LR_bicubic/X<s>/<name>x<s>.png",
    "folder": "<name>.png (HR images only; LR is made with MATLAB bicubic)",
}


def sample_images_dir() -> Path:
    """The small training images shipped with the package (a T91 subset) for the smoke run."""
    if not SAMPLES_DIR.is_dir() or not list_images(SAMPLES_DIR):
        raise WorkbenchError(f"{SAMPLES_DIR}: the shipped sample images are missing (reinstall workbench)")
    return SAMPLES_DIR


def _layout_error(root: Path, layout: str, problem: str) -> WorkbenchError:
    return WorkbenchError(f"{root}: {problem}; layout {layout!r} expects {LAYOUTS[layout]}")


def _match_lr(root: Path, layout: str, hr_files: list[Path], lr_dir: Path, scale: int) -> list[Path]:
    if not lr_dir.is_dir():
        raise _layout_error(root, layout, f"no LR folder {lr_dir} (use layout 'folder' to make LR "
                                          "on the fly from HR only)")
    index = {p.stem: p for p in list_images(lr_dir)}
    lr_files = []
    for hr in hr_files:
        lr = lr_file_for(hr, lr_dir, scale, index)
        if lr is None:
            raise WorkbenchError(f"{lr_dir / f'{hr.stem}x{scale}.png'}: missing LR image for HR {hr}")
        lr_files.append(lr)
    return lr_files


def find_training_pairs(root: Path, *, layout: str, scale: int) -> tuple[list[Path], list[Path] | None]:
    """HR files and their LR files (``None``: make LR on the fly) under ``root`` in ``layout``.

    Layouts: ``div2k``, ``flickr2k``, ``benchmark``, ``folder`` (see :data:`LAYOUTS`). A missing
    folder, an empty one, or an HR image without its LR file raises :class:`WorkbenchError`
    stating the expected layout.
    """
    root = Path(root).expanduser()
    if layout not in LAYOUTS:
        raise WorkbenchError(f"unknown data layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise _layout_error(root, layout, "data folder does not exist")
    if layout == "folder":
        hr_files = list_images(root)
        if not hr_files:
            raise _layout_error(root, layout, "no images found")
        return hr_files, None
    if layout == "benchmark":
        hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    elif layout == "div2k":
        base = root.parent if root.name == "DIV2K_train_HR" else root
        hr_dir, lr_dir = base / "DIV2K_train_HR", base / "DIV2K_train_LR_bicubic" / f"X{scale}"
    else:  # flickr2k
        base = root.parent if root.name == "Flickr2K_HR" else root
        if not (base / "Flickr2K_HR").is_dir() and (base / "Flickr2K" / "Flickr2K_HR").is_dir():
            base = base / "Flickr2K"
        hr_dir, lr_dir = base / "Flickr2K_HR", base / "Flickr2K_LR_bicubic" / f"X{scale}"
    if not hr_dir.is_dir():
        raise _layout_error(root, layout, f"no HR folder {hr_dir}")
    hr_files = list_images(hr_dir)
    if not hr_files:
        raise _layout_error(root, layout, f"no images in {hr_dir}")
    return hr_files, _match_lr(root, layout, hr_files, lr_dir, scale)


def exclude_files(hr_files: Sequence[Path], lr_files: Sequence[Path] | None, patterns: Sequence[str], *,
                  root: Path | str = "") -> tuple[list[Path], list[Path] | None]:
    """``hr_files`` (and their ``lr_files``) without those whose name or stem matches one of the
    shell ``patterns`` (``302003.png``, ``302003``, ``30*``). A pattern that matches no file is an
    error: a typo must not let the image it meant back in."""
    import fnmatch

    keep = []
    used = [False] * len(patterns)
    for k, path in enumerate(hr_files):
        hit = False
        for j, pattern in enumerate(patterns):
            if fnmatch.fnmatchcase(path.name, pattern) or fnmatch.fnmatchcase(path.stem, pattern):
                used[j] = hit = True
        if not hit:
            keep.append(k)
    for j, pattern in enumerate(patterns):
        if not used[j]:
            raise WorkbenchError(f"exclude[{j}]: {pattern!r} matches no image{f' in {root}' if root else ''}")
    return [hr_files[k] for k in keep], ([lr_files[k] for k in keep] if lr_files is not None else None)


def _to_tensor(patch: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) -> float32 (3, h, w) on the 0..255 scale."""
    return torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1))).to(torch.float32)


def augment_pair(lr: np.ndarray, hr: np.ndarray, *, rotations: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Apply the same 90-degree ``rotations`` (0..3) and horizontal ``flip`` to both patches.

    Together these give all 8 flips and rotations of the square (vertical flip = rotate twice
    and flip horizontally).
    """
    if rotations:
        lr, hr = np.rot90(lr, rotations, axes=(0, 1)), np.rot90(hr, rotations, axes=(0, 1))
    if flip:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    return lr, hr


class PatchDataset(Dataset):
    """Random aligned (LR, HR) patches from HR images, reproducible per (seed, epoch, index).

    ``__getitem__(i)`` returns ``(lr, hr)``: float32 tensors (3, p/s, p/s) and (3, p, p) on the
    0..255 scale. Sample ``i`` uses image ``i % len(hr_files)``; ``length`` (default: one sample
    per image) sets the number of samples per epoch. The crop position and, with ``augment``, the
    flip and rotation are drawn from ``numpy.random.default_rng((seed, epoch, i))``. Call
    :meth:`set_epoch` before each epoch (before the loader's workers start), or index with an
    ``(epoch, i)`` tuple, which does not depend on the dataset's state at all (useful with
    persistent workers).

    Images are decoded once at construction and kept in memory as uint8, LR images made with
    MATLAB bicubic included (``cache=False`` reads HR on every access instead and makes each LR
    image on first use, per process: needed for DIV2K + Flickr2K at full size, ~25 GB decoded). Every image is checked at construction: smaller than
    the patch, or an LR file not exactly HR/scale, raises :class:`WorkbenchError`.
    """

    def __init__(self, hr_files: Sequence[Path], *, scale: int, patch_size: int,
                 lr_files: Sequence[Path] | None = None, augment: bool = True,
                 length: int | None = None, seed: int = 0, cache: bool = True,
                 lr_only: Sequence[bool | int] | None = None, targets: bool = True) -> None:
        self.hr_files = [Path(p) for p in hr_files]
        # lr_only[k]: file k is itself an LR input (no HR exists), shrunk by the factor lr_only[k]
        # first when that is above 1 (True: 1, as it is); targets=False: serve no HR patch (an
        # empty (3, 0, 0) tensor), for losses that take their target from a teacher
        self.lr_shrink = [int(f) for f in lr_only] if lr_only is not None else [0] * len(self.hr_files)
        if any(f < 0 for f in self.lr_shrink):
            raise WorkbenchError("PatchDataset: lr_only factors must be >= 0 (0: a paired image)")
        self.lr_only = [f > 0 for f in self.lr_shrink]
        self.targets = bool(targets)
        if len(self.lr_only) != len(self.hr_files):
            raise WorkbenchError(f"PatchDataset: {len(self.hr_files)} images but {len(self.lr_only)} "
                                 f"lr_only flags")
        if self.targets and any(self.lr_only):
            raise WorkbenchError("PatchDataset: LR-only images have no HR target; train them with "
                                 "distill losses only")
        self.lr_files = [Path(p) for p in lr_files] if lr_files is not None else None
        if not self.hr_files:
            raise WorkbenchError("PatchDataset: no HR images given")
        if self.lr_files is not None and len(self.lr_files) != len(self.hr_files):
            raise WorkbenchError(f"PatchDataset: {len(self.hr_files)} HR images but "
                                 f"{len(self.lr_files)} LR images")
        if scale < 1:
            raise WorkbenchError(f"PatchDataset: scale must be >= 1, got {scale}")
        if patch_size < scale or patch_size % scale:
            raise WorkbenchError(f"PatchDataset: patch size {patch_size} must be a positive multiple "
                                 f"of the scale {scale}")
        if length is not None and length < 1:
            raise WorkbenchError(f"PatchDataset: length must be >= 1, got {length}")
        self.scale = int(scale)
        self.patch_size = int(patch_size)
        self.augment = bool(augment)
        self.length = int(length) if length is not None else len(self.hr_files)
        self.seed = int(seed)
        self.cache = bool(cache)
        self.epoch = 0
        self._hr: list[np.ndarray] | None = [] if cache else None
        self._lr: dict[int, np.ndarray] = {}
        self._check_and_load()

    # -- construction ---------------------------------------------------------------------------

    def _check_and_load(self) -> None:
        """Check every size from the file headers first (an error costs no decoding), then
        decode the images into memory when caching."""
        from workbench.core.progress import tqdm

        s, p = self.scale, self.patch_size
        for k, hr_file in enumerate(self.hr_files):
            h, w = image_size(hr_file)
            if self.lr_only[k]:
                n = self.lr_shrink[k]
                if not holds_patch((h, w), p, s, lr_only=n):
                    shrunk = f" ({h // n}x{w // n} shrunk by {n})" if n > 1 else ""
                    raise WorkbenchError(f"{hr_file}: image is {h}x{w}{shrunk}, smaller than the "
                                         f"{p // s}x{p // s} LR training patch (patch {p} at x{s})")
                continue
            shape = (h - h % s, w - w % s)
            if not holds_patch((h, w), p, s):
                raise WorkbenchError(f"{hr_file}: image is {shape[0]}x{shape[1]} (mod-cropped to x{s}), "
                                     f"smaller than the {p}x{p} training patch")
            if self.lr_files is not None:
                check_pair_sizes(shape, image_size(self.lr_files[k]), s, hr_file=hr_file,
                                 lr_file=self.lr_files[k])
        if not self.cache:
            return
        bar = tqdm(range(len(self.hr_files)), desc="load training images", unit="img", leave=False,
                   disable=len(self.hr_files) < 16 or None)
        for k in bar:
            if self.lr_only[k]:
                self._hr.append(None)  # type: ignore[union-attr,arg-type]
                self._lr[k] = self._read_lr_only(k)
                continue
            hr = mod_crop(read_image(self.hr_files[k]), s)
            self._hr.append(hr)  # type: ignore[union-attr]
            if self.lr_files is None:
                # Made here, in the parent process, so loader workers (started afresh every
                # epoch) inherit it instead of each resizing the images again.
                self._lr[k] = downscale(hr, s)
            else:
                self._lr[k] = read_image(self.lr_files[k])

    # -- access ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__(i)`` returns."""
        self.epoch = int(epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """A shuffled order of the indices for ``epoch``, a pure function of (seed, epoch).

        A trainer that walks this order can resume mid-epoch by skipping the first k entries.
        """
        return np.random.default_rng([self.seed, int(epoch), 2**31]).permutation(self.length)

    def _read_lr_only(self, k: int) -> np.ndarray:
        image = read_image(self.hr_files[k])
        n = self.lr_shrink[k]
        return downscale(mod_crop(image, n), n) if n > 1 else image

    def _hr_image(self, k: int) -> np.ndarray | None:
        if self.lr_only[k]:
            return None
        if self._hr is not None:
            return self._hr[k]
        return mod_crop(read_image(self.hr_files[k]), self.scale)

    def _lr_image(self, k: int, hr: np.ndarray) -> np.ndarray:
        cached = self._lr.get(k)
        if cached is not None:
            return cached
        if self.lr_only[k]:
            lr = self._read_lr_only(k)
            if self.cache:
                self._lr[k] = lr
            return lr
        if self.lr_files is not None:
            lr = read_image(self.lr_files[k])
            check_pair_sizes(hr.shape, lr.shape, self.scale, hr_file=self.hr_files[k],
                             lr_file=self.lr_files[k])
            if not self.cache:
                return lr
        else:
            lr = downscale(hr, self.scale)
        self._lr[k] = lr
        return lr

    def image_pair(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole (LR, HR) uint8 images of image ``k`` (HR mod-cropped)."""
        hr = self._hr_image(k)
        return self._lr_image(k, hr), hr

    def sample(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index`` of ``epoch`` (what ``self[index]`` returns after ``set_epoch(epoch)``)."""
        if not 0 <= index < self.length:
            raise IndexError(f"PatchDataset index {index} out of range (length {self.length})")
        k = index % len(self.hr_files)
        lr, hr = self.image_pair(k)
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        s = self.scale
        lp = self.patch_size // s
        y = int(rng.integers(0, lr.shape[0] - lp + 1))
        x = int(rng.integers(0, lr.shape[1] - lp + 1))
        lr_patch = lr[y:y + lp, x:x + lp]
        if hr is None or not self.targets:
            hr = np.zeros((0, 0, 3), dtype=np.uint8)
            hr_patch = hr
        else:
            hr_patch = hr[y * s:(y + lp) * s, x * s:(x + lp) * s]
        if self.augment:
            lr_patch, hr_patch = augment_pair(lr_patch, hr_patch, rotations=int(rng.integers(4)),
                                              flip=bool(rng.integers(2)))
        return _to_tensor(lr_patch), _to_tensor(hr_patch)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, tuple):
            epoch, i = index
            return self.sample(epoch, i)
        return self.sample(self.epoch, int(index))


def holds_patch(size: tuple[int, int], patch_size: int, scale: int, *, lr_only: bool | int = False) -> bool:
    """Whether an image of ``size`` (h, w) yields a training patch: an HR image mod-cropped to the
    scale must hold ``patch_size``; an LR-only image, shrunk by the factor ``lr_only`` (True: 1),
    must hold the LR patch ``patch_size // scale``."""
    h, w = size
    if lr_only:
        n = int(lr_only)
        return min(h // n, w // n) >= patch_size // scale
    return min(h - h % scale, w - w % scale) >= patch_size


def patch_size_problems(patch_size: int, scale: int | None, model: Any = None) -> list[str]:
    """Loader problems of a training patch size at ``scale``: it must be a multiple of the scale,
    and the LR patch must be at least the smallest input ``model``'s family runs on (a REF; RLFN:
    15, for ESA's strided conv and 7x7 max-pool; unknown before loading: the strictest family's)."""
    if not scale:
        return []
    if patch_size % scale:
        return [f"patch_size: must be a multiple of the scale {scale}, got {patch_size}"]
    from workbench.models import min_lr_side

    side, family = min_lr_side(model)
    if patch_size // scale < side:
        return [f"patch_size: at x{scale} must be at least {side * scale} ({family} needs LR "
                f"patches of {side}x{side} or more), got {patch_size}"]
    return []
