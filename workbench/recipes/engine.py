"""Run a validated recipe: one folder per stage, finished stages skipped, interrupted ones resumed.

Run folder layout::

    <run>/recipe.yaml          the resolved recipe (defaults filled in, --set/--smoke applied)
    <run>/recipe.sha256        its hash (recorded in every artifact's lineage)
    <run>/run.lock             held by the run in progress (its pid inside)
    <run>/stale/               earlier versions of changed or removed stages
    <run>/summary.json         per-stage metrics and times, rewritten after every stage
    <run>/model-init/          only when the recipe's model is given as widths (seeded random init)
    <run>/<NN>-<id>/
        stage.json             type, config, fingerprint, start time
        artifact/              the stage's output model (workbench artifact)
        checkpoints/last.pt    periodic resumable checkpoint (training stages)
        metrics.json, log.txt, tb/ (TensorBoard), DONE

A stage's *fingerprint* hashes its resolved config and the fingerprints of the stages before it
(plus the model, seed and training data). On a rerun, a stage whose DONE marker carries the same
fingerprint is skipped; a stage whose config (or any earlier stage's) changed is moved to
``<run>/stale/`` (nothing a run produced is deleted behind the user's back) and run again, and an
unfinished stage with the same fingerprint resumes from its last checkpoint. ``from_id`` clears
that stage and every later one first (asked for explicitly, so deleted).

The run folder is locked for the whole run (``<run>/run.lock``), and every folder the engine
writes, moves or deletes must stay inside it (a symbolic link out of it is refused).

Under ``torchrun --nproc_per_node N -m workbench run ...`` the stages registered with
``distributed=True`` (the training stages and SFP) run on every process
(DistributedDataParallel); any other stage runs on rank 0 while the others wait. Only
rank 0 writes files.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from workbench.core.device import resolve_device  # noqa: F401  (also engine.resolve_device)
from workbench.core.errors import WorkbenchError
from workbench.recipes.loader import Recipe, StagePlan
from workbench.stages.registry import StageContext, StageResult, get_stage

log = logging.getLogger("workbench")


DONE_FILE = "DONE"


class _TqdmHandler(logging.Handler):
    """Log lines to stderr without breaking progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from workbench.core.progress import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(*, main: bool) -> None:
    """INFO lines to stderr on rank 0 (warnings only on other ranks); idempotent."""
    root = logging.getLogger("workbench")
    root.setLevel(logging.DEBUG)
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        handler = _TqdmHandler()
        handler.setLevel(logging.INFO if main else logging.WARNING)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.propagate = False


