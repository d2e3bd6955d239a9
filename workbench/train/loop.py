"""The training loop every training-like stage uses (train, warm_start, contrastive, finetune, SFP,
the search's short fine-tunes).

Stable API (signatures other engineers call)::

    TrainSettings                             # workbench.train.settings: optimiser, schedule, losses,
                                              # batches, bookkeeping -- the one source of the
                                              # training defaults (the recipe stages derive theirs)

    class Callback:                           # every hook optional
        on_step_end(state: TrainState) -> None
        on_epoch_end(state: TrainState) -> None
        state_dict() -> dict;  load_state_dict(d: dict) -> None   # saved in the checkpoint

    @dataclass
    class TrainState:                         # what a callback sees
        model (unwrapped nn.Module), optimizer, scheduler, iteration (done so far), epoch
        (callback epochs finished), settings, device, loss (last step, float), dist (DistInfo)

    fit(model, dataset, *, settings, device, seed, checkpoint_dir=None, callbacks=(),
        val_fn=None, writer=None, progress=True, desc="train", teacher=None) -> dict
        # trains ``model`` in place; returns {"iterations", "loss", "loss_terms", "lr",
        # "seconds", "curve": {"loss": [[it, mean], ...], "val": [[it, psnr_y], ...]},
        # "val_<metric>"...}. ``dataset[i]`` gives (lr, hr) (or {"lr", "hr"}) float
        # tensors on the 0..255 scale; ``dataset.set_epoch(e)`` is called when it exists.
        # val_fn(model) -> {"psnr_y": ..., "images": {name: uint8 HWC/CHW}} runs every
        # val_every iterations and at the end. ``teacher``: the frozen model of ``distill``
        # loss terms (it runs on ``device`` in inference mode, on every DDP rank for its share).
        # With ``settings.ema`` the model ends holding the moving average of its weights
        # (validation scores the average too; checkpoints keep both).

Determinism: the data order is a function of (seed, data epoch) only -- data epoch ``e`` is a
permutation drawn from a generator seeded with (seed, e), cut into batches -- and the dataset's own
randomness is a function of (seed, epoch, index). The data position is therefore the iteration
count alone, and a checkpoint (model, optimizer, scheduler, GradScaler, every RNG state, callback
states, iteration) restores a run exactly: on CPU a killed-and-resumed run ends bitwise equal to an
uninterrupted one. Under DDP every rank takes ``batch[rank::world]`` of the same global batch, so
the global batch and its order do not depend on the number of processes.

Failures that lose nothing: a non-finite loss raises :class:`TrainingDiverged` before any
checkpoint is written after it (the last good one stays); a checkpoint write that fails (full disk)
leaves the previous checkpoint intact (atomic rename) and raises a one-line WorkbenchError.
"""
from __future__ import annotations

import errno
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from workbench.core.errors import WorkbenchError
from workbench.models.family import run_model
from workbench.train import distributed
from workbench.train.losses import build_loss
from workbench.train.settings import TrainSettings

log = logging.getLogger("workbench.train")

CHECKPOINT_FORMAT = "workbench-train-checkpoint"
CHECKPOINT_FILE = "last.pt"


class TrainingDiverged(WorkbenchError):
    """The loss became NaN or infinite; the stage stops and the last good checkpoint is kept."""


@dataclass
class TrainState:
    """What callbacks see after each optimiser step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    iteration: int
    epoch: int
    settings: TrainSettings
    device: torch.device
    loss: float = float("nan")
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)


class Callback:
    """Hooks into :func:`fit`; override what you need. State is saved in periodic checkpoints.

    ``state_dict`` must hold only tensors and plain Python values (dict, list, tuple, str, int,
    float, bool, None): checkpoints are read back with ``torch.load(weights_only=True)``.
    """

    def on_step_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


# -- optimiser and schedule ---------------------------------------------------------------------

def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """Adam over the trainable parameters with the settings' lr, betas and eps."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings) -> Any:
    """lr x gamma every ``halve_every`` iterations (the paper halves every 200k)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, settings.halve_every),
                                           gamma=settings.gamma)


# -- weight averaging ---------------------------------------------------------------------------

class WeightAverage:
    """An exponential moving average of a model's state (``decay`` per optimiser step).

    Floating-point entries are averaged, ``avg = decay * avg + (1 - decay) * current``; others
    (counters) are copied. It starts from the weights at construction: a fine-tune from a trained
    model averages from where it began.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise WorkbenchError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            avg = self.shadow[key]
            if avg.is_floating_point():
                avg.mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise KeyError("the averaged weights do not fit the model")
        for key, value in state.items():
            self.shadow[key].copy_(value)

    def swap(self, model: nn.Module) -> None:
        """Exchange the model's weights with the average (twice restores both)."""
        with torch.no_grad():
            for key, value in model.state_dict().items():
                held = value.detach().clone()
                value.copy_(self.shadow[key])
                self.shadow[key].copy_(held)


