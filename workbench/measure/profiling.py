"""Model cost: NTIRE-challenge counts (params, FLOPs, activations, convs) and measured latency.

Counting follows the NTIRE 2022 efficient-SR challenge (its ``utils/model_summary.py``) for a
3x256x256 input: FLOPs are the Conv2d multiply-accumulates plus one per LeakyReLU output element
(sigmoid, pooling, interpolation, pixel shuffle and additions are not counted, biases neither);
activations are the summed element counts of every Conv2d output; convs the number of Conv2d
calls. The forward pass runs on the ``meta`` device, so counting costs no arithmetic.

Latency is measured after warm-up, under ``torch.inference_mode``: with CUDA events and a
synchronisation on GPU, with ``time.perf_counter`` on CPU; median and p90 over the repeats
(:mod:`workbench.measure.timing`: the timer and the one definition of the statistics). The
NTIRE protocol (:func:`ntire_latency`) is the mean per-image time over a folder of full LR images.
Every result records the device, its name, the dtype, threads, torch version and input shape,
because a latency without those is meaningless.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import platform
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from workbench.core.device import num_threads
from workbench.core.errors import WorkbenchError
from workbench.measure import timing
from workbench.measure.timing import (DEFAULT_REPEATS, DEFAULT_WARMUP, Timer as _Timer,
                                      interleaved_times, round_ratios, spread)

__all__ = ["ntire_counts", "conv_macs", "cost_signature", "measure_latency", "ntire_latency", "sweep_trunk_widths",
           "write_sweep_csv", "plot_sweep", "parse_shape", "parse_dtype", "parse_range",
           "device_name", "DTYPES", "spread", "hardware_id", "hardware_key", "cpu_flags",
           "interleaved_times", "round_ratios", "compare_latency", "compare_models"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "float32": torch.float32,
                                  "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                                  "fp16": torch.float16, "float16": torch.float16}


# -- argument parsing helpers (used by the CLI and recipes) ----------------------------------

#: Bounds on a profiled input: the activations of a 48-channel RLFN are ~50x the input, so an
#: unchecked shape can ask for terabytes; 16 megapixels is 4K video and well beyond NTIRE's 2K.
MAX_BATCH = 64
MAX_SIDE = 8192
MAX_INPUT_PIXELS = 16_000_000
#: Most widths a sweep measures (each is a model built and timed several times).
MAX_SWEEP_WIDTHS = 128


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x256x256' -> (1, 3, 256, 256)."""
    try:
        shape = tuple(int(p) for p in str(text).lower().replace(",", "x").split("x"))
    except ValueError:
        raise WorkbenchError(f"input shape {text!r}: expected NxCxHxW, e.g. 1x3x256x256") from None
    if len(shape) != 4 or min(shape) < 1:
        raise WorkbenchError(f"input shape {text!r}: expected four positive sizes NxCxHxW")
    from workbench.models import MIN_LR_SIZE

    n, c, h, w = shape
    if min(h, w) < MIN_LR_SIZE:
        raise WorkbenchError(f"input shape {text!r}: RLFN needs H and W of at least {MIN_LR_SIZE} "
                             "(ESA's strided conv and 7x7 max-pool)")
    if c > 4 or n > MAX_BATCH or max(h, w) > MAX_SIDE or n * h * w > MAX_INPUT_PIXELS:
        raise WorkbenchError(f"input shape {text!r}: too large (at most {MAX_BATCH} images, 4 "
                             f"channels, sides of {MAX_SIDE} and {MAX_INPUT_PIXELS // 1_000_000} "
                             "megapixels in all)")
    return shape


def parse_dtype(text: str | torch.dtype) -> torch.dtype:
    if isinstance(text, torch.dtype):
        return text
    try:
        return DTYPES[str(text).lower()]
    except KeyError:
        raise WorkbenchError(f"dtype {text!r}: choose one of fp32, bf16, fp16") from None


