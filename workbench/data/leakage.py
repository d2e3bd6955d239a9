"""Leakage guard: is a training image a copy of an evaluation image?

A model trained on a picture of its own test set scores too high, and nothing in the numbers shows
it. Each image gets a :class:`ImageSignature`:

- ``file_sha256``: the file's bytes (the same file under another name or folder);
- ``pixel_sha256``: the decoded uint8 RGB pixels and their shape (the same picture stored as PNG,
  BMP or any other lossless format);
- ``thumb``: a 32x32 grayscale (BT.601 luma) thumbnail, each pixel the mean of its area of the
  image. From its 16x16 2x2-averages come two perceptual hashes: the mean hash (256 bits: cell
  above the mean) and the difference hash (480 bits: cell brighter than its right-hand neighbour,
  then than the one below). Area averages barely move under JPEG re-encoding, a PNG<->JPEG
  conversion, a slight resize or a crop of a few pixels.

Two images are *near-identical* when, for one of the 8 flips and 90-degree rotations of the
evaluation image (training augments with those), the mean hashes differ in at most
:data:`AHASH_MAX` bits, the difference hashes in at most :data:`DHASH_MAX`, and the zero-mean
thumbnails correlate at :data:`CORR_MIN` or more. Measured on ../shared/data: copies of the 19
Set5/Set14 images re-encoded as JPEG (quality 75, 90), resized 0.5-1.1x, cropped by 2-4 px, flipped
or rotated stay within 33 / 57 bits and correlation >= 0.85; of the 491 x 19 distinct pairs (T91,
BSD200, BSDS500 test vs Set5/Set14) none comes within 96 bits of the difference hash (closest 168)
and the most correlated reaches 0.82 (with 199 bits), and of the 491 x 490 training pairs the
closest difference hash (88 bits) correlates at 0.22. The guard does not find a training image that
holds only a *part* (a crop much smaller than the whole) of an evaluation image.

Signatures are cached in SQLite (``~/.cache/workbench/image-signatures.sqlite``, or
``$WORKBENCH_SIGNATURE_CACHE``; ``off`` disables it), keyed by the file's resolved path, size and
modification time, so checking 491 training images against Set5 and Set14 decodes each image once
per machine and afterwards takes well under a second.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from workbench.data.images import read_image
from workbench.core.errors import WorkbenchError

#: Side of the stored thumbnail; the hashes use its 2x2 averages (16x16).
THUMB = 32
#: Most differing bits (of 256) of the mean hash for a near-identical pair.
AHASH_MAX = 56
#: Most differing bits (of 480) of the difference hash for a near-identical pair.
DHASH_MAX = 96
#: Least correlation of the zero-mean 32x32 thumbnails for a near-identical pair.
CORR_MIN = 0.8
#: Bumped whenever what a signature holds changes (older cache rows are ignored).
SIGNATURE_VERSION = 1

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ImageSignature:
    """What the guard knows of one image file (see the module docstring)."""

    path: str
    file_sha256: str
    pixel_sha256: str
    thumb: np.ndarray        # (THUMB, THUMB) float32 luma thumbnail, 0..255


def _area_resize(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """``gray`` (float) resized by area averaging (Pillow's box filter on a float image)."""
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.BOX), dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (float32, 0..255) of a uint8 (H, W, 3) image."""
    return rgb.astype(np.float32) @ _LUMA


def signature_of_array(rgb: np.ndarray, *, path: str = "", file_sha256: str = "") -> ImageSignature:
    """The signature of decoded pixels (``file_sha256`` as given: there is no file)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    digest = hashlib.sha256(f"{rgb.shape}".encode())
    digest.update(rgb.tobytes())
    gray = luma(rgb)
    return ImageSignature(path=path, file_sha256=file_sha256, pixel_sha256=digest.hexdigest(),
                          thumb=_area_resize(gray, THUMB, THUMB))


def compute_signature(path: str | os.PathLike) -> ImageSignature:
    """Read ``path`` and compute its signature (no cache)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkbenchError(f"{path}: cannot read image ({exc})") from None
    rgb = read_image(path)
    return signature_of_array(rgb, path=str(path), file_sha256=hashlib.sha256(data).hexdigest())


# -- hashes and comparison ----------------------------------------------------------------------

def _half(thumb: np.ndarray) -> np.ndarray:
    n = thumb.shape[0] // 2
    return thumb.reshape(n, 2, n, 2).mean(axis=(1, 3))


def mean_hash(thumb: np.ndarray) -> np.ndarray:
    """256 bools: each 16x16 area average above the thumbnail's mean."""
    small = _half(thumb)
    return (small > small.mean()).ravel()


def difference_hash(thumb: np.ndarray) -> np.ndarray:
    """480 bools: each 16x16 area average brighter than its right-hand neighbour (16x15), then
    than the one below it (15x16)."""
    small = _half(thumb)
    return np.concatenate([(small[:, 1:] > small[:, :-1]).ravel(), (small[1:, :] > small[:-1, :]).ravel()])