# -- deterministic data order -------------------------------------------------------------------

def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2 ** 63 - 1)


def batches_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of data epoch ``epoch``: a (seed, epoch)-seeded permutation, cut up.

    A dataset smaller than one batch is repeated (fresh permutations) to fill the batch.
    """
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    if n >= batch_size:
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = []
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
    nb = batches_per_epoch(n, batch_size)
    return [order[k * batch_size:(k + 1) * batch_size] for k in range(nb)]


def _collate(items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    lrs, hrs = [], []
    for item in items:
        if isinstance(item, Mapping):
            lr, hr = item["lr"], item["hr"]
        else:
            lr, hr = item[0], item[1]
        lrs.append(torch.as_tensor(lr))
        hrs.append(torch.as_tensor(hr))
    return torch.stack(lrs).float(), torch.stack(hrs).float()


def _batch_stream(dataset: Any, *, batch_size: int, seed: int, start: int, rank: int, world: int,
                  num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from global batch index ``start`` on, forever; this rank's share of each."""
    n = len(dataset)
    if n < 1:
        raise WorkbenchError("the training dataset is empty")
    nb = batches_per_epoch(n, batch_size)
    epoch, offset = divmod(start, nb)
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        batches = [b[rank::world] for b in epoch_batches(n, batch_size, seed=seed, epoch=epoch)[offset:]]
        if num_workers > 0:
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                                 collate_fn=_collate, persistent_workers=False)
            yield from loader
        else:
            for batch in batches:
                yield _collate([dataset[i] for i in batch])
        epoch, offset = epoch + 1, 0