def parse_range(text: str) -> list[int]:
    """'32:64:2' -> [32, 34, ..., 64] (inclusive end); '32,40,48' -> [32, 40, 48]."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
            if step < 1 or stop < start:
                raise ValueError
            if (stop - start) // step + 1 > MAX_SWEEP_WIDTHS:
                raise WorkbenchError(f"width range {text!r}: {(stop - start) // step + 1} widths; "
                                     f"at most {MAX_SWEEP_WIDTHS}")
            values = list(range(start, stop + 1, step))
        else:
            values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise WorkbenchError(f"width range {text!r}: expected START:STOP[:STEP] (inclusive, e.g. "
                             "32:64:2) or a comma list (32,40,48)") from None
    if not values or min(values) < 1:
        raise WorkbenchError(f"width range {text!r}: widths must be positive")
    from workbench.models.rlfn import MAX_WIDTH

    if max(values) > MAX_WIDTH or len(values) > MAX_SWEEP_WIDTHS:
        raise WorkbenchError(f"width range {text!r}: at most {MAX_SWEEP_WIDTHS} widths, each at most "
                             f"{MAX_WIDTH}")
    return values


# -- counting --------------------------------------------------------------------------------

def _forward_for_shapes(model: nn.Module, input_shape: Sequence[int],
                        hooks: dict[type, Callable]) -> None:
    """Run ``model`` on the meta device (shapes only) with forward hooks on the given module types.

    Falls back to a real CPU forward for modules that cannot run on meta.
    """
    def run(target: nn.Module, device: str) -> None:
        handles = []
        for mod in target.modules():
            for kind, hook in hooks.items():
                if isinstance(mod, kind):
                    handles.append(mod.register_forward_hook(hook))
        try:
            with torch.inference_mode():
                target(torch.zeros(tuple(input_shape), device=device))
        finally:
            for h in handles:
                h.remove()

    meta = copy.deepcopy(model).to("meta")
    try:
        run(meta, "meta")
    except (NotImplementedError, RuntimeError):
        run(copy.deepcopy(model).to("cpu").float().eval(), "cpu")
        return


def ntire_counts(model: nn.Module, *, input_shape: Sequence[int] = (1, 3, 256, 256)) -> dict[str, Any]:
    """Params, FLOPs (G), activations (M) and conv count, as the NTIRE 2022 challenge counts them.

    Returns ``{params, flops_g, acts_m, convs, conv_macs, input_shape}``; ``flops_g`` and
    ``acts_m`` are unrounded (the challenge reports two decimals).
    """
    if len(tuple(input_shape)) != 4:
        raise ValueError(f"input_shape must be NCHW, got {tuple(input_shape)}")
    state = {"macs": 0, "lrelu": 0, "acts": 0, "convs": 0}

    def conv_hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        kh, kw = mod.kernel_size
        state["convs"] += 1
        state["acts"] += out.numel()
        state["macs"] += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def lrelu_hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        state["lrelu"] += out.numel()

    was_training = model.training
    _forward_for_shapes(model.eval(), input_shape, {nn.Conv2d: conv_hook, nn.LeakyReLU: lrelu_hook})
    model.train(was_training)
    return {
        "params": int(sum(p.numel() for p in model.parameters())),
        "flops_g": (state["macs"] + state["lrelu"]) / 1e9,
        "acts_m": state["acts"] / 1e6,
        "convs": state["convs"],
        "conv_macs": state["macs"],
        "input_shape": list(input_shape),
    }


def cost_signature(model: nn.Module, *, input_shape: Sequence[int] = (1, 3, 256, 256)) -> str:
    """A short key equal for two models that do the same convolution work.

    The key hashes the multiset of every Conv2d's shape (channels in and out, kernel, stride,
    groups, bias) together with the spatial size it produces, in no particular order. Two width
    configurations that only move a narrower width from one block to another (RLFN blocks 1-4 at
    middle 32 against blocks 3-6) get the same key: they run the same kernels on the same tensors,
    so any difference in their measured latencies is noise. The search pools the latencies of a
    class (:func:`workbench.search.results.pool_equal_cost`) and lets PSNR decide inside it.
    """
    import hashlib

    layers: list[tuple[Any, ...]] = []

    def conv_hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        layers.append((mod.in_channels, mod.out_channels, *mod.kernel_size, *mod.stride, *mod.dilation,
                       mod.groups, mod.bias is not None, *out.shape))

    was_training = model.training
    _forward_for_shapes(model.eval(), input_shape, {nn.Conv2d: conv_hook})
    model.train(was_training)
    return hashlib.sha256(repr(sorted(layers)).encode()).hexdigest()[:16]


def conv_macs(model: nn.Module, *, input_shape: Sequence[int] = (1, 3, 256, 256)) -> int:
    """Multiply-accumulates of every Conv2d for one forward pass (achieved FLOP/s = 2*MACs/s)."""
    return int(ntire_counts(model, input_shape=input_shape)["conv_macs"])


# -- latency ---------------------------------------------------------------------------------

def device_name(device: torch.device | str) -> str:
    """A human-readable name of the device (GPU model or CPU model)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of a /proc/cpuinfo text (lower-case keys)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (``avx512_bf16``, ``amx_bf16`` ...); empty where unknown."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    info = parse_cpuinfo(text or "")
    return set((info.get("flags") or info.get("features") or "").split())