def _orientations(thumb: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and 90-degree rotations of a square thumbnail."""
    out = []
    for k in range(4):
        rot = np.rot90(thumb, k)
        out += [rot, rot[:, ::-1]]
    return [np.ascontiguousarray(o) for o in out]


def _zero_mean_unit(thumb: np.ndarray) -> np.ndarray:
    v = thumb.astype(np.float64).ravel()
    v = v - v.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 1e-9 else v


@dataclass(frozen=True)
class Match:
    """A training image found to be a copy of an evaluation image."""

    train: str
    eval: str
    kind: str              # "identical file", "identical pixels" or "near-identical"
    ahash_bits: int = 0
    dhash_bits: int = 0
    corr: float = 1.0

    def describe(self) -> str:
        if self.kind == "near-identical":
            return (f"{self.train} is a near-identical copy of the evaluation image {self.eval} "
                    f"(hash distances {self.ahash_bits}/{self.dhash_bits} bits, thumbnail "
                    f"correlation {self.corr:.3f})")
        return f"{self.train} is a copy of the evaluation image {self.eval} ({self.kind})"


class _EvalIndex:
    """Evaluation signatures prepared for comparison: hashes of all 8 orientations stacked."""

    def __init__(self, sigs: Sequence[ImageSignature]) -> None:
        self.sigs = list(sigs)
        self.by_file = {s.file_sha256: s for s in self.sigs if s.file_sha256}
        self.by_pixels = {s.pixel_sha256: s for s in self.sigs}
        a, d, v = [], [], []
        for s in self.sigs:
            orients = _orientations(s.thumb)
            a.append(np.stack([mean_hash(o) for o in orients]))
            d.append(np.stack([difference_hash(o) for o in orients]))
            v.append(np.stack([_zero_mean_unit(o) for o in orients]))
        n = len(self.sigs)
        self.ahash = np.stack(a) if n else np.zeros((0, 8, 256), bool)      # (E, 8, 256)
        self.dhash = np.stack(d) if n else np.zeros((0, 8, 480), bool)
        self.vec = np.stack(v) if n else np.zeros((0, 8, THUMB * THUMB))    # (E, 8, 1024)

    def distances(self, sig: ImageSignature) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(E, 8) mean-hash bits, difference-hash bits and thumbnail correlation to ``sig``."""
        a = (self.ahash != mean_hash(sig.thumb)).sum(axis=2)
        d = (self.dhash != difference_hash(sig.thumb)).sum(axis=2)
        c = self.vec @ _zero_mean_unit(sig.thumb)
        return a, d, c

    def match(self, sig: ImageSignature) -> Match | None:
        if sig.file_sha256 and sig.file_sha256 in self.by_file:
            return Match(sig.path, self.by_file[sig.file_sha256].path, "identical file")
        if sig.pixel_sha256 in self.by_pixels:
            return Match(sig.path, self.by_pixels[sig.pixel_sha256].path, "identical pixels")
        if not self.sigs:
            return None
        a, d, c = self.distances(sig)
        hit = (a <= AHASH_MAX) & (d <= DHASH_MAX) & (c >= CORR_MIN)
        if not hit.any():
            return None
        score = np.where(hit, c, -np.inf)
        e, o = np.unravel_index(int(np.argmax(score)), score.shape)
        return Match(sig.path, self.sigs[e].path, "near-identical", ahash_bits=int(a[e, o]),
                     dhash_bits=int(d[e, o]), corr=float(c[e, o]))


def near_duplicate(a: ImageSignature, b: ImageSignature) -> Match | None:
    """``a`` (training) against ``b`` (evaluation): a :class:`Match` or None."""
    return _EvalIndex([b]).match(a)


def find_leaks(train: Sequence[ImageSignature], evaluation: Sequence[ImageSignature]) -> list[Match]:
    """Every training signature that copies an evaluation one (in the order of ``train``)."""
    index = _EvalIndex(evaluation)
    return [m for m in (index.match(s) for s in train) if m is not None]


# -- the cache ----------------------------------------------------------------------------------

def default_cache_path() -> Path | None:
    env = os.environ.get("WORKBENCH_SIGNATURE_CACHE")
    if env:
        return None if env.lower() in ("off", "none", "0") else Path(env).expanduser()
    return Path.home() / ".cache" / "workbench" / "image-signatures.sqlite"


class SignatureCache:
    """Signatures by (resolved path, size, mtime); falls back to computing when SQLite fails
    (a read-only home, a locked database): the cache only saves time, it never decides."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), timeout=30)
            db.execute("CREATE TABLE IF NOT EXISTS signatures (path TEXT PRIMARY KEY, size INTEGER, "
                       "mtime_ns INTEGER, version INTEGER, file_sha256 TEXT, pixel_sha256 TEXT, "
                       "thumb BLOB)")
            db.commit()
            self._db = db
        except (sqlite3.Error, OSError):
            self._db = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "SignatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, path: str | os.PathLike) -> ImageSignature:
        path = Path(path)
        try:
            st = path.stat()
        except OSError:
            raise WorkbenchError(f"{path}: image file does not exist") from None
        key = str(path.resolve())
        if self._db is not None:
            try:
                row = self._db.execute(
                    "SELECT file_sha256, pixel_sha256, thumb FROM signatures WHERE path=? "
                    "AND size=? AND mtime_ns=? AND version=?",
                    (key, st.st_size, st.st_mtime_ns, SIGNATURE_VERSION)).fetchone()
            except sqlite3.Error:
                row = None
            if row is not None:
                return ImageSignature(
                    path=str(path), file_sha256=row[0], pixel_sha256=row[1],
                    thumb=np.frombuffer(row[2], dtype=np.float32).reshape(THUMB, THUMB).copy())
        sig = compute_signature(path)
        if self._db is not None:
            try:
                self._db.execute("INSERT OR REPLACE INTO signatures VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (key, st.st_size, st.st_mtime_ns, SIGNATURE_VERSION, sig.file_sha256,
                                  sig.pixel_sha256, sig.thumb.astype(np.float32).tobytes()))
                self._db.commit()
            except sqlite3.Error:
                pass
        return sig

    def many(self, paths: Iterable[str | os.PathLike], *, desc: str = "image signatures",
             progress: bool = True) -> list[ImageSignature]:
        from workbench.core.progress import tqdm

        paths = list(paths)
        return [self.get(p) for p in tqdm(paths, desc=desc, unit="img", leave=False,
                                          disable=not progress or len(paths) < 32 or None)]


def check_leakage(train_files: Sequence[str | os.PathLike], eval_files: Sequence[str | os.PathLike], *,
                  cache: SignatureCache | None = None, progress: bool = True) -> list[Match]:
    """Every training file that copies an evaluation file (identical bytes, pixels, or near)."""
    own = cache is None
    cache = cache if cache is not None else SignatureCache(default_cache_path())
    try:
        evals = cache.many(sorted(set(map(str, eval_files))), desc="evaluation signatures",
                           progress=progress)
        trains = cache.many([str(p) for p in train_files], desc="training signatures",
                            progress=progress)
    finally:
        if own:
            cache.close()
    return find_leaks(trains, evals)


def leak_message(matches: Sequence[Match], *, remedy: str | None = None) -> str:
    """One line: the first match, how many more, and ``remedy`` (default: how a recipe proceeds)."""
    first = matches[0]
    more = f" (and {len(matches) - 1} more training images)" if len(matches) > 1 else ""
    if remedy is None:
        remedy = (f"exclude it from the training source (exclude: [{Path(first.train).name}]) or set "
                  "data.leakage: warn to proceed anyway")
    return f"leakage: training image {first.describe()}{more}; {remedy}"


LEAKAGE_POLICIES = ("error", "warn", "off")


def guard_folder(train_folder: str | os.PathLike | None, eval_set: str | os.PathLike, *,
                 data_root: str | os.PathLike | None = None, policy: str = "error",
                 error_remedy: str, warn_remedy: str) -> list[Match]:
    """Apply a leakage ``policy`` to the images of ``train_folder`` (None: the shipped sample
    images) against evaluation set ``eval_set``: ``error`` raises a one-line
    :class:`WorkbenchError` naming both files (ending in ``error_remedy``), ``warn`` logs it
    (ending in ``warn_remedy``), ``off`` checks nothing. Returns the matches found."""
    import logging

    from workbench.data.images import list_images
    from workbench.data.training import sample_images_dir

    if policy not in LEAKAGE_POLICIES:
        raise WorkbenchError(f"leakage must be one of {', '.join(LEAKAGE_POLICIES)}, got {policy!r}")
    if policy == "off":
        return []
    train = list_images(train_folder if train_folder else sample_images_dir())
    matches = check_leakage(train, set_hr_files(eval_set, data_root=data_root))
    if matches and policy == "error":
        raise WorkbenchError(leak_message(matches, remedy=error_remedy))
    if matches:
        logging.getLogger("workbench.data").warning("warning: %s", leak_message(matches, remedy=warn_remedy))
    return matches


def set_hr_files(ref: str | os.PathLike, scale: int = 1, *,
                 data_root: str | os.PathLike | None = None) -> list[Path]:
    """The HR image files of an evaluation set reference, as :func:`~workbench.data.benchmark.load_set`
    would resolve it (a name under ``data_root``, the embedded Set5, or a folder); the HR files do
    not depend on ``scale`` (it only names the LR folder)."""
    from workbench.data.benchmark import _resolve, _split_layout
    from workbench.data.images import list_images

    folder, _ = _resolve(ref, Path(data_root) if data_root is not None else None)
    _, hr_dir, _ = _split_layout(folder, scale)
    return list_images(hr_dir)