# -- RNG and checkpoints ------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a periodic training checkpoint (weights_only) or raise a one-line WorkbenchError."""
    from workbench.models.artifacts import _torch_load
    from workbench.core.errors import ArtifactError

    try:
        ckpt = _torch_load(Path(path))
    except ArtifactError as exc:
        raise WorkbenchError(f"{path}: cannot read the training checkpoint ({exc.problem}); delete "
                             f"it to restart the stage from its beginning") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WorkbenchError(f"{path}: not a workbench training checkpoint")
    iteration = ckpt.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise WorkbenchError(f"{path}: damaged training checkpoint (iteration "
                             f"{repr(iteration)[:40]} is not a non-negative integer); delete it to "
                             f"restart the stage from its beginning")
    for key, kind in (("model", dict), ("optimizer", dict), ("scheduler", dict), ("rng", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise WorkbenchError(f"{path}: damaged training checkpoint ({key!r} missing or not a "
                                 f"mapping); delete it to restart the stage from its beginning")
    return ckpt


def _write_checkpoint(path: Path, payload: dict[str, Any], *, previous_iteration: int | None) -> None:
    from workbench.core.files import atomic_torch_save

    try:
        atomic_torch_save(payload, path)
    except OSError as exc:
        kept = (f"the previous checkpoint (iteration {previous_iteration}) is intact"
                if previous_iteration is not None else "no earlier checkpoint existed")
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise WorkbenchError(f"{path}: could not write the checkpoint at iteration "
                             f"{payload['iteration']} ({reason}); {kept}") from None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model


def _autocast(settings: TrainSettings, device: torch.device):
    import contextlib

    if settings.amp and device.type == "cuda":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[settings.amp]
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def _write_images(writer: Any, images: Mapping[str, Any], step: int) -> None:
    for name, image in images.items():
        tensor = torch.as_tensor(np.asarray(image))
        if tensor.ndim == 3 and tensor.shape[-1] in (1, 3) and tensor.shape[0] not in (1, 3):
            tensor = tensor.permute(2, 0, 1)
        writer.add_image(f"sr/{name}", tensor.to(torch.uint8), step)


# -- the loop -----------------------------------------------------------------------------------

def fit(model: nn.Module, dataset: Any, *, settings: TrainSettings, device: torch.device | str,
        seed: int, checkpoint_dir: Path | None = None, callbacks: Sequence[Callback] = (),
        val_fn: Callable[[nn.Module], dict] | None = None, writer: Any = None,
        progress: bool = True, desc: str = "train", teacher: nn.Module | None = None) -> dict[str, Any]:
    """Train ``model`` in place for ``settings.iterations`` optimiser steps; see the module docstring.

    With ``checkpoint_dir``, a checkpoint is written every ``checkpoint_every`` iterations and at
    the end, and an existing one is resumed from (after checking it was made with the same
    settings and seed).
    """
    device = torch.device(device)
    dist_info = distributed.info()
    rank, world = dist_info.rank, dist_info.world_size
    if settings.batch_size % world:
        raise WorkbenchError(f"batch_size {settings.batch_size} is not divisible by the "
                             f"{world} processes of this torchrun")
    if settings.iterations < 0:
        raise WorkbenchError(f"iterations must be >= 0, got {settings.iterations}")
    if settings.amp and device.type != "cuda":
        log.warning("amp=%s ignored: mixed precision is used on CUDA only (device %s)", settings.amp, device)

    model.to(device)
    criterion = build_loss(settings.losses, teacher=teacher).to(device)
    optimizer = make_optimizer(model, settings)
    scheduler = make_scheduler(optimizer, settings)
    use_scaler = settings.amp == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    average = WeightAverage(model, settings.ema) if settings.ema is not None else None
    n_data = len(dataset)
    epoch_iterations = settings.epoch_iterations or batches_per_epoch(n_data, settings.batch_size)

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    start, history = 0, {"loss_terms": {}, "loss": float("nan"), "val": {}}
    last_saved: int | None = None
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("seed") != seed or ckpt.get("settings") != settings.fingerprint():
            raise WorkbenchError(f"{ckpt_path}: this checkpoint was written with other settings or "
                                 f"seed; delete it (or rerun the stage with --from) to start over")
        try:
            model.load_state_dict(ckpt["model"], strict=True)
        except RuntimeError as exc:
            raise WorkbenchError(f"{ckpt_path}: weights do not fit the model "
                                 f"({str(exc).splitlines()[0][:160]})") from None
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if average is not None:
                average.load_state_dict(ckpt["ema"])
            for cb, cb_state in zip(callbacks, ckpt.get("callbacks", [])):
                cb.load_state_dict(cb_state)
            _set_rng_state(ckpt["rng"])
            history = dict(ckpt.get("history", history))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            raise WorkbenchError(f"{ckpt_path}: damaged training checkpoint ({type(exc).__name__} "
                                 f"restoring its state: {str(exc)[:120]}); delete it to restart "
                                 "the stage from its beginning") from None
        start = last_saved = ckpt["iteration"]
        if dist_info.is_main:
            log.info("%s: resuming from %s at iteration %d", desc, ckpt_path, start)

    # [iteration, value] pairs: the mean loss of each log window, the validation PSNR-Y
    curve = history.setdefault("curve", {"loss": [], "val": []})

    core = model
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index or 0] if device.type == "cuda" else None)
    state = TrainState(model=core, optimizer=optimizer, scheduler=scheduler, iteration=start,
                       epoch=start // epoch_iterations, settings=settings, device=device, dist=dist_info)

    def save(iteration: int) -> None:
        nonlocal last_saved
        if ckpt_path is None or not dist_info.is_main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT, "version": 1, "iteration": iteration, "seed": seed,
            "settings": settings.fingerprint(),
            "model": {k: v.detach().cpu().clone() for k, v in core.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(), "callbacks": [cb.state_dict() for cb in callbacks],
            "history": history,
        }
        if average is not None:
            payload["ema"] = average.state_dict()
        _write_checkpoint(ckpt_path, payload, previous_iteration=last_saved)
        last_saved = iteration

    def validate(iteration: int) -> dict[str, Any]:
        if val_fn is None or not dist_info.is_main:
            return {}
        was_training = core.training
        core.eval()
        if average is not None:
            average.swap(core)  # validate the averaged weights, the ones the stage hands on
        try:
            with torch.no_grad():
                result = dict(val_fn(core))
        finally:
            if average is not None:
                average.swap(core)
            core.train(was_training)
        images = result.pop("images", None)
        # plain Python values only: the history goes into checkpoints read with weights_only=True
        result = {k: (float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v))
                  for k, v in result.items()}
        if writer is not None:
            for key, value in result.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"val/{key}", value, iteration)
            if images:
                _write_images(writer, images, iteration)
        if isinstance(result.get("psnr_y"), float):
            if curve["val"] and curve["val"][-1][0] == iteration:  # a finished stage resumed
                curve["val"].pop()
            curve["val"].append([iteration, result["psnr_y"]])
        shown = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float))
        log.info("%s: validation at iteration %d: %s", desc, iteration, shown)
        return result

    bar = None
    if progress and dist_info.is_main and settings.iterations > start:
        from workbench.core.progress import tqdm

        bar = tqdm(total=settings.iterations, initial=start, desc=desc, unit="it", dynamic_ncols=True,
                   leave=True)
    stream = _batch_stream(dataset, batch_size=settings.batch_size, seed=seed, start=start, rank=rank,
                           world=world, num_workers=settings.num_workers)
    t0 = time.perf_counter()
    window_sum, window_n = 0.0, 0
    model.train()
    try:
        for iteration in range(start, settings.iterations):
            lr_batch, hr_batch = next(stream)
            lr_batch = lr_batch.to(device, non_blocking=True)
            hr_batch = hr_batch.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(settings, device):
                sr = run_model(model, lr_batch)  # through the family's input range
            loss = criterion(sr.float(), hr_batch, lr_batch)
            checked = distributed.all_reduce_mean(loss.detach()) if dist_info.enabled else loss.detach()
            value = float(checked)
            if not math.isfinite(value):
                kept = (f"the last good checkpoint (iteration {last_saved}) is kept in {ckpt_path.parent}"
                        if last_saved is not None and ckpt_path is not None else "no checkpoint was written")
                raise TrainingDiverged(f"{desc}: the loss became {value} at iteration {iteration + 1}; "
                                       f"{kept}; lower lr or set grad_clip")
            if scaler is not None:
                scaler.scale(loss).backward()
                if settings.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(core.parameters(), settings.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if settings.grad_clip:
                    torch.nn.utils.clip_grad_norm_(core.parameters(), settings.grad_clip)
                optimizer.step()
            scheduler.step()
            if average is not None:
                average.update(core)

            done = iteration + 1
            state.iteration, state.loss = done, value
            for cb in callbacks:
                cb.on_step_end(state)
            if done % epoch_iterations == 0:
                state.epoch = done // epoch_iterations
                for cb in callbacks:
                    cb.on_epoch_end(state)

            window_sum += value
            window_n += 1
            history["loss"] = value
            history["loss_terms"] = dict(criterion.last_terms)
            lr_now = optimizer.param_groups[0]["lr"]
            if bar is not None:
                bar.update(1)
                if done % max(1, min(settings.log_every, 10)) == 0 or done == settings.iterations:
                    bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr_now:.3g}", refresh=False)
            if done % max(1, settings.log_every) == 0 or done == settings.iterations:
                mean = window_sum / max(1, window_n)
                history["loss"] = mean
                curve["loss"].append([done, mean])
                window_sum, window_n = 0.0, 0
                if writer is not None:
                    writer.add_scalar("loss/total", mean, done)
                    for name, term in criterion.last_terms.items():
                        writer.add_scalar(f"loss/{name}", term, done)
                    writer.add_scalar("lr", lr_now, done)
                log.debug("%s: iteration %d loss %.5g lr %.3g", desc, done, mean, lr_now)
            if settings.val_every and done % settings.val_every == 0 and done < settings.iterations:
                history["val"] = validate(done)
            if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.iterations:
                save(done)
                distributed.barrier()
    finally:
        if bar is not None:
            bar.close()

    final_val = validate(settings.iterations) if val_fn is not None else {}
    if final_val:
        history["val"] = final_val
    if settings.iterations > start:
        save(settings.iterations)
        distributed.barrier()
    if average is not None:  # the last checkpoint holds both; the stage hands on the average
        average.swap(core)
    metrics: dict[str, Any] = {
        "iterations": settings.iterations,
        "loss": history.get("loss"),
        "loss_terms": history.get("loss_terms", {}),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - t0, 3),
        "resumed_from": start or None,
        "curve": curve,
    }
    for key, value in (history.get("val") or {}).items():
        metrics[f"val_{key}"] = value
    model.eval()
    return metrics