def _gpu_driver() -> str:
    with contextlib.suppress(OSError):
        text = Path("/proc/driver/nvidia/version").read_text()
        for word in text.split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20).stdout.strip().splitlines()
            if out:
                return out[0].strip()
    return "unknown"


def hardware_id(device: torch.device | str = "cpu", *, cpuinfo: str | None = None) -> dict[str, Any]:
    """What identifies the hardware a latency belongs to, exactly.

    A model name is not enough: under KVM two different AMD EPYCs both read "AMD EPYC", so a
    CPU is identified by vendor, family, model, stepping and a hash of its feature flags (plus
    the model name and the logical CPU count), read from /proc/cpuinfo (``cpuinfo`` overrides
    the text, for tests); elsewhere by what :mod:`platform` knows. A GPU is identified by its
    name, compute capability, memory, driver, CUDA and cuDNN versions.
    """
    import hashlib

    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index or 0
        props = torch.cuda.get_device_properties(index)
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return {"kind": "cuda", "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_mb": int(props.total_memory // 2**20), "driver": _gpu_driver(),
                "cuda": str(torch.version.cuda), "cudnn": str(cudnn)}
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    info = parse_cpuinfo(text or "")
    flags = sorted(set((info.get("flags") or info.get("features") or "").split()))
    out: dict[str, Any] = {"kind": "cpu", "cpus": os.cpu_count()}
    if info:
        out.update({"vendor": info.get("vendor_id") or info.get("cpu implementer", "?"),
                    "family": info.get("cpu family") or info.get("cpu architecture", "?"),
                    "model": info.get("model", "?"),
                    "stepping": info.get("stepping") or info.get("cpu revision", "?"),
                    "model_name": info.get("model name", "")})
    else:
        out.update({"vendor": platform.processor() or "?", "family": platform.machine() or "?",
                    "model": platform.system() or "?", "stepping": "?", "model_name": ""})
    out["flags_sha256"] = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16]
    return out


def hardware_key(device: torch.device | str = "cpu", *, cpuinfo: str | None = None) -> str:
    """:func:`hardware_id` as one string, for cache keys and records."""
    hw = hardware_id(device, cpuinfo=cpuinfo)
    if hw["kind"] == "cuda":
        return (f"cuda:{hw['name']}|sm{hw['capability']}|{hw['memory_mb']}MB|driver {hw['driver']}"
                f"|cuda {hw['cuda']}|cudnn {hw['cudnn']}")
    return (f"cpu:{hw['vendor']}|family {hw['family']}|model {hw['model']}|stepping "
            f"{hw['stepping']}|flags {hw['flags_sha256']}|{hw['model_name']}|x{hw['cpus']}")


def _resolve(device: str | torch.device | None) -> torch.device:
    from workbench.core.device import resolve_device

    return resolve_device(device)


def _summary(times_ms: Sequence[float]) -> dict[str, float]:
    return timing.spread(times_ms, "_ms")


def _prepared_copy(model: nn.Module, device: torch.device, dtype: torch.dtype,
                   channels_last: bool) -> nn.Module:
    if dtype == torch.float16 and device.type != "cuda":
        raise WorkbenchError("fp16 latency is only measured on CUDA (CPU fp16 convs are not a "
                             "deployment path); use bf16 on CPU")
    m = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def _record(device: torch.device, dtype: torch.dtype, threads: int, input_shape: Sequence[int],
            **extra: Any) -> dict[str, Any]:
    return {"device": str(device), "device_name": device_name(device),
            "hardware": hardware_key(device), "dtype": str(dtype).replace("torch.", ""), "threads": threads,
            "torch": torch.__version__, "input_shape": list(input_shape), **extra}


