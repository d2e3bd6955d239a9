"""One checkpoint format for everything the workbench writes: the artifact.

An artifact is a folder::

    <name>/
      artifact.json   format, architecture (every channel width), metrics, lineage, config
      model.pt        the state_dict alone (tensors only: loads with weights_only=True)

It is written atomically (a temporary sibling folder, then a rename), so a crash or a full disk
leaves either the old artifact or the new one, never a mixture. :func:`load_model` also accepts a
single-file artifact (``save_artifact(..., single_file=True)``), a released ``.pth`` state dict
(widths are inferred from the tensor shapes) and a model name such as ``rlfn_s_x4``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import pickle
import platform
import shutil
import socket
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from workbench import __version__
from workbench.core.errors import ArtifactError, WorkbenchError, WriteError
from workbench.core.files import (_fsync_dir, atomic_torch_save, atomic_write_bytes,  # noqa: F401
                                  atomic_write_json, dir_mode, file_mode, sha256_bytes, sha256_file,
                                  torch_bytes)
from workbench.models import (FAMILIES, RLFN, RLFNSpec, build_model, create_model, family_of,
                              family_of_spec, get_family, parse_model_name, preset_family)

FORMAT = "workbench-artifact"
FORMAT_VERSION = 1
META_FILE = "artifact.json"
WEIGHTS_FILE = "model.pt"


@dataclass
class Artifact:
    """A loaded model and what is known about it."""

    model: RLFN  # or any family's model (SPAN, ...): see workbench.models.family
    spec: RLFNSpec  # the model's family spec
    path: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "model"


# -- lineage --------------------------------------------------------------------------------

def state_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and values in key order): an identity for
    models that have no file, e.g. a teacher taken from a stage's parent in memory."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def environment() -> dict[str, Any]:
    """Versions and device facts recorded with every artifact and measurement."""
    info: dict[str, Any] = {
        "workbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_lineage(*, parent: "Artifact | str | os.PathLike | None" = None, seed: int | None = None,
                 stage: str | None = None, recipe_sha256: str | None = None,
                 device: str | None = None, **extra: Any) -> dict[str, Any]:
    """The lineage record: where the weights came from and what produced them."""
    lineage: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed, "stage": stage, "recipe_sha256": recipe_sha256,
        "device": device or "cpu", "environment": environment(),
    }
    if isinstance(parent, Artifact):
        lineage["parent"] = str(parent.path) if parent.path else None
        lineage["parent_weights_sha256"] = parent.weights_sha256
    elif parent is not None:
        lineage["parent"] = str(parent)
    lineage.update(extra)
    return lineage


# -- save -----------------------------------------------------------------------------------

def _meta(model: RLFN, weights_sha: str, metrics: Mapping[str, Any] | None,
          lineage: Mapping[str, Any] | None, config: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "family": family_of(model).name,
        "architecture": model.spec.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "weights_sha256": weights_sha,
        "metrics": dict(metrics or {}), "lineage": dict(lineage or {}), "config": dict(config or {}),
    }


def is_artifact_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding a workbench artifact.json (what :func:`save_artifact` may replace)."""
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def save_artifact(path: str | os.PathLike, model: RLFN, *, metrics: Mapping[str, Any] | None = None,
                  lineage: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                  single_file: bool = False, force: bool = False,
                  extra_files: Mapping[str, bytes] | None = None) -> Path:
    """Write ``model`` (its spec and weights) and what is known about it, atomically.

    ``single_file`` writes one ``.pt`` holding metadata and weights instead of a folder. An
    existing artifact folder at ``path`` is replaced; anything else there (a folder of other
    files, a file) is refused with a WorkbenchError unless ``force``. ``extra_files`` (name ->
    bytes, folder artifacts only) are written into the folder in the same atomic step, e.g. the
    int8 quantization state ``quant.pt``.
    """
    path = Path(path)
    if not single_file and (path.exists() or path.is_symlink()) and not force and not is_artifact_folder(path):
        what = "folder" if path.is_dir() else "file"
        raise WorkbenchError(f"{path}: exists and is not a workbench artifact (a {what}); not "
                             "replaced: choose another path, remove it, or pass --force")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    weights = torch_bytes(state)
    meta = _meta(model, sha256_bytes(weights), metrics, lineage, config)
    if single_file:
        if extra_files:
            raise WorkbenchError("extra files need a folder artifact, not single_file")
        atomic_torch_save({"format": FORMAT, "meta_json": json.dumps(meta, default=str),
                           "state_dict": state}, path)
        return path
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, dir_mode())
        files = [(WEIGHTS_FILE, weights),
                 (META_FILE, (json.dumps(meta, indent=2, default=str) + "\n").encode()),
                 *dict(extra_files or {}).items()]
        for name, data in files:
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        tmp = None
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(path, exc) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    return path


