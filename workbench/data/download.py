"""Download, verify and unpack the training sets (DIV2K, Flickr2K, BSDS500) into the layout training
expects.

Each archive is fetched into ``<root>/<archive>.part``; an interrupted download resumes from the
partial file with an HTTP ``Range`` request (a server that ignores it is restarted from zero).
The finished file is checked against its checksum: a mismatch keeps the file aside as
``<archive>.bad`` and unpacks nothing. Archives are unpacked into a temporary folder under the
root and then moved into place, so a crash never leaves a half-unpacked data folder that a later
run would mistake for a finished one; a second run finds the folders and does nothing.

Checksums: the SHA-256 and sizes recorded below are those published by TensorFlow Datasets
(``url_checksums/div2k.txt``: train/valid HR and bicubic X2) and the Git LFS pointers of a
Hugging Face mirror of the same zips (``goodfellowliu/DIV2K``: train bicubic X3 and X4, valid
bicubic X3; its pointers agree with TFDS on the three files compared, train HR and train/valid
X2). No checksum was found published for ``DIV2K_valid_LR_bicubic_X4.zip`` or ``Flickr2K.tar``:
those are verified only against a checksum the user passes (``--checksum``); otherwise the
computed SHA-256 is printed and stored beside the data for later comparison.

BSDS500 (``BSR_bsds500.tgz`` from Berkeley, 70,763,455 bytes): its SHA-256 is not published by
Berkeley; the one recorded is the value several independent projects pin for the official archive
(dataset manifests and download scripts on GitHub, all agreeing with the size above). Only the
images are unpacked, as the archive holds them (JPEG): ``images/train`` (200) into ``BSD200/`` and
``images/test`` (200) into ``BSDS500-test200/``. ``images/val`` (100) is left out on purpose: it is
the BSDS300 test set, i.e. the B100 evaluation set, and must never be trained on. The images are
for non-commercial research and education only (:data:`BSDS500_NOTICE`).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Sequence

from workbench.core.errors import WorkbenchError

DIV2K_BASE_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
FLICKR2K_URL = "https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar"
BSDS500_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"
BSDS500_NOTICE = (
    "licence: the BSDS500 images (Berkeley Segmentation Dataset and Benchmark; D. Martin et al., "
    "ICCV 2001; P. Arbelaez et al., TPAMI 2011) are photographs from the Corel image database, "
    "free of charge for non-commercial research and educational purposes only; do not "
    "redistribute them or commit them to a repository")
#: Folder under the data root where completion records are kept.
RECORD_DIR = ".workbench-download"
USER_AGENT = "workbench-data-download/1"


@dataclass(frozen=True)
class Archive:
    """One downloadable archive and the folder (relative to the root) it provides."""

    name: str
    url: str
    provides: str
    size: int | None = None
    sha256: str | None = None
    #: (folder inside the archive, folder under the root): when given, only the image files
    #: directly inside each archive folder are unpacked, into its folder (nothing else is).
    members: tuple[tuple[str, str], ...] = ()
    #: printed whenever the archive is fetched or found (a licence note)
    notice: str = ""

    @property
    def targets(self) -> tuple[str, ...]:
        """Every folder (relative to the root) the archive provides."""
        return tuple(t for _, t in self.members) if self.members else (self.provides,)


def _div2k(name: str, provides: str, size: int | None, sha256: str | None) -> Archive:
    return Archive(name=name, url=DIV2K_BASE_URL + name, provides=provides, size=size, sha256=sha256)


# name -> archive; sizes and SHA-256 as published (see the module docstring for the sources).
KNOWN_ARCHIVES: dict[str, Archive] = {a.name: a for a in [
    _div2k("DIV2K_train_HR.zip", "DIV2K_train_HR", 3530603713,
           "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"),
    _div2k("DIV2K_train_LR_bicubic_X2.zip", "DIV2K_train_LR_bicubic/X2", 925390592,
           "a53a424317575838dadce4bcd97cf7b744d6855f43740ed5f0245af3cf4bd850"),
    _div2k("DIV2K_train_LR_bicubic_X3.zip", "DIV2K_train_LR_bicubic/X3", 427847282,
           "ad5c8e5507e2765823d3c2c5bd0934842efcd487c5370604c224090898b3163a"),
    _div2k("DIV2K_train_LR_bicubic_X4.zip", "DIV2K_train_LR_bicubic/X4", 246914039,
           "f006b837f4eb52b82909aa01478e6d6d199eefce932179491d0c9dbb706dde3a"),
    _div2k("DIV2K_valid_HR.zip", "DIV2K_valid_HR", 448993893,
           "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"),
    _div2k("DIV2K_valid_LR_bicubic_X2.zip", "DIV2K_valid_LR_bicubic/X2", 117763600,
           "60eed9875c697df51204aa579e2a699e1d5215095788a097ff54dd17e2664d57"),
    _div2k("DIV2K_valid_LR_bicubic_X3.zip", "DIV2K_valid_LR_bicubic/X3", 54513392,
           "04b9a2ed3b4a0715d3924d3ae8514830c3328fac8d30512ce716d6f419e052a3"),
    _div2k("DIV2K_valid_LR_bicubic_X4.zip", "DIV2K_valid_LR_bicubic/X4", None, None),
    Archive(name="Flickr2K.tar", url=FLICKR2K_URL, provides="Flickr2K/Flickr2K_HR"),
    Archive(name="BSR_bsds500.tgz", url=BSDS500_URL, provides="BSD200", size=70763455,
            sha256="97e49d31764f3912f0c4122707d53062ac9e783ba0f095e447a4d53c1a41af8e",
            members=(("BSR/BSDS500/data/images/train", "BSD200"),
                     ("BSR/BSDS500/data/images/test", "BSDS500-test200")),
            notice=BSDS500_NOTICE),
]}

DATASETS = ("div2k", "flickr2k", "bsds500")


def dataset_archives(dataset: str, *, scales: Sequence[int] = (2, 3, 4), valid: bool = True,
                     hr: bool = True) -> list[Archive]:
    """The archives that make up ``dataset`` for the given bicubic LR ``scales``."""
    if dataset == "flickr2k":
        return [KNOWN_ARCHIVES["Flickr2K.tar"]]
    if dataset == "bsds500":
        return [KNOWN_ARCHIVES["BSR_bsds500.tgz"]]
    if dataset != "div2k":
        raise WorkbenchError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    for s in scales:
        if s not in (2, 3, 4):
            raise WorkbenchError(f"DIV2K has bicubic LR for x2, x3 and x4 only, not x{s}")
    splits = ("train", "valid") if valid else ("train",)
    names = []
    for split in splits:
        if hr:
            names.append(f"DIV2K_{split}_HR.zip")
        names.extend(f"DIV2K_{split}_LR_bicubic_X{s}.zip" for s in sorted(set(scales)))
    return [KNOWN_ARCHIVES[n] for n in names]


def with_mirror(archive: Archive, url: str | None) -> Archive:
    """``archive`` fetched from ``url``: a full URL ending in the archive name, or a base URL."""
    if not url:
        return archive
    full = url if url.rstrip("/").endswith("/" + archive.name) else url.rstrip("/") + "/" + archive.name
    return replace(archive, url=full)


# -- checksums ---------------------------------------------------------------------------------

def parse_checksum(text: str) -> tuple[str, str]:
    """``(algorithm, hex)`` from ``sha256:HEX``, ``md5:HEX`` or a bare HEX (length picks the kind)."""
    text = text.strip().lower()
    if ":" in text:
        algo, _, digest = text.partition(":")
    else:
        digest = text
        algo = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(text), "")
    lengths = {"md5": 32, "sha1": 40, "sha256": 64}
    if algo not in lengths or len(digest) != lengths[algo] or any(c not in "0123456789abcdef" for c in digest):
        raise WorkbenchError(f"checksum {text!r}: expected sha256:HEX (64 hex digits), md5:HEX (32) "
                             "or a bare hex digest")
    return algo, digest


def file_digest(path: Path, algo: str, *, progress: bool = True) -> str:
    """Hex digest of a file, read in 1 MiB chunks with a progress bar for big files."""
    from workbench.core.progress import tqdm

    digest = hashlib.new(algo)
    size = path.stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, leave=False,
                                      desc=f"verify {path.name}",
                                      disable=not progress or size < (64 << 20)) as bar:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# -- download ----------------------------------------------------------------------------------

def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            return exc  # the partial file may already hold everything
        raise WorkbenchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WorkbenchError(f"{url}: cannot connect ({reason})") from None


def _total_size(response, start: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def _fetch_once(url: str, part: Path, *, expected_size: int | None, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (one HTTP request). Raises on an interrupted transfer."""
    from workbench.core.progress import tqdm

    start = part.stat().st_size if part.exists() else 0
    if expected_size is not None and start > expected_size:
        part.unlink()  # longer than the archive can be: not a prefix of it
        start = 0
    response = _open(url, start, timeout)
    if isinstance(response, urllib.error.HTTPError):  # 416 on a resume
        total = _total_size(response, 0)
        response.close()
        if total is not None and total == start:
            return
        part.unlink()
        response = _open(url, 0, timeout)
        start = 0
    with response:
        status = getattr(response, "status", 200)
        if start and status != 206:
            start = 0  # the server ignored Range: start over
        total = _total_size(response, start)
        if expected_size is not None and total is not None and total != expected_size:
            raise WorkbenchError(f"{url}: the server offers {total} bytes, but the archive is "
                                 f"{expected_size} bytes; wrong file or URL")
        mode = "ab" if start else "wb"
        with open(part, mode) as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=part.name[: -len(".part")],
                                           disable=not progress, file=sys.stderr) as bar:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    got = part.stat().st_size
    want = expected_size if expected_size is not None else total
    if want is not None and got > want:
        raise WorkbenchError(f"{url}: received {got} bytes, more than the {want} announced")
    if want is not None and got < want:
        raise http.client.IncompleteRead(b"", want - got)