def _sha(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def stage_fingerprints(recipe: Recipe) -> list[str]:
    """One fingerprint per stage: its config chained with everything upstream of it."""
    res = recipe.resolved
    # an empty exclude list is left out, so fingerprints of runs made before it existed still hold
    train = [{k: v for k, v in s.items() if not (k == "exclude" and not v)} if isinstance(s, dict) else s
             for s in ((res.get("data") or {}).get("train") or [])]
    chain = _sha(res.get("model"), res.get("scale"), res.get("seed"), train)
    val = (res.get("data") or {}).get("val")
    out = []
    for plan in recipe.stages:
        chain = _sha(chain, plan.resolved)
        out.append(_sha(chain, val))
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _initial_model_ref(recipe: Recipe, run_dir: Path, *, main: bool) -> str:
    """The model the first stage starts from; widths become a seeded random-init artifact."""
    model = recipe.config.model
    if not isinstance(model, Mapping):
        return str(model)
    from workbench.models.artifacts import make_lineage, save_artifact
    from workbench.models import RLFNSpec, build_model

    target = run_dir / "model-init"
    if main and not (target / "artifact.json").is_file():
        data = dict(model)
        if "blocks" in data and isinstance(data["blocks"], list):
            spec = RLFNSpec.from_dict({**data, "scale": recipe.scale})
        else:
            spec = RLFNSpec.uniform(scale=recipe.scale, feature=int(data["trunk"]), mid=data.get("mid"),
                                    esa=int(data.get("esa", 16)), blocks=int(data.get("blocks", 4)))
        torch.manual_seed(recipe.config.seed)
        save_artifact(target, build_model(spec), lineage=make_lineage(
            seed=recipe.config.seed, stage="model-init", recipe_sha256=recipe.sha256,
            source="random initialisation from widths"))
    return str(target)


def _fmt_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _inside(run_dir: Path, path: Path) -> Path:
    """``path`` (a folder the engine writes, moves or deletes), refused unless it stays inside the
    run folder: a symbolic link to somewhere else is never followed."""
    if path.is_symlink() or not path.resolve().is_relative_to(run_dir.resolve()):
        raise WorkbenchError(f"{path}: leads outside the run folder {run_dir} (a symbolic link to "
                             f"{path.resolve()}); refusing to write or delete there")
    return path


def _move_to_stale(run_dir: Path, child: Path) -> Path:
    """Move a stage folder into ``<run>/stale/`` (numbered when the name is taken there)."""
    stale = _inside(run_dir, run_dir / "stale")
    stale.mkdir(exist_ok=True)
    target = stale / child.name
    suffix = 1
    while target.exists():
        suffix += 1
        target = stale / f"{child.name}.{suffix}"
    os.replace(child, target)
    return target


def _set_aside_stale_stages(recipe: Recipe, run_dir: Path) -> None:
    """Move stage folders that the recipe no longer has (a stage removed or renamed since the
    last run in this folder) into ``stale/``, so the run folder shows only this recipe's stages.
    Nothing is deleted: a user may still want what such a stage produced."""
    current = {plan.folder_name for plan in recipe.stages}
    for child in sorted(run_dir.iterdir()):
        if (child.is_dir() and not child.is_symlink() and child.name not in current
                and (child / "stage.json").is_file()):
            target = _move_to_stale(run_dir, child)
            log.info("%s is not a stage of this recipe any more: moved to %s", child.name, target)


LOCK_FILE = "run.lock"


def run_recipe(recipe: Recipe, *, run_dir: str | Path, from_id: str | None = None,
               device: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) every stage of ``recipe`` in ``run_dir``; returns one record per stage.

    The run folder is locked for the whole run (``<run>/run.lock``, by the process of rank 0): a
    second run on the same folder stops at once with the holder's pid instead of training the
    same stage in parallel or clearing the stage the first one is training.
    """
    from workbench.core.locks import exclusive_lock

    run_dir = Path(run_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return _run_recipe(recipe, run_dir=run_dir, from_id=from_id, device=device, progress=progress)
    if run_dir.exists() and not run_dir.is_dir():
        raise WorkbenchError(f"{run_dir}: exists and is not a folder (a run folder is a folder)")
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run_dir / LOCK_FILE, what=f"run folder {run_dir}"):
        return _run_recipe(recipe, run_dir=run_dir, from_id=from_id, device=device, progress=progress)


def _run_recipe(recipe: Recipe, *, run_dir: Path, from_id: str | None, device: str | None,
                progress: bool) -> list[dict[str, Any]]:
    from workbench.core.files import atomic_write_bytes, atomic_write_json
    from workbench.train import distributed

    dev = resolve_device(device or recipe.config.device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = distributed.init(dev)
    main = dist_info.is_main
    setup_logging(main=main)
    if from_id is not None:
        start_plan = recipe.stage(from_id)
    fingerprints = stage_fingerprints(recipe)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for plan in recipe.stages:  # before anything is written: no stage folder leads elsewhere
            _inside(run_dir, run_dir / plan.folder_name)
        _inside(run_dir, run_dir / "model-init")
        atomic_write_bytes(run_dir / "recipe.yaml", recipe.text.encode())
        atomic_write_bytes(run_dir / "recipe.sha256", (recipe.sha256 + "\n").encode())
        _set_aside_stale_stages(recipe, run_dir)
        if from_id is not None:
            for plan in recipe.stages[start_plan.index:]:
                stage_dir = _inside(run_dir, run_dir / plan.folder_name)
                if stage_dir.exists():
                    log.info("--from %s: clearing %s", from_id, stage_dir)
                    shutil.rmtree(stage_dir)
    model_ref = _initial_model_ref(recipe, run_dir, main=main)
    distributed.barrier()

    parent: Path | None = None
    records: list[dict[str, Any]] = []
    total = len(recipe.stages)
    t_run = time.perf_counter()
    if main:
        log.info("run %s: %s, %d stages, device %s%s", run_dir, recipe.name, total, dev,
                 f", {dist_info.world_size} processes" if dist_info.enabled else "")
    for plan, fingerprint in zip(recipe.stages, fingerprints):
        stage_dir = _inside(run_dir, run_dir / plan.folder_name)
        done = _read_json(stage_dir / DONE_FILE)
        if done and done.get("fingerprint") == fingerprint:
            artifact = done.get("artifact")
            if artifact is None or (run_dir / artifact).exists():
                parent = run_dir / artifact if artifact else parent
                record = {"id": plan.id, "stage": plan.type, "skipped": True,
                          "metrics": _read_json(stage_dir / "metrics.json") or {}}
                records.append(record)
                if main:
                    print(f"[{plan.index + 1}/{total}] {plan.id} ({plan.type}): already done, skipped",
                          flush=True)
                continue
        if main:
            info = _read_json(stage_dir / "stage.json")
            if stage_dir.exists() and (info is None or info.get("fingerprint") != fingerprint):
                # Like a stage removed from the recipe, the old folder (and its artifact) is kept.
                target = _move_to_stale(run_dir, stage_dir)
                log.info("%s: configuration changed since the last run; starting the stage over "
                         "(the previous folder is kept as %s)", plan.id, target)
            stage_dir.mkdir(parents=True, exist_ok=True)
            (stage_dir / DONE_FILE).unlink(missing_ok=True)
            atomic_write_json(stage_dir / "stage.json", {
                "id": plan.id, "stage": plan.type, "index": plan.index, "fingerprint": fingerprint,
                "recipe_sha256": recipe.sha256, "config": plan.resolved,
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        distributed.barrier()
        record = _run_stage(recipe, plan, stage_dir=stage_dir, run_dir=run_dir, parent=parent,
                            model_ref=model_ref, device=dev, dist_info=dist_info, progress=progress,
                            fingerprint=fingerprint, total=total)
        records.append(record)
        if record.get("artifact"):
            parent = run_dir / record["artifact"]
        if main:
            atomic_write_json(run_dir / "summary.json", {
                "recipe": str(recipe.path), "recipe_sha256": recipe.sha256, "run_dir": str(run_dir),
                "stages": records, "final_artifact": str(parent) if parent else None})
    if main:
        print(f"run finished in {time.perf_counter() - t_run:.1f} s: {run_dir}"
              + (f"; final model {parent}" if parent else ""), flush=True)
    return records


class _LazyWriter:
    """A TensorBoard SummaryWriter made on first use, so stages that log nothing (search,
    evaluate) leave no empty event file behind."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._writer: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self._log_dir))
        return getattr(self._writer, name)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _run_stage(recipe: Recipe, plan: StagePlan, *, stage_dir: Path, run_dir: Path, parent: Path | None,
               model_ref: str, device: torch.device, dist_info: Any, progress: bool, fingerprint: str,
               total: int) -> dict[str, Any]:
    from workbench.core.files import atomic_write_json
    from workbench.recipes.loader import to_plain
    from workbench.stages.utils import seed_everything, stage_seed
    from workbench.train import distributed

    main = dist_info.is_main
    stage_type = get_stage(plan.type)
    writer = None
    handler = None
    if main:
        handler = logging.FileHandler(stage_dir / "log.txt", encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("workbench").addHandler(handler)
        writer = _LazyWriter(stage_dir / "tb")
    ctx = StageContext(run_dir=run_dir, stage_dir=stage_dir, stage_id=plan.id, stage_index=plan.index,
                       parent=parent, model_ref=model_ref, scale=recipe.scale, seed=recipe.config.seed,
                       device=device, smoke=recipe.smoke, data=to_plain(recipe.config.data),
                       recipe_sha256=recipe.sha256, recipe=recipe.config, writer=writer,
                       progress=progress, dist=dist_info, stage_type=plan.type,
                       extras={"fingerprint": fingerprint, "recipe": recipe})
    if main:
        log.info("[%d/%d] %s (%s) -> %s", plan.index + 1, total, plan.id, plan.type, stage_dir)
    seed_everything(stage_seed(ctx, salt=1))
    t0 = time.perf_counter()
    result: StageResult | None = None
    try:
        if stage_type.distributed or not dist_info.enabled:
            result = stage_type.fn(plan.config, ctx)
        elif main:
            result = stage_type.fn(plan.config, ctx)
        if dist_info.enabled:
            distributed.barrier()
            result = distributed.broadcast_object(result if main else None)
    except WorkbenchError as exc:
        log.error("%s (%s) failed: %s", plan.id, plan.type, exc)
        raise
    finally:
        if writer is not None:
            writer.close()
        if handler is not None:
            logging.getLogger("workbench").removeHandler(handler)
            handler.close()
    seconds = time.perf_counter() - t0
    assert result is not None
    artifact_rel = None
    if result.artifact is not None:
        try:
            artifact_rel = str(Path(result.artifact).resolve().relative_to(run_dir.resolve()))
        except ValueError:
            artifact_rel = str(Path(result.artifact).resolve())
    record = {"id": plan.id, "stage": plan.type, "seconds": round(seconds, 2), "artifact": artifact_rel,
              "summary": result.summary, "metrics": to_plain(result.metrics)}
    if main:
        atomic_write_json(stage_dir / "metrics.json", record["metrics"])
        atomic_write_json(stage_dir / DONE_FILE, {
            "fingerprint": fingerprint, "artifact": artifact_rel, "seconds": round(seconds, 2),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        line = result.summary or ", ".join(f"{k} {_fmt_metric(v)}" for k, v in list(result.metrics.items())[:4])
        print(f"[{plan.index + 1}/{total}] {plan.id} ({plan.type}) done in {seconds:.1f} s"
              + (f": {line}" if line else ""), flush=True)
    return record