def update_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
    """Merge ``metrics`` into a folder artifact's artifact.json (atomically)."""
    meta_path = Path(path) / META_FILE
    meta = json.loads(meta_path.read_text())
    meta.setdefault("metrics", {}).update(metrics)
    atomic_write_json(meta_path, meta)


# -- load -----------------------------------------------------------------------------------

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"),
          (b"\xff\xd8\xff", "a JPEG image"), (b"BM", "a BMP image"), (b"RIFF", "a RIFF (WebP/WAV) file"),
          (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"),
          (b"\x1f\x8b", "a gzip archive"), (b"7z\xbc\xaf", "a 7-zip archive"))
#: The longest error detail a message quotes (a damaged file can make torch's text huge).
_DETAIL_CHARS = 160


def _short(text: object) -> str:
    line = (str(text).strip().splitlines() or [""])[0]
    return line if len(line) <= _DETAIL_CHARS else line[:_DETAIL_CHARS] + "..."


def sniff_file_kind(head: bytes) -> str | None:
    """What a file that is not a torch checkpoint is, from its first bytes (None: may be torch).

    torch.save writes a zip archive (``PK``); files of torch < 1.6 are a pickle (``\\x80``).
    Anything else is named, so that an image or a text file given as ``.pth`` is reported as
    what it is rather than as pickled code.
    """
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        # a cut multi-byte character at the end of the sample is still text
        try:
            head[:-3].decode("utf-8")
            return "a text file" if len(head) > 3 else "unrecognised binary data"
        except UnicodeDecodeError:
            return "unrecognised binary data"