def measure_latency(model: nn.Module, *, input_shape: Sequence[int] = (1, 3, 256, 256),
                    device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                    warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS, threads: int | None = None,
                    channels_last: bool = False, prepared: bool = False,
                    clock: str = "wall") -> dict[str, Any]:
    """Latency of one forward pass on a random 0..255 input of ``input_shape``.

    The model is copied and moved to ``device``/``dtype`` (the caller's model is untouched) unless
    ``prepared`` says it is already there (e.g. a :func:`workbench.measure.deploy.prepare` result).
    ``clock="cpu"`` times process CPU time instead of wall time (see :class:`_Timer`).
    Returns median/p90/mean/min in ms and the conditions of the measurement.
    """
    dev = _resolve(device)
    dt = parse_dtype(dtype)
    if repeats < 1 or warmup < 0:
        raise WorkbenchError(f"repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    with num_threads(threads) as used:
        m = model if prepared else _prepared_copy(model, dev, dt, channels_last)
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(tuple(input_shape), generator=gen) * 255.0).to(device=dev, dtype=dt)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        timer = _Timer(dev, clock)
        times: list[float] = []
        with torch.inference_mode():
            for _ in range(warmup):
                m(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            for _ in range(repeats):
                times.append(timer(lambda: m(x)))
    return {**_summary(times), "repeats": repeats, "warmup": warmup,
            **_record(dev, dt, used, input_shape, channels_last=channels_last, clock=clock)}


#: Interleaved rounds and untimed warm-up calls of a side-by-side comparison.
COMPARE_ROUNDS, COMPARE_WARMUP = 20, 3


def compare_latency(runners: dict[str, nn.Module], *, input_shape: Sequence[int] = (1, 3, 256, 256),
                    device: str | torch.device = "cpu", rounds: int = COMPARE_ROUNDS,
                    warmup: int = COMPARE_WARMUP,
                    threads: int | None = None, clock: str = "wall",
                    progress: bool = False) -> list[dict[str, Any]]:
    """Several prepared models (e.g. :func:`workbench.measure.deploy.prepare` results taking float32
    input), timed interleaved in one run; one row per model with its latency statistics and
    its per-round latency ratio to the *first* model (median, p10, p90), so two models or two
    deploy modes are compared side by side under the same load."""
    if not runners:
        raise WorkbenchError("nothing to compare")
    dev = _resolve(device)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(tuple(input_shape), generator=gen) * 255.0).to(dev)
    first = next(iter(runners))
    with num_threads(threads) as used:
        times = interleaved_times({n: (lambda m=m: m(x)) for n, m in runners.items()}, device=dev,
                                  rounds=rounds, warmup=warmup, clock=clock, progress=progress,
                                  desc=f"{len(runners)} models interleaved")
    ratios = round_ratios(times, first)
    cond = _record(dev, torch.float32, used, input_shape, clock=clock)
    rows = []
    for name in runners:
        r = timing.spread(ratios[name])
        rows.append({"name": name, **_summary(times[name]), "ratio": r["median"],
                     "ratio_p10": r["p10"], "ratio_p90": r["p90"], "reference": first,
                     "rounds": rounds, "warmup": warmup, **cond})
    return rows