def download_file(url: str, dest: Path, *, checksum: str | None = None, size: int | None = None,
                  retries: int = 3, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with resume and verification; returns ``dest``.

    The bytes go to ``dest.part`` first. An interrupted transfer is resumed (up to ``retries``
    more requests); if it still fails the partial file stays for the next call to resume.
    ``checksum`` (``sha256:HEX``, ``md5:HEX``) is checked once the file is complete: a mismatch
    moves the file to ``dest.bad`` and raises. An existing ``dest`` is only verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not dest.exists():
        attempt = 0
        while True:
            try:
                _fetch_once(url, part, expected_size=size, timeout=timeout, progress=progress)
                break
            except (http.client.HTTPException, OSError) as exc:  # includes timeouts, resets
                attempt += 1
                have = part.stat().st_size if part.exists() else 0
                if attempt > retries:
                    raise WorkbenchError(f"{url}: download interrupted after {have} bytes "
                                         f"({type(exc).__name__}); the partial file {part} is kept "
                                         "and the next run resumes from it") from None
        os.replace(part, dest)
    if size is not None and dest.stat().st_size != size:
        bad = _set_aside(dest)
        raise WorkbenchError(f"{url}: size {bad.stat().st_size} bytes, expected {size}; the file was "
                             f"kept as {bad} and not unpacked")
    if checksum:
        algo, want = parse_checksum(checksum)
        got = file_digest(dest, algo, progress=progress)
        if got != want:
            bad = _set_aside(dest)
            raise WorkbenchError(f"{url}: {algo} checksum mismatch (expected {want}, got {got}); the "
                                 f"file was kept as {bad} and not unpacked")
    return dest


def _set_aside(path: Path) -> Path:
    bad = path.with_name(path.name + ".bad")
    os.replace(path, bad)
    return bad


# -- unpacking ---------------------------------------------------------------------------------

def _safe_member(name: str, archive: Path) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise WorkbenchError(f"{archive}: refuses to unpack the unsafe member path {name!r}")


def _merge_tree(src: Path, dst: Path) -> None:
    """Move ``src`` into ``dst``: whole folders by rename where ``dst`` has none yet."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge_tree(child, dst / child.name)
        src.rmdir()
        return
    os.replace(src, dst)


def unpack(archive: Path, root: Path) -> None:
    """Unpack a .zip or .tar archive into ``root`` via a temporary folder beside the data."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    _safe_member(member, archive)
                zf.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _safe_member(member.name, archive)
                    if not (member.isfile() or member.isdir()):
                        raise WorkbenchError(f"{archive}: refuses to unpack the link or device "
                                             f"member {member.name!r}")
                try:
                    tf.extractall(staging, filter="data")
                except TypeError:  # Python without extraction filters; members were checked above
                    tf.extractall(staging)
        else:
            raise WorkbenchError(f"{archive}: not a zip or tar archive")
        for child in list(staging.iterdir()):
            _merge_tree(child, root / child.name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise WorkbenchError(f"{archive}: corrupt archive ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def unpack_members(archive: Path, root: Path, members: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Unpack only the image files directly inside each archive folder of ``members`` into its
    folder under ``root`` (via a temporary folder); returns the number of images per folder."""
    from workbench.data.images import IMAGE_SUFFIXES

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    wanted = {PurePosixPath(src): dst for src, dst in members}
    counts = {dst: 0 for _, dst in members}
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                entries = [(n, n.endswith("/"), lambda n=n: zf.read(n)) for n in zf.namelist()]
                _write_members(archive, entries, staging, wanted, counts, IMAGE_SUFFIXES)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                entries = [(m.name, not m.isfile(), lambda m=m: tf.extractfile(m).read())
                           for m in tf.getmembers()]
                _write_members(archive, entries, staging, wanted, counts, IMAGE_SUFFIXES)
        else:
            raise WorkbenchError(f"{archive}: not a zip or tar archive")
        for dst in counts:
            if (staging / dst).is_dir():
                _merge_tree(staging / dst, root / dst)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise WorkbenchError(f"{archive}: corrupt archive ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _write_members(archive: Path, entries, staging: Path, wanted: dict, counts: dict,
                   suffixes: Sequence[str]) -> None:
    for name, is_dir, read in entries:
        _safe_member(name, archive)
        pure = PurePosixPath(name.replace("\\", "/"))
        dst = wanted.get(pure.parent)
        if is_dir or dst is None or pure.suffix.lower() not in suffixes or pure.name.startswith("."):
            continue
        target = staging / dst / pure.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read())
        counts[dst] += 1


# -- the whole job -----------------------------------------------------------------------------

def _record_path(root: Path, archive: Archive) -> Path:
    return root / RECORD_DIR / f"{archive.name}.json"


def is_installed(root: Path, archive: Archive) -> bool:
    """True when every folder ``archive`` provides is present (unpacking moves each in whole)."""
    for target in archive.targets:
        folder = root / target
        if not (folder.is_dir() and any(folder.iterdir())):
            return False
    return True


def fetch_archive(archive: Archive, root: Path, *, checksum: str | None = None, keep_archive: bool = False,
                  retries: int = 3, timeout: float = 60.0, progress: bool = True,
                  log=print) -> bool:
    """Make ``root/archive.provides`` exist: download, verify, unpack. False if it already did."""
    root = Path(root)
    if archive.notice:
        log(f"{archive.name}: {archive.notice}")
    if is_installed(root, archive):
        where = ", ".join(str(root / t) for t in archive.targets)
        log(f"{archive.name}: {where} {'is' if len(archive.targets) == 1 else 'are'} present, nothing to do")
        return False
    expected = checksum or (f"sha256:{archive.sha256}" if archive.sha256 else None)
    dest = root / archive.name
    log(f"{archive.name}: downloading {archive.url}")
    download_file(archive.url, dest, checksum=expected, size=archive.size, retries=retries,
                  timeout=timeout, progress=progress)
    algo, digest = parse_checksum(expected) if expected else ("", "")
    sha = digest if algo == "sha256" else file_digest(dest, "sha256", progress=progress)
    if not expected:
        log(f"{archive.name}: no published checksum to verify against; sha256 {sha} (recorded)")
    log(f"{archive.name}: unpacking into {root}")
    if archive.members:
        # a folder already there (e.g. BSD200 as PNGs) is kept as it is, not merged into
        todo = [(src, dst) for src, dst in archive.members
                if not ((root / dst).is_dir() and any((root / dst).iterdir()))]
        counts = unpack_members(dest, root, todo)
        for (src, dst), n in zip(todo, counts.values()):
            log(f"{archive.name}: {n} images from {src} -> {root / dst} (stored as in the archive)")
    else:
        unpack(dest, root)
    if not is_installed(root, archive):
        missing = [t for t in archive.targets if not (root / t).is_dir()]
        raise WorkbenchError(f"{dest}: unpacked, but it did not contain the expected folder "
                             f"{', '.join(missing) or archive.provides}")
    record = {"archive": archive.name, "url": archive.url, "sha256": sha,
              "verified": bool(expected), "provides": archive.provides}
    if archive.members:
        record["folders"] = list(archive.targets)
    from workbench.core.files import atomic_write_json

    atomic_write_json(_record_path(root, archive), record)
    if not keep_archive:
        dest.unlink()
    return True


def download_dataset(dataset: str, root: Path, *, scales: Sequence[int] = (2, 3, 4), valid: bool = True,
                     url: str | None = None, checksum: str | None = None, keep_archives: bool = False,
                     retries: int = 3, timeout: float = 60.0, progress: bool = True, log=print) -> list[str]:
    """Download and unpack every archive of ``dataset`` into ``root``; returns those fetched.

    ``url`` replaces the official host (a mirror base URL, or the full URL of a single archive);
    ``checksum`` is the expected checksum when exactly one archive is fetched.
    """
    archives = [with_mirror(a, url) for a in dataset_archives(dataset, scales=scales, valid=valid)]
    pending = [a for a in archives if not is_installed(Path(root), a)]
    if checksum and len(pending) > 1:
        raise WorkbenchError(f"--checksum names one archive's checksum, but {len(pending)} archives "
                             f"are to be fetched ({', '.join(a.name for a in pending)})")
    fetched = []
    for archive in archives:
        if fetch_archive(archive, Path(root), checksum=checksum, keep_archive=keep_archives,
                         retries=retries, timeout=timeout, progress=progress, log=log):
            fetched.append(archive.name)
    return fetched


def read_record(root: Path, archive_name: str) -> dict | None:
    """The completion record written after ``archive_name`` was unpacked under ``root``."""
    path = Path(root) / RECORD_DIR / f"{archive_name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())