def describe_load_failure(exc: BaseException) -> str:
    """One line for a failed ``torch.load(weights_only=True)``, without torch's advice.

    torch's message suggests ``weights_only=False`` "will likely succeed"; this workbench never
    suggests it (it runs arbitrary code), so only the diagnosis is kept.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        if "GLOBAL" in text or "Unsupported global" in text:
            return ("refused: the file contains pickled code or objects, not only tensors "
                    "(loading with weights_only=True)")
        return "corrupt checkpoint (its pickle data cannot be read)"
    if isinstance(exc, (zipfile.BadZipFile, EOFError)) or "PytorchStreamReader" in text \
            or "zip archive" in text:
        return "truncated or corrupt checkpoint (the torch archive cannot be read)"
    detail = _short(text) or type(exc).__name__
    return f"not a readable checkpoint ({type(exc).__name__}: {detail})"


def _torch_load(path: Path, data: bytes | None = None) -> Any:
    """torch.load(weights_only=True) with every failure turned into a one-line ArtifactError."""
    try:
        if data is None:
            with open(path, "rb") as fh:
                head = fh.read(64)
        else:
            head = data[:64]
    except OSError as exc:
        raise ArtifactError(path, f"cannot read ({exc.strerror or exc})") from None
    kind = sniff_file_kind(head)
    if kind is not None:
        raise ArtifactError(path, f"{kind}, not a torch checkpoint")
    try:
        import warnings

        source = io.BytesIO(data) if data is not None else path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except MemoryError:
        raise ArtifactError(path, "corrupt checkpoint (declares more data than fits in memory)") from None
    except Exception as exc:  # noqa: BLE001 - any damage is reported as one line
        raise ArtifactError(path, describe_load_failure(exc)) from None


def _spec_of_state_dict(path: Path, obj: Mapping[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """A bare state dict: the first family that claims its (normalised) keys infers the spec."""
    from workbench.models.family import _load_entry_points

    _load_entry_points()
    first_error = None
    for fam in FAMILIES.values():
        state = fam.normalize_state_dict(obj)
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ArtifactError(path, "holds values that are not tensors: not a state dict")
        if not fam.claims(state):
            continue
        try:
            return fam.spec_from_state_dict(state), state
        except ValueError as exc:
            first_error = first_error or f"wrong architecture ({exc})"
    if first_error:
        raise ArtifactError(path, first_error)
    fallback = get_family("rlfn")  # its message names what an RLFN needs
    state = fallback.normalize_state_dict(obj)
    try:
        fallback.spec_from_state_dict(state)
    except ValueError as exc:
        raise ArtifactError(path, f"wrong architecture ({exc}; known families: "
                                  f"{', '.join(FAMILIES)})") from None
    raise ArtifactError(path, "no model family recognises these weights")


def _build_and_load(path: Path, spec: RLFNSpec, state: Mapping[str, torch.Tensor]) -> RLFN:
    model = build_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        detail = _short("; ".join(lines[1:3]) if len(lines) > 1 else lines[0])
        raise ArtifactError(path, f"weights do not match the architecture it declares ({detail})") from None
    return model


def _check_state(path: Path, state: Any) -> None:
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ArtifactError(path, "weights file does not hold a state dict of named tensors")


def _from_meta(path: Path, meta: Any, state: Any, sha: str | None) -> Artifact:
    if not isinstance(meta, Mapping):
        raise ArtifactError(path, f"corrupt metadata ({META_FILE} holds a {type(meta).__name__}, "
                                  "not a mapping)")
    if meta.get("format") != FORMAT:
        raise ArtifactError(path, f"not a workbench artifact (format {_short(repr(meta.get('format')))})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ArtifactError(path, f"corrupt metadata (format_version {_short(repr(version))} is not "
                                  "a non-negative integer)")
    if version > FORMAT_VERSION:
        raise ArtifactError(path, f"written by a newer workbench (format version "
                                  f"{version} > {FORMAT_VERSION}); upgrade to read it")
    for key in ("metrics", "lineage", "config"):
        if not isinstance(meta.get(key, {}), Mapping):
            raise ArtifactError(path, f"corrupt metadata ({key!r} is a "
                                      f"{type(meta[key]).__name__}, not a mapping)")
    family = meta.get("family", "rlfn")  # artifacts written before families existed are RLFN
    if not isinstance(family, str):
        raise ArtifactError(path, f"wrong family record {_short(repr(family))}")
    try:
        spec = get_family(family).spec_from_dict(meta["architecture"])
    except WorkbenchError as exc:
        raise ArtifactError(path, str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(path, f"wrong architecture record ({_short(exc)})") from None
    _check_state(path, state)
    declared = spec.param_count() if hasattr(spec, "param_count") else None
    held = sum(int(v.numel()) for v in state.values())
    if declared is not None and declared != held:
        raise ArtifactError(path, f"weights do not match the architecture it declares "
                                  f"({held:,} values in the weights, {declared:,} declared)")
    model = _build_and_load(path, spec, state)
    return Artifact(model=model, spec=spec, path=path, metrics=dict(meta.get("metrics", {})),
                    lineage=dict(meta.get("lineage", {})), config=dict(meta.get("config", {})),
                    weights_sha256=sha or meta.get("weights_sha256"))


def _attach_quantization(path: Path, meta: Mapping[str, Any], art: Artifact) -> None:
    """An int8 artifact (``config.quantization`` and ``quant.pt``): load the quantization state
    (weights_only, hash-checked) and attach it to the model as ``model.quantization`` for
    :func:`workbench.measure.deploy.prepare` (mode ``int8``); the fp32 weights load as usual."""
    qmeta = (meta.get("config") or {}).get("quantization")
    if not qmeta:
        return
    from workbench.measure.quantize import QUANT_FILE, load_quant_state

    qpath = path / qmeta.get("file", QUANT_FILE)
    if not qpath.is_file():
        raise ArtifactError(path, f"int8 artifact without its quantization state {qpath.name}")
    if qmeta.get("sha256") and sha256_file(qpath) != qmeta["sha256"]:
        raise ArtifactError(qpath, f"does not match the hash recorded in {META_FILE}")
    cfg, state = load_quant_state(qpath)
    art.model.quantization = {"config": cfg, "state": state}


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Load an artifact folder, a single-file artifact or a released ``.pth`` state dict.

    Every problem raises :class:`ArtifactError` with the file and what is wrong in one line.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(path, "no such file or folder")
    if path.is_dir():
        meta_path = path / META_FILE
        weights_path = path / WEIGHTS_FILE
        if not meta_path.is_file():
            raise ArtifactError(path, f"not an artifact folder (no {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ArtifactError(meta_path, f"corrupt metadata ({_short(exc)})") from None
        if not isinstance(meta, Mapping):
            raise ArtifactError(meta_path, f"corrupt metadata (holds a {type(meta).__name__}, "
                                           "not a mapping)")
        if not weights_path.is_file():
            raise ArtifactError(path, f"artifact folder has no {WEIGHTS_FILE}")
        data = weights_path.read_bytes()
        state = _torch_load(weights_path, data)
        sha = sha256_bytes(data)
        expected = meta.get("weights_sha256") if isinstance(meta, Mapping) else None
        if not isinstance(expected, str) or len(expected) != 64:
            # Without the hash a changed or swapped model.pt would load unnoticed.
            raise ArtifactError(meta_path, "no valid weights_sha256 (the SHA-256 of model.pt): the "
                                           "weights cannot be verified, so the artifact is refused")
        if expected != sha:
            raise ArtifactError(weights_path, "weights do not match the hash recorded in "
                                              f"{META_FILE} (file changed or corrupt)")
        art = _from_meta(path, meta, state, sha)
        _attach_quantization(path, meta, art)
        return art
    if path.stat().st_size == 0:
        raise ArtifactError(path, "empty file")
    data = path.read_bytes()
    obj = _torch_load(path, data)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        try:
            meta = json.loads(obj["meta_json"])
        except (KeyError, TypeError, json.JSONDecodeError, RecursionError) as exc:
            raise ArtifactError(path, f"corrupt metadata ({_short(exc)})") from None
        return _from_meta(path, meta, obj.get("state_dict"), None)
    if not isinstance(obj, Mapping):
        raise ArtifactError(path, f"holds a {type(obj).__name__}, not a state dict")
    if not all(isinstance(k, str) for k in obj):
        raise ArtifactError(path, "holds keys that are not names: not a state dict")
    spec, state = _spec_of_state_dict(path, obj)
    model = _build_and_load(path, spec, state)
    return Artifact(model=model, spec=spec, path=path, weights_sha256=sha256_bytes(data),
                    lineage={"source": "state dict file", "file": str(path)})


def load_model(ref: str | os.PathLike) -> Artifact:
    """Resolve a model reference: an artifact or checkpoint path, or a name like ``rlfn_s_x4``.

    A name loads the released weights; a name without them is refused unless the random
    initialisation is explicit: ``random:rlfn_s_x3``, or a tiny test model (``rlfn_tiny_x4``).
    """
    from workbench.models import RANDOM_PREFIX, released_weights

    text = str(ref)
    candidate = Path(text)
    if candidate.exists() or os.sep in text or text.endswith((".pt", ".pth")):
        return load_artifact(candidate)
    try:
        parse_model_name(text[len(RANDOM_PREFIX):] if text.startswith(RANDOM_PREFIX) else text)
    except WorkbenchError:
        raise WorkbenchError(f"{text}: no such file or folder, and not a model name "
                             f"(e.g. rlfn_s_x4, rlfn_ntire_x4, rlfn_tiny_x4, random:rlfn_s_x3)") from None
    released = released_weights(text)
    if released is not None:
        from workbench.models import PRESETS

        # the preset's spec, not one guessed from shapes: it carries what weights cannot tell
        # (input range, SPAN's tap)
        preset, scale = parse_model_name(text)
        fam = preset_family(preset)
        spec = PRESETS[preset].spec(scale)
        data = released.read_bytes()
        obj = _torch_load(released, data)
        if not isinstance(obj, Mapping):
            raise ArtifactError(released, f"holds a {type(obj).__name__}, not a state dict")
        model = _build_and_load(released, spec, fam.normalize_state_dict(obj))
        return Artifact(model=model, spec=spec, path=released, weights_sha256=sha256_bytes(data),
                        lineage={"source": "released checkpoint", "name": text,
                                 "file": str(released)})
    model = create_model(text)
    return Artifact(model=model, spec=model.spec, path=None,
                    lineage={"source": "random initialisation", "name": text})