def compare_models(models: Mapping[str, nn.Module], modes: Sequence[str] | None = None, *,
                   input_shape: Sequence[int] = (1, 3, 256, 256), device: str | torch.device = "cpu",
                   rounds: int = COMPARE_ROUNDS, warmup: int = COMPARE_WARMUP,
                   threads: int | None = None,
                   clock: str = "wall", progress: bool = False) -> list[dict[str, Any]]:
    """Every (model, deploy mode) pair prepared and timed interleaved in one run
    (:func:`compare_latency`): one row per pair, named ``"<label> [<mode>]"``, with ``label``,
    ``deploy_mode`` and the NTIRE ``counts`` at ``input_shape``. ``modes`` default to the
    device's fastest fp32 mode for the first model (as for one model)."""
    from workbench.measure.deploy import check_mode, default_mode, fresh_compile, prepare

    if not models:
        raise WorkbenchError("nothing to compare")
    dev = _resolve(device)
    shape = tuple(int(v) for v in input_shape)
    modes = list(modes) if modes else [default_mode(dev, next(iter(models.values())))]
    for mode in modes:
        check_mode(mode, dev)
    if "compile" in modes:
        fresh_compile(limit=2 * len(models) + 8)
    runners: dict[str, nn.Module] = {}
    meta: dict[str, dict[str, Any]] = {}
    for label, model in models.items():
        counts = ntire_counts(model, input_shape=shape)
        for mode in modes:
            name = f"{label} [{mode}]"
            runners[name] = prepare(model, device=dev, mode=mode, example_shape=shape)
            meta[name] = {"label": label, "deploy_mode": mode, "counts": counts}
    rows = compare_latency(runners, input_shape=shape, device=dev, rounds=rounds, warmup=warmup,
                           threads=threads, clock=clock, progress=progress)
    for row in rows:
        row.update(meta[row["name"]])
    return rows


