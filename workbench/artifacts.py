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
from workbench.errors import ArtifactError, WorkbenchError
from workbench.models import (RLFN, RLFNSpec, build_model, create_model, normalize_state_dict,
                              parse_model_name, spec_from_state_dict)

FORMAT = "workbench-artifact"
FORMAT_VERSION = 1
META_FILE = "artifact.json"
WEIGHTS_FILE = "model.pt"


@dataclass
class Artifact:
    """A loaded model and what is known about it."""

    model: RLFN
    spec: RLFNSpec
    path: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "model"


# -- low-level atomic writes ------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename; the old file survives errors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through :func:`atomic_write_bytes` (serialised in memory first)."""
    atomic_write_bytes(path, torch_bytes(obj))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- lineage --------------------------------------------------------------------------------

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
        "architecture": model.spec.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "weights_sha256": weights_sha,
        "metrics": dict(metrics or {}), "lineage": dict(lineage or {}), "config": dict(config or {}),
    }


def save_artifact(path: str | os.PathLike, model: RLFN, *, metrics: Mapping[str, Any] | None = None,
                  lineage: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                  single_file: bool = False, extra_files: Mapping[str, bytes] | None = None) -> Path:
    """Write ``model`` (its spec and weights) and what is known about it, atomically.

    ``single_file`` writes one ``.pt`` holding metadata and weights instead of a folder.
    ``extra_files`` (name -> bytes, folder artifacts only) are written into the folder in the same
    atomic step, e.g. the int8 quantization state ``quant.pt``.
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    weights = torch_bytes(state)
    meta = _meta(model, sha256_bytes(weights), metrics, lineage, config)
    if single_file:
        if extra_files:
            raise WorkbenchError("extra files need a folder artifact, not single_file")
        atomic_torch_save({"format": FORMAT, "meta_json": json.dumps(meta, default=str),
                           "state_dict": state}, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        files = [(WEIGHTS_FILE, weights),
                 (META_FILE, (json.dumps(meta, indent=2, default=str) + "\n").encode()),
                 *dict(extra_files or {}).items()]
        for name, data in files:
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
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

def _torch_load(path: Path, data: bytes | None = None) -> Any:
    """torch.load(weights_only=True) with every failure turned into a one-line ArtifactError."""
    try:
        source = io.BytesIO(data) if data is not None else path
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise ArtifactError(path, "refused: the file contains pickled code or objects, not only "
                                      "tensors (loading with weights_only=True)") from None
        raise ArtifactError(path, f"not a readable checkpoint ({first})") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        text = str(exc)
        if "PytorchStreamReader" in text or "zip archive" in text or isinstance(exc, EOFError):
            raise ArtifactError(path, "truncated or corrupt checkpoint (the torch archive cannot "
                                      "be read)") from None
        line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise ArtifactError(path, f"not a readable checkpoint ({line})") from None


def _build_and_load(path: Path, spec: RLFNSpec, state: Mapping[str, torch.Tensor]) -> RLFN:
    model = build_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise ArtifactError(path, f"weights do not match the architecture it declares ({detail})") from None
    return model


def _from_meta(path: Path, meta: Mapping[str, Any], state: Any, sha: str | None) -> Artifact:
    if meta.get("format") != FORMAT:
        raise ArtifactError(path, f"not a workbench artifact (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(path, f"written by a newer workbench (format version "
                                  f"{meta['format_version']} > {FORMAT_VERSION}); upgrade to read it")
    try:
        spec = RLFNSpec.from_dict(meta["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(path, f"wrong architecture record ({exc})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(path, "weights file does not hold a state dict of tensors")
    model = _build_and_load(path, spec, state)
    return Artifact(model=model, spec=spec, path=path, metrics=dict(meta.get("metrics", {})),
                    lineage=dict(meta.get("lineage", {})), config=dict(meta.get("config", {})),
                    weights_sha256=sha or meta.get("weights_sha256"))


def _attach_quantization(path: Path, meta: Mapping[str, Any], art: Artifact) -> None:
    """An int8 artifact (``config.quantization`` and ``quant.pt``): load the quantization state
    (weights_only, hash-checked) and attach it to the model as ``model.quantization`` for
    :func:`workbench.deploy.prepare` (mode ``int8``); the fp32 weights load as usual."""
    qmeta = (meta.get("config") or {}).get("quantization")
    if not qmeta:
        return
    from workbench.quantize import QUANT_FILE, load_quant_state

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
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(meta_path, f"corrupt metadata ({exc})") from None
        if not weights_path.is_file():
            raise ArtifactError(path, f"artifact folder has no {WEIGHTS_FILE}")
        data = weights_path.read_bytes()
        state = _torch_load(weights_path, data)
        sha = sha256_bytes(data)
        expected = meta.get("weights_sha256")
        if expected and expected != sha:
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
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ArtifactError(path, f"corrupt metadata ({exc})") from None
        return _from_meta(path, meta, obj.get("state_dict"), None)
    if not isinstance(obj, Mapping):
        raise ArtifactError(path, f"holds a {type(obj).__name__}, not a state dict")
    state = normalize_state_dict(obj)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(path, "holds values that are not tensors: not a state dict")
    try:
        spec = spec_from_state_dict(state)
    except ValueError as exc:
        raise ArtifactError(path, f"wrong architecture ({exc})") from None
    model = _build_and_load(path, spec, state)
    return Artifact(model=model, spec=spec, path=path, weights_sha256=sha256_bytes(data),
                    lineage={"source": "state dict file", "file": str(path)})


def load_model(ref: str | os.PathLike) -> Artifact:
    """Resolve a model reference: an artifact or checkpoint path, or a name like ``rlfn_s_x4``.

    A name loads the released weights when they exist; otherwise the model is randomly initialised
    (useful for tiny test models, e.g. ``rlfn_tiny_x4``).
    """
    text = str(ref)
    candidate = Path(text)
    if candidate.exists() or os.sep in text or text.endswith((".pt", ".pth")):
        return load_artifact(candidate)
    try:
        preset, scale = parse_model_name(text)
    except WorkbenchError:
        raise WorkbenchError(f"{text}: no such file or folder, and not a model name "
                             f"(e.g. rlfn_s_x4, rlfn_ntire_x4, rlfn_tiny_x4)") from None
    from workbench.models import released_checkpoint

    released = released_checkpoint(preset, scale)
    if released is not None and released.exists():
        art = load_artifact(released)
        art.lineage = {"source": "released checkpoint", "name": text, "file": str(released)}
        return art
    model = create_model(text)
    return Artifact(model=model, spec=model.spec, path=None,
                    lineage={"source": "random initialisation", "name": text})
