"""Recipe stage ``quantize``: the previous stage's fp32 model to int8 (deploy mode ``int8``).

``method: qat`` (default) fine-tunes with fake quantization: the model is exported and prepared
with torchao's PT2E QAT flow (X86InductorQuantizer, per-channel int8 weights, uint8 activations;
the layers the model's family declares stay fp32, e.g. stem and upsampler convs,
:class:`workbench.measure.quantize.QuantConfig`), then trained with Adam on L1 distillation from
the fp32 parent -- the student's SR against the teacher's SR on the same LR patch, so it learns
to reproduce the parent, not to re-fit the training set -- plus an optional L1 to the HR patch.
Student and teacher run through the family's input range (:func:`workbench.models.family.run_model`),
so the losses are on the 0..255 scale for every family. The observers stop moving after ``freeze_observers`` of the
iterations, so the last steps train the weights for the ranges that conversion will use.
``method: ptq`` only calibrates the observers on training crops.

The artifact holds the fine-tuned fp32 weights (``model.pt``, loadable as an ordinary fp32
model), the observers' state (``quant.pt``, tensors only) and the config (``artifact.json``
``config.quantization``); :func:`workbench.models.artifacts.load_artifact` reattaches the state and
:func:`workbench.measure.deploy.prepare` (mode ``int8``) converts and compiles it. Metrics: PSNR-Y of the
int8 model (the converted graph, evaluated as quantize/dequantize arithmetic) and of the parent
on the recipe's validation set.

Resumable (QAT): every ``checkpoint_every`` iterations and at the end the stage writes
``checkpoints/qat.pt`` atomically -- the prepared graph's whole state (fine-tuned weights and
every fake-quantizer's scale, zero-point, observer ranges and enable flags), Adam's state, the
iteration, the RNG states and the last loss, tensors and plain values only (``weights_only``).
The batch order is a function of (seed, epoch) and each patch of (seed, epoch, index), as in
:mod:`workbench.train.loop`, so a run killed and resumed ends bitwise equal to an uninterrupted
one on CPU. A checkpoint from other settings, seed or parent weights is refused in one line.
PTQ (seconds of calibration) starts over.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workbench.stages.registry import StageContext, StageResult, register_stage
from workbench.recipes.schema import TrainSource

log = logging.getLogger("workbench.quantize")


@dataclass(frozen=True)
class QuantizeConfig:
    #: the stage leaves out training images smaller than its patch (``validate`` need not refuse them)
    skips_small_images: ClassVar[bool] = True

    method: str = field(default="qat", metadata={
        "help": "qat: fake-quant fine-tuning with distillation from the fp32 parent; ptq: "
                "calibration only", "choices": ["qat", "ptq"]})
    iterations: int = field(default=400, metadata={"help": "QAT optimiser steps", "min": 0})
    batch_size: int = field(default=16, metadata={"help": "patches per step", "min": 1})
    patch_size: int = field(default=160, metadata={
        "help": "HR patch side (a multiple of the scale); images smaller than it are left out. "
                "Large enough that ESA's pooled map is more than a pixel (40 LR at x4)", "min": 4})
    lr: float = field(default=5e-5, metadata={"help": "Adam learning rate", "gt": 0, "lt": 1})
    distill_weight: float = field(default=1.0, metadata={
        "help": "weight of L1(student SR, fp32 parent SR)", "min": 0})
    hr_weight: float = field(default=0.0, metadata={"help": "weight of L1(student SR, HR)", "min": 0})
    freeze_observers: float = field(default=0.5, metadata={
        "help": "fraction of the iterations after which the activation ranges stop moving",
        "min": 0, "max": 1})
    calibration_images: int = field(default=16, metadata={
        "help": "PTQ: training crops to calibrate on (one per image)", "min": 1})
    calibration_lr_size: int = field(default=48, metadata={
        "help": "PTQ: LR side of the calibration crops (>= 24)", "min": 24})
    skip: list[str] | None = field(default=None, metadata={
        "help": "module names / fnmatch patterns kept fp32 (default: the family's, e.g. RLFN's "
                "conv_1, conv_2, upsampler.0, block_*.c5; SPAN's conv_1, upsampler.0, ...)"})
    per_channel: bool = field(default=True, metadata={"help": "int8 weights per output channel"})
    val: bool = field(default=True, metadata={"help": "PSNR of int8 and parent on data.val at the end"})
    val_deploy: list[str] = field(default_factory=list, metadata={
        "help": "also score the int8 model on data.val as deployed, compiled in these modes "
                "(int8, int8_bf16; one inductor compile per image size, about 30 s each here)",
        "choices": ["int8", "int8_bf16"]})
    log_every: int = field(default=50, metadata={"help": "log interval in iterations", "min": 1})
    checkpoint_every: int = field(default=50, metadata={
        "help": "QAT: write a resumable checkpoint every this many iterations", "min": 1})
    data: list[TrainSource] | None = field(default=None, metadata={
        "help": "training sources for this stage only (default: the recipe's data.train)"})

    def validate(self) -> list[str]:
        if self.distill_weight == 0 and self.hr_weight == 0 and self.method == "qat":
            return ["distill_weight/hr_weight: at least one loss weight must be positive"]
        return []

    def validate_in(self, recipe: Any) -> list[str]:
        problems = []
        if not self.data and not recipe.data.train:
            problems.append("data: quantize needs training images (calibration / QAT): set "
                            "data.train in the recipe or data in the stage")
        if self.method == "qat":
            from workbench.stages.utils import patch_size_problems

            problems += patch_size_problems(self.patch_size, recipe.scale, recipe.model)
        return problems


def _batches(ds, batch_size: int, iterations: int, seed: int, start: int = 0):
    """Batches ``start + 1 .. iterations`` of (lr, hr), order a function of (seed, epoch) only
    (the first ``start`` are skipped without loading their patches)."""
    import numpy as np
    import torch

    epoch, order, pos = 0, None, 0
    for n in range(iterations):
        idx = []
        while len(idx) < batch_size:
            if order is None or pos >= len(order):
                order = np.random.default_rng([seed, epoch]).permutation(len(ds))
                epoch, pos = epoch + 1, 0
            idx.append((epoch - 1, int(order[pos])))
            pos += 1
        if n < start:
            continue
        pairs = [ds.sample(e, i) for e, i in idx]
        yield torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


QAT_CHECKPOINT_FORMAT = "workbench-qat-checkpoint"
QAT_CHECKPOINT_FILE = "qat.pt"
#: QuantizeConfig fields that do not change the training trajectory (left out of the fingerprint).
_NOT_TRAJECTORY = ("log_every", "val", "checkpoint_every", "calibration_images",
                   "calibration_lr_size")


def _fingerprint(cfg: QuantizeConfig, qcfg, parent_id: str | None) -> dict[str, Any]:
    from workbench.recipes.loader import to_plain

    stage = {k: v for k, v in to_plain(cfg).items() if k not in _NOT_TRAJECTORY}
    return {"stage": stage, "quantization": qcfg.to_dict(), "parent": parent_id}


def _load_qat_checkpoint(path, *, seed: int, fingerprint: dict[str, Any]) -> dict[str, Any]:
    from workbench.models.artifacts import _torch_load
    from workbench.core.errors import ArtifactError, WorkbenchError

    restart = "delete it to restart the stage from its beginning"
    try:
        ckpt = _torch_load(path)
    except ArtifactError as exc:
        raise WorkbenchError(f"{path}: cannot read the QAT checkpoint ({exc.problem}); {restart}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != QAT_CHECKPOINT_FORMAT:
        raise WorkbenchError(f"{path}: not a workbench QAT checkpoint; {restart}")
    it = ckpt.get("iteration")
    if not isinstance(it, int) or isinstance(it, bool) or it < 0:
        raise WorkbenchError(f"{path}: damaged QAT checkpoint (iteration {repr(it)[:40]}); {restart}")
    for key in ("model", "optimizer", "rng"):
        if not isinstance(ckpt.get(key), dict):
            raise WorkbenchError(f"{path}: damaged QAT checkpoint ({key!r} missing); {restart}")
    if ckpt.get("seed") != seed or ckpt.get("fingerprint") != fingerprint:
        raise WorkbenchError(f"{path}: this QAT checkpoint was written with other settings, seed "
                             f"or parent; delete it (or rerun the stage with --from) to start over")
    return ckpt


def _load_graph_state(gm, state, path) -> None:
    """Load a prepared graph's full state; per-channel observers start with empty ranges of
    another shape, so mismatched buffers are resized first."""
    import torch

    from workbench.core.errors import WorkbenchError
    from workbench.measure.quantize import _resize_buffer

    current = gm.state_dict()
    if set(current) != set(state):
        raise WorkbenchError(f"{path}: QAT checkpoint does not fit this model's prepared graph; "
                             "delete it to restart the stage from its beginning")
    for k, v in state.items():
        if current[k].shape != v.shape:
            _resize_buffer(gm, k, v)
    gm.load_state_dict(state, strict=True)
    with torch.no_grad():  # shared fake-quantizers: the stored values win (see restore_prepared)
        for k, v in state.items():
            mod_name, _, name = k.rpartition(".")
            mod = gm.get_submodule(mod_name) if mod_name else gm
            if name in mod._buffers:
                mod._buffers[name].copy_(v)


def run_qat(parent_model, ds, cfg: QuantizeConfig, qcfg, *, seed: int, writer=None,
            checkpoint_dir=None, parent_id: str | None = None):
    """Fake-quant fine-tuning of ``parent_model`` (copied); returns (prepared graph, metrics).

    With ``checkpoint_dir`` it checkpoints every ``cfg.checkpoint_every`` iterations and at the
    end, and resumes from a checkpoint there (same settings, seed and ``parent_id``)."""
    import copy

    import torch
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.fake_quantize import disable_observer

    from workbench.measure.quantize import carry_spec, export_model, make_quantizer
    from workbench.models.family import model_input, run_model
    from workbench.train.loop import TrainingDiverged

    torch.manual_seed(seed)
    teacher = copy.deepcopy(parent_model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    example, _ = next(_batches(ds, cfg.batch_size, 1, seed))
    from torchao.quantization.pt2e import quantize_pt2e

    gm = export_model(parent_model, model_input(parent_model, example), dynamic=False)
    from workbench.measure.quantize import skipped_modules

    student = quantize_pt2e.prepare_qat_pt2e(gm, make_quantizer(qcfg, skipped_modules(parent_model, qcfg)))
    carry_spec(student, parent_model)  # run_model: the family's input range
    move_exported_model_to_train(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    freeze_at = int(round(cfg.freeze_observers * cfg.iterations))
    t0, loss_v, it, start = time.time(), float("nan"), 0, 0
    from pathlib import Path

    from workbench.train.loop import _rng_state, _set_rng_state, _write_checkpoint

    fingerprint = _fingerprint(cfg, qcfg, parent_id)
    ckpt_path = Path(checkpoint_dir) / QAT_CHECKPOINT_FILE if checkpoint_dir is not None else None
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = _load_qat_checkpoint(ckpt_path, seed=seed, fingerprint=fingerprint)
        from workbench.core.errors import WorkbenchError

        _load_graph_state(student, ckpt["model"], ckpt_path)
        try:
            opt.load_state_dict(ckpt["optimizer"])
            _set_rng_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise WorkbenchError(f"{ckpt_path}: damaged QAT checkpoint ({type(exc).__name__}: "
                                 f"{str(exc)[:120]}); delete it to restart the stage") from None
        start = it = min(int(ckpt["iteration"]), cfg.iterations)
        loss_v = float(ckpt.get("loss", loss_v))
        if start > freeze_at:
            student.apply(disable_observer)
        log.info("qat: resuming from %s at iteration %d", ckpt_path, start)
    last_saved = start if ckpt_path is not None and ckpt_path.is_file() else None

    def save(iteration: int) -> None:
        nonlocal last_saved
        if ckpt_path is None:
            return
        payload = {"format": QAT_CHECKPOINT_FORMAT, "version": 1, "iteration": iteration,
                   "seed": seed, "fingerprint": fingerprint,
                   "model": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
                   "optimizer": opt.state_dict(), "rng": _rng_state(), "loss": loss_v}
        _write_checkpoint(ckpt_path, payload, previous_iteration=last_saved)
        last_saved = iteration

    batches = _batches(ds, cfg.batch_size, cfg.iterations, seed, start=start)
    for it, (lr, hr) in enumerate(batches, start=start + 1):
        if it == freeze_at + 1:
            student.apply(disable_observer)
        sr = run_model(student, lr)   # 0..255 in and out, whatever the family's range
        loss = 0.0
        if cfg.distill_weight:
            with torch.no_grad():
                target = run_model(teacher, lr)
            loss = loss + cfg.distill_weight * (sr - target).abs().mean()
        if cfg.hr_weight:
            loss = loss + cfg.hr_weight * (sr - hr).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_v = float(loss.detach())
        if loss_v != loss_v or loss_v in (float("inf"), float("-inf")):
            raise TrainingDiverged(f"quantize: loss became {loss_v} at iteration {it}")
        if it % cfg.log_every == 0 or it == cfg.iterations:
            log.info("qat %d/%d loss %.4f", it, cfg.iterations, loss_v)
            if writer is not None:
                writer.add_scalar("quantize/loss", loss_v, it)
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
            save(it)
    return student, {"iterations": it, "loss": loss_v, "seconds": time.time() - t0,
                     "resumed_from": start or None}


@register_stage("quantize", config=QuantizeConfig,
                help="int8 (torchao PT2E): fake-quant fine-tuning with distillation from the fp32 "
                     "parent (qat) or calibration only (ptq); artifact runs in deploy mode int8")
def quantize_stage(cfg: QuantizeConfig, ctx: StageContext) -> StageResult:
    from workbench.models.artifacts import make_lineage
    from workbench.data.training import PatchDataset
    from workbench.models import build_model
    from workbench.measure.quantize import (QuantConfig, calibrate, calibration_crops,
                                            prepare_model, quant_state, resolve_config,
                                            save_int8_artifact)
    from workbench.recipes.loader import to_plain
    from workbench.stages.utils import (is_main, stage_seed, train_sources,
                                               training_files)

    parent = ctx.load_parent()
    model = parent.model.eval().cpu()
    from workbench.measure.quantize import require_int8_family

    require_int8_family(model)
    seed = stage_seed(ctx)
    hr_files, lr_files = training_files(train_sources(ctx, cfg.data), scale=ctx.scale)
    qcfg = resolve_config(model, QuantConfig(
        per_channel=cfg.per_channel, qat=cfg.method == "qat",
        skip=tuple(cfg.skip) if cfg.skip is not None else None))
    metrics: dict[str, Any] = {"method": cfg.method, "train_images": len(hr_files)}
    if cfg.method == "qat":
        patch = cfg.patch_size
        usable = [i for i, f in enumerate(hr_files) if min(_size(f)) >= patch]
        if not usable:
            from workbench.core.errors import WorkbenchError

            raise WorkbenchError(f"quantize: no training image holds a {patch}x{patch} patch "
                                 f"({len(hr_files)} images); lower patch_size")
        metrics["train_images_used"] = len(usable)
        ds = PatchDataset([hr_files[i] for i in usable], scale=ctx.scale, patch_size=patch,
                          lr_files=[lr_files[i] for i in usable] if lr_files else None,
                          augment=True, seed=seed)
        prepared, train_metrics = run_qat(model, ds, cfg, qcfg, seed=seed, writer=ctx.writer,
                                          checkpoint_dir=ctx.checkpoint_dir,
                                          parent_id=parent.weights_sha256)
        metrics.update(train_metrics)
        trained = {k: v.detach().clone() for k, v in prepared.state_dict().items()}
        weights = build_model(parent.spec)
        weights.load_state_dict({k: trained[k] for k in weights.state_dict()}, strict=True)
    else:
        crops = calibration_crops(hr_files, scale=ctx.scale, count=cfg.calibration_images,
                                  lr_size=cfg.calibration_lr_size, seed=seed)
        from workbench.models.family import model_input

        prepared = prepare_model(model, qcfg, model_input(model, crops[0]))
        metrics["calibration_images"] = calibrate(prepared, crops)  # in the family's range
        weights = model
    state = quant_state(prepared)
    if cfg.val and ctx.recipe is not None:
        metrics.update(_validate(ctx, cfg, weights, qcfg, state, model))
    path = ctx.artifact_dir
    if is_main(ctx):
        lineage = make_lineage(parent=parent, seed=ctx.seed, stage=ctx.stage_id,
                               recipe_sha256=ctx.recipe_sha256, device="cpu",
                               stage_type=ctx.stage_type, stage_index=ctx.stage_index,
                               run_dir=str(ctx.run_dir))
        save_int8_artifact(path, weights.cpu(), state, qcfg, metrics=metrics, lineage=lineage,
                           config={"stage": ctx.stage_type, "id": ctx.stage_id, **to_plain(cfg)})
    parts = [cfg.method]
    if "loss" in metrics:
        parts.append(f"{metrics['iterations']} it, loss {metrics['loss']:.4g}")
    if "val_psnr_y_int8" in metrics:
        parts.append(f"{metrics['val_set']} PSNR-Y int8 {metrics['val_psnr_y_int8']:.3f} dB "
                     f"(fp32 parent {metrics['val_psnr_y_parent']:.3f})")
        for mode in cfg.val_deploy:
            if f"val_psnr_y_compiled_{mode}" in metrics:
                parts.append(f"{mode} compiled {metrics[f'val_psnr_y_compiled_{mode}']:.3f}")
    return StageResult(artifact=path, metrics=metrics, summary=", ".join(parts))


def _size(path) -> tuple[int, int]:
    from workbench.data.images import image_size

    return image_size(path)


def _validate(ctx: StageContext, cfg: QuantizeConfig, weights, qcfg, state,
              parent_model) -> dict[str, Any]:
    """PSNR-Y of the converted int8 graph (q/dq arithmetic, eager) and of the fp32 parent on
    every validation set; the first set's figures also as ``val_*``. With ``val_deploy`` also
    the int8 model as deployed (compiled) in each named mode: ``psnr_y_compiled_<mode>`` and
    ``psnr_y_delta_compiled_<mode>`` (against the parent)."""
    import copy

    from workbench.data.benchmark import load_set
    from workbench.measure.deploy import prepare
    from workbench.measure.evaluate import evaluate_set
    from workbench.measure.quantize import GraphRunner, convert, restore_prepared

    val = ctx.recipe.data.val
    int8 = GraphRunner(convert(restore_prepared(weights, qcfg, state)))
    deployed = {}
    if cfg.val_deploy:
        carrier = copy.deepcopy(weights).eval()
        carrier.quantization = {"config": qcfg, "state": state}
        deployed = {mode: prepare(carrier, mode=mode, example_shape=None) for mode in cfg.val_deploy}
    out: dict[str, Any] = {}
    for i, name in enumerate(val.sets or ["Set5"]):
        pset = load_set(name, ctx.scale, data_root=val.root)
        q = evaluate_set(int8, pset, device="cpu", progress=False)
        p = evaluate_set(parent_model, pset, device="cpu", progress=False)
        fig = {"psnr_y_int8": float(q.mean["psnr_y"]), "psnr_y_parent": float(p.mean["psnr_y"]),
               "psnr_y_delta": float(q.mean["psnr_y"] - p.mean["psnr_y"])}
        for mode, dep in deployed.items():
            d = evaluate_set(dep, pset, device="cpu", progress=False)
            fig[f"psnr_y_compiled_{mode}"] = float(d.mean["psnr_y"])
            fig[f"psnr_y_delta_compiled_{mode}"] = float(d.mean["psnr_y"] - p.mean["psnr_y"])
            log.info("%s PSNR-Y %s (compiled) %.4f (%+.4f dB)", q.name, mode,
                     fig[f"psnr_y_compiled_{mode}"], fig[f"psnr_y_delta_compiled_{mode}"])
        out[q.name] = fig
        if i == 0:
            out.update({"val_set": q.name, **{f"val_{k}": v for k, v in fig.items()}})
        log.info("%s PSNR-Y int8 %.4f, fp32 parent %.4f (%+.4f dB)", q.name, fig["psnr_y_int8"],
                 fig["psnr_y_parent"], fig["psnr_y_delta"])
    return out


__all__ = ["QuantizeConfig", "quantize_stage", "run_qat", "QAT_CHECKPOINT_FILE"]