def _lr_images(source: Any) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 HWC) for a folder of images, a PairedSet, or a list of arrays/pairs."""
    if isinstance(source, (str, os.PathLike)):
        from workbench.data.images import read_image, require_images

        return [(f.stem, read_image(f)) for f in require_images(source, "LR images")]
    pairs = getattr(source, "pairs", source)
    out = []
    for i, item in enumerate(pairs):
        if isinstance(item, np.ndarray):
            out.append((f"image{i}", item))
        else:
            out.append((str(getattr(item, "name", f"image{i}")), np.asarray(item.lr)))
    if not out:
        raise WorkbenchError("no LR images to time")
    return out


def ntire_latency(model: nn.Module, lr_folder_or_set: Any, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype | str = torch.float32, warmup: int = 3,
                  threads: int | None = None, channels_last: bool = False,
                  prepared: bool = False, progress: bool = False,
                  clock: str = "wall") -> dict[str, Any]:
    """The NTIRE challenge's runtime protocol: mean per-image time over full LR images.

    ``lr_folder_or_set`` is a folder of LR images, a PairedSet (its LR images) or a list of uint8
    HWC arrays. The first image is run ``warmup`` times first; each image is then timed once
    (host-to-device copy excluded, device synchronised).
    """
    from workbench.core.progress import tqdm

    dev = _resolve(device)
    dt = parse_dtype(dtype)
    images = _lr_images(lr_folder_or_set)
    with num_threads(threads) as used:
        m = model if prepared else _prepared_copy(model, dev, dt, channels_last)
        timer = _Timer(dev, clock)
        per_image: list[dict[str, Any]] = []

        def to_input(arr: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).unsqueeze(0)
            x = x.to(device=dev, dtype=dt)
            return x.contiguous(memory_format=torch.channels_last) if channels_last else x

        with torch.inference_mode():
            first = to_input(images[0][1])
            for _ in range(warmup):
                m(first)
            for name, arr in tqdm(images, desc="ntire latency", unit="img", disable=not progress,
                                  leave=False):
                x = to_input(arr)
                per_image.append({"name": name, "shape": list(arr.shape[:2]),
                                  "ms": timer(lambda: m(x))})
    stats = timing.spread([p["ms"] for p in per_image], "_ms")
    return {"mean_ms": stats["mean_ms"], "median_ms": stats["median_ms"],
            "images": len(per_image), "per_image": per_image, "warmup": warmup,
            **_record(dev, dt, used, [1, 3, "H", "W"], channels_last=channels_last, clock=clock,
                      protocol="ntire: mean per-image time over full LR images")}


# -- trunk-width sweep -----------------------------------------------------------------------

def _trunk_groups(spec: Any, include_mid: bool = False) -> list[str]:
    from workbench.models import group_widths

    return [g for g in group_widths(spec)
            if g.startswith("trunk.") or (include_mid and g.endswith((".mid1", ".mid2")))]


def sweep_trunk_widths(base_spec: Any, widths: Iterable[int] = range(32, 65, 2), *,
                       input_shape: Sequence[int] = (1, 3, 256, 256),
                       device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                       warmup: int = 3, repeats: int = 10, threads: int | None = None,
                       channels_last: bool = False, include_mid: bool = False,
                       deploy_mode: str | None = None, clock: str = "wall",
                       progress: bool = True) -> list[dict[str, Any]]:
    """Latency of ``base_spec`` rebuilt with each uniform trunk width (random weights).

    Every trunk group (``trunk.0`` ... ``trunk.<n>``) gets the width; middle and ESA widths stay
    unless ``include_mid`` also sets every block's middle widths (``block<i>.mid1/mid2``).
    ``deploy_mode`` times each width as :func:`workbench.measure.deploy.prepare` makes it (e.g. ``fused``).
    Measurements are interleaved (one timed pass of every width per round) so that a change in
    background load spreads over all widths instead of biasing some of them.
    Returns one row per width: width, params, flops_g, median_ms, p90_ms, mean_ms, min_ms, and
    the measurement conditions.
    """
    from workbench.models import build_model

    dev = _resolve(device)
    dt = parse_dtype(dtype)
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise WorkbenchError(f"sweep widths must be positive integers, got {widths}")
    groups = _trunk_groups(base_spec, include_mid)
    torch.manual_seed(0)
    models: dict[int, nn.Module] = {}
    rows: dict[int, dict[str, Any]] = {}
    for w in widths:
        spec = base_spec.with_widths({g: w for g in groups})
        m = build_model(spec).eval()
        counts = ntire_counts(m, input_shape=input_shape)
        rows[w] = {"width": w, "params": counts["params"], "flops_g": counts["flops_g"]}
        if deploy_mode is not None:
            from workbench.measure.deploy import prepare

            models[w] = prepare(m, device=dev, mode=deploy_mode, example_shape=input_shape)
        else:
            models[w] = _prepared_copy(m, dev, dt, channels_last)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(tuple(input_shape), generator=gen) * 255.0).to(device=dev, dtype=dt)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if deploy_mode is not None:
        x = x.float()
    with num_threads(threads) as used:
        by_name = interleaved_times({str(w): (lambda m=models[w]: m(x)) for w in widths},
                                    device=dev, rounds=repeats, warmup=warmup, clock=clock,
                                    progress=progress, desc="width sweep")
    times = {w: by_name[str(w)] for w in widths}
    cond = _record(dev, dt, used, input_shape, channels_last=channels_last, include_mid=include_mid,
                   deploy_mode=deploy_mode, clock=clock)
    return [{**rows[w], **_summary(times[w]), "repeats": repeats, "warmup": warmup, **cond}
            for w in widths]


_SWEEP_COLUMNS = ("width", "params", "flops_g", "median_ms", "p90_ms", "mean_ms", "min_ms",
                  "repeats", "device", "device_name", "dtype", "threads", "clock", "deploy_mode",
                  "torch")


def write_sweep_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the sweep rows as CSV (atomically)."""
    import csv

    from workbench.core.files import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_SWEEP_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())
    return Path(path)


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *,
               title: str | None = None, reference_width: int | None = None) -> Path:
    """Latency (median with p90 bar) and FLOPs against trunk width, as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from workbench.core.files import atomic_save_figure

    w = [r["width"] for r in rows]
    med = [r["median_ms"] for r in rows]
    p90 = [r["p90_ms"] for r in rows]
    flops = [r["flops_g"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.errorbar(w, med, yerr=[np.zeros(len(med)), np.subtract(p90, med)], fmt="o-", capsize=3,
                label="median latency (bar: p90)")
    ax.set_xlabel("trunk width (channels)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(w, flops, "s--", color="tab:gray", alpha=0.6, label="NTIRE FLOPs (G)")
    ax2.set_ylabel("FLOPs (G)")
    if reference_width is not None:
        ax.axvline(reference_width, color="tab:red", alpha=0.4, linestyle=":")
    r0 = rows[0]
    ax.set_title(title or f"latency vs trunk width: {r0['device_name']}, {r0['dtype']}, "
                          f"{r0['threads']} threads, input {'x'.join(map(str, r0['input_shape']))}"
                          + (", CPU-time clock" if r0.get("clock") == "cpu" else "")
                          + (f", deploy {r0['deploy_mode']}" if r0.get("deploy_mode") else ""),
                 fontsize=9)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    return Path(path)
