"""Inference paths for deployment, each checked against fp32 eager to within one gray level.

:func:`prepare` turns a trained model into a :class:`Deployed` module for one device and one
execution mode. Every mode takes and returns float32 NCHW tensors on the 0..255 scale, so callers
(evaluation, latency measurement, a service) need not know how the model runs inside.

Modes (see :data:`MODES`); every one was checked on the released rlfn_ntire_x4 and Set5:

``eager``          the model as trained (fp32, contiguous NCHW): the reference.
``channels_last``  NHWC memory format for weights and activations: oneDNN's preferred layout on
                   CPU, cuDNN's for tensor cores on GPU. Max 1 gray level from eager.
``fused``          CPU, every family: the family's declared ``Family.fused`` form (RLFN: the
                   forward rewritten as one oneDNN primitive per conv on channels_last tensors,
                   LeakyReLU / sigmoid fused as post-ops, ESA's mask multiply and the skip adds
                   as binary / sum post-ops, ESA's conv1 folded into c5, widths 46 -> 48,
                   weights pre-reordered, 1x1 convs kept on oneDNN (eager sends them to a slow
                   im2col path in channels_last); see :class:`workbench.models.rlfn.FusedRLFN`;
                   SPAN likewise with SiLU fused and its x255 folded into conv_1), or
                   :func:`generic_fused` (torch.fx: every conv one oneDNN primitive with its
                   activation fused). No compile step; any input size. Max 1 gray level.
``compile``        ``torch.compile`` (inductor) with channels_last and *freezing* (weights become
                   constants, so convs are pre-packed and bias/activations fused) of the family's
                   ``Family.compiled`` form (RLFN: the fused form's folded, padded convs in plain
                   PyTorch) or of the model; works offline on CPU; the first call per input
                   shape compiles (10-80 s here). Max 1 gray level.

Every CPU mode runs with :func:`keep_freed_memory` (glibc keeps freed activations in the heap
instead of page-faulting them in again on every forward).
``bf16``           the family's ``Family.bf16`` form, or :func:`generic_bf16`: the body in
                   bfloat16 (weights and activations), the stem and the upsampler (RLFN: also the
                   long skip) in fp32. Measured on RLFN: up to 6 gray levels from fp32 eager
                   on Set5 x4 (0.001 dB Y-PSNR), so NOT within the one-level budget.
``bf16_autocast``  ``torch.autocast`` to bfloat16 everywhere: up to 7 gray levels (not within).
``int8``           CPU, every family: torchao PT2E int8 (uint8 activations, per-channel int8
                   weights, the layers the family declares fp32, e.g. stem and upsampler convs;
                   :mod:`workbench.measure.quantize`) under torch.compile with freezing. A model that carries a quantization state (an artifact of the
                   ``quantize`` stage) uses it; any other is calibrated post-training on
                   ``calibration`` (default: crops of the shipped T91 samples). Judged by PSNR,
                   not by the one-level budget.
``int8_bf16``      ``int8`` with everything that is not an int8 conv in bfloat16 (torchao's
                   int8-mixed-bf16: compiled and run under ``torch.autocast``): the kept-fp32
                   layers, LeakyReLU (not fusable into oneDNN's int8 conv), ESA's tail and the
                   adds. For CPUs with native bf16 (AVX512-BF16, AMX): rlfn_s_x4 2.49x fp32
                   ``compile`` against int8's 1.64x (side by side). Judged by PSNR.
``fp16``           GPU only: weights and activations in float16, channels_last.
``cuda_graph``     GPU only: channels_last fp32 (or ``dtype="fp16"``) captured once per input
                   shape as a CUDA graph and replayed, removing the launch overhead of the ~40
                   small kernels of a forward pass.

The GPU paths are written and guarded by ``torch.cuda.is_available()``; they were not run on this
CPU-only machine.

:func:`max_gray_diff` measures the largest difference in gray levels (after clamping and rounding
to uint8) between a prepared model and fp32 eager on given images; :func:`check_deploy` raises if
it exceeds a tolerance. Reduced precision is judged by quality instead (:func:`judge_precision`:
accepted when PSNR-Y on the validation set drops by at most 0.01 dB; the pixel difference is
reported but does not decide). :func:`default_mode` names the mode latency is measured in when
none is given: the device's fastest fp32 mode.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from workbench.core.errors import WorkbenchError

__all__ = ["MODES", "CPU_MODES", "GPU_MODES", "Deployed", "prepare", "max_gray_diff",
           "check_deploy", "available_modes", "RECOMMENDED", "default_mode",
           "reduced_precision_mode", "judge_precision", "PRECISION_DROP_DB", "fresh_compile",
           "INT8_MODES", "keep_freed_memory"]

CPU_MODES = ("eager", "channels_last", "fused", "compile", "bf16", "bf16_autocast", "int8",
             "int8_bf16")
GPU_MODES = ("eager", "channels_last", "compile", "bf16", "bf16_autocast", "fp16", "cuda_graph")
#: The fastest fp32 mode within one gray level, per device type (see bench/bench_deploy.py).
RECOMMENDED = {"cpu": "fused", "cuda": "cuda_graph"}
MODES = tuple(dict.fromkeys(CPU_MODES + GPU_MODES))
#: The int8 modes (a quantization state or PTQ calibration; judged by PSNR like reduced precision).
INT8_MODES = ("int8", "int8_bf16")
#: Reduced-precision modes: accepted by PSNR (:func:`judge_precision`), not by gray levels.
REDUCED_PRECISION = ("bf16", "bf16_autocast", "fp16")
#: The most PSNR-Y (dB) a reduced precision may cost on the validation set to be accepted.
PRECISION_DROP_DB = 0.01

CL = torch.channels_last


def available_modes(device: str | torch.device = "cpu") -> tuple[str, ...]:
    """The modes that can run on ``device`` in this process."""
    return GPU_MODES if torch.device(device).type == "cuda" else CPU_MODES


#: Revision of the deploy forms, part of every latency cache key (``<mode>.r<N>``): a timing of an
#: older form of the same mode is another model's timing. Bump it when a form changes what runs.
#: r2: RLFN's fused/compile forms fold ESA's conv1 into c5, fuse the mask multiply and the skip
#: adds as oneDNN post-ops and pad widths near a multiple of 16 (46 -> 48).
FORMS_REVISION = 2


def default_mode(device: str | torch.device = "cpu", model: nn.Module | None = None) -> str:
    """The deploy mode latency is measured in unless one is named: the fastest fp32 mode.

    The rule: on a GPU ``cuda_graph`` (the fastest fp32 path, no per-model compile); on a CPU
    the family's ``cpu_default_deploy`` (``model`` None means an RLFN: ``fused``; SPAN: ``fused``,
    0.77x its ``channels_last`` time; wrapped modules keep ``channels_last``) and
    ``channels_last`` for a module no family built.
    ``compile`` is not the CPU default although it can be a few percent faster than ``fused``
    (243 vs 250 ms for rlfn_ntire_x4 in bench/bench_deploy.py): it costs 5-80 s of compiling
    per model and input shape, which a search pays for every candidate. Name it
    (``--deploy compile``) to time the compiled model; the search then compiles each
    candidate afresh (:func:`fresh_compile`).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return RECOMMENDED["cuda"]
    if model is None:
        return RECOMMENDED["cpu"]
    from workbench.models.family import family_of

    try:
        return family_of(model).cpu_default_deploy
    except WorkbenchError:
        return "channels_last"


def reduced_precision_mode(device: str | torch.device = "cpu", *,
                           cpuinfo: str | None = None) -> str | None:
    """The reduced-precision mode worth judging on ``device``: ``fp16`` on a GPU, ``bf16`` on a
    CPU with native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16 flags), else None (bf16 is
    emulated and slower there). ``cpuinfo`` overrides /proc/cpuinfo (tests)."""
    from workbench.measure.profiling import cpu_flags

    if torch.device(device).type == "cuda":
        return "fp16"
    flags = cpu_flags(cpuinfo)
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else None


def fresh_compile(limit: int = 64) -> None:
    """Forget every compiled graph and make room for ``limit`` more variants.

    dynamo keeps one cache per code object: after ``recompile_limit`` (8) compiled variants of
    one model class in a process it silently runs eager. A process that compiles one model
    after another (a search's candidates) calls this before each, so every candidate is
    timed compiled and old graphs do not pile up in memory.
    """
    import torch._dynamo as dynamo
    import torch._dynamo.config as dynamo_config

    dynamo.reset()
    dynamo_config.recompile_limit = max(int(dynamo_config.recompile_limit), int(limit))
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(
            int(dynamo_config.accumulated_recompile_limit), 4 * int(limit))


def check_mode(mode: str, device: str | torch.device) -> None:
    """Raise WorkbenchError (for a ``--deploy`` flag) unless ``mode`` can run on ``device``."""
    if mode not in available_modes(device):
        where = "needs a CUDA GPU" if mode in MODES else "is unknown"
        raise WorkbenchError(f"--deploy {mode}: mode {where}; modes on {device}: "
                             f"{', '.join(available_modes(device))}")


class Deployed(nn.Module):
    """A model prepared for inference: float32 0..255 NCHW in, float32 0..255 NCHW out.

    ``runner`` does the work on inputs already converted to ``dtype`` and ``memory_format`` on
    ``device``. ``module`` is the underlying (converted) model, kept for inspection.
    """

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, *,
                 mode: str, device: torch.device, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, scale: int | None = None) -> None:
        super().__init__()
        self.runner = runner
        self.module = module
        self.mode = mode
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = CL if self.channels_last else torch.contiguous_format
        with torch.inference_mode():
            x = x.to(device=self.device, dtype=self.dtype)
            # The runner always sees an inference tensor: a compiled graph guards on the input's
            # dispatch keys, so a tensor made outside inference mode (prepare's warm-up, a user's
            # call) and one made inside it (the timing loops, evaluation) would each compile.
            x = x.contiguous(memory_format=fmt) if x.is_inference() else x.clone(memory_format=fmt)
            out = self.runner(x)
        return out.float()

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, device={self.device}, dtype={self.dtype}, "
                f"channels_last={self.channels_last}")


#: glibc mallopt parameters (malloc.h) and the values :func:`keep_freed_memory` sets: blocks up to
#: 32 MiB (glibc's largest mmap threshold on 64-bit) come from the heap, and up to 1 GiB of free
#: heap top is kept instead of being returned to the system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES, _TRIM_THRESHOLD_BYTES = 32 << 20, 1 << 30
_FREED_MEMORY_KEPT: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed activation memory for reuse (process-wide, once).

    A CPU forward allocates each activation afresh (rlfn_ntire_x4 at 256x256: a dozen 12 MB
    maps). glibc returns such blocks to the system on free (mmap, or trimming the heap top), so
    the next forward page-faults them in again: 8,400 minor faults per ``fused`` forward and
    18,700 per ``compile`` forward, 20 and 36 ms of system time (5-8% of the forward) at one
    thread here. Keeping them in the heap removes the faults (the usual advice is to preload
    jemalloc or tcmalloc; this is the same effect within glibc). The cost: the process keeps its
    peak heap. Returns whether the setting is in effect (False off glibc); :func:`prepare` calls
    it for every CPU mode.
    """
    global _FREED_MEMORY_KEPT
    if _FREED_MEMORY_KEPT is None:
        _FREED_MEMORY_KEPT = False
        try:
            import ctypes

            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _FREED_MEMORY_KEPT = (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
                                  and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1)
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
            pass
    return _FREED_MEMORY_KEPT


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    m = copy.deepcopy(model).eval().to(device)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


class _PackedConv:
    """A Conv2d as a oneDNN call with an optional fused post-op (weights pre-reordered)."""

    def __init__(self, conv: nn.Conv2d, example_hw: tuple[int, int] | None, prepack: bool) -> None:
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        weight = conv.weight.detach().contiguous()
        if prepack and example_hw is not None:
            weight = torch.ops.mkldnn._reorder_convolution_weight(
                weight, self.padding, self.stride, self.dilation, self.groups,
                [1, conv.in_channels, *example_hw])
        self.weight = weight
        self.bias = None if conv.bias is None else conv.bias.detach().contiguous()

    def __call__(self, x: torch.Tensor, attr: str = "none", scalars: Sequence[Any] = ()) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            attr, list(scalars), "")


def _pixel_shuffle_nhwc(x: torch.Tensor, s: int) -> torch.Tensor:
    """pixel_shuffle for a channels_last tensor as one copy (F.pixel_shuffle is slower on NHWC)."""
    n, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, c // (s * s), s, s)
    return nhwc.permute(0, 3, 1, 4, 2, 5).reshape(n, c // (s * s), h * s, w * s)


def _frozen_compile(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` (inductor, static shapes) with *freezing* on for every compilation.

    Freezing turns weights into constants, so oneDNN pre-packs the convs and fuses bias and
    activations into them. It must be set in inductor's config while a shape compiles: passed as
    ``torch.compile(options={"freezing": True})`` it is ignored (measured on torch 2.13: the convs
    stayed ``aten.convolution`` with unpacked weights), and compilation is lazy (first call per
    shape), so the patch wraps every call.
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, backend="inductor", dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(x)

    run.module = module  # what was compiled (a family's ``compiled`` form, or the model)
    return run


def _family_form(model: nn.Module, name: str) -> Callable | None:
    """The family's deploy form ``name`` (a Family field), or None (no family, or none declared)."""
    from workbench.models.family import family_of

    try:
        return getattr(family_of(model), name, None)
    except WorkbenchError:
        return None


def _family_or_refuse(model: nn.Module, mode: str):
    """The family of ``model`` (its deploy forms), or a WorkbenchError for a bare module."""
    from workbench.models.family import family_of

    try:
        return family_of(model)
    except WorkbenchError:
        raise WorkbenchError(f"deploy mode {mode!r} rewrites a family model's forward (RLFN, SPAN, "
                             f"DIPNet or a registered family); {type(model).__name__} has no "
                             "family: use channels_last, compile or bf16_autocast") from None


class _PackedConvModule(nn.Module):
    """A Conv2d replaced by one oneDNN primitive with an optional fused activation (``attr``)."""

    def __init__(self, conv: nn.Conv2d, attr: str, scalars: Sequence[Any],
                 example_hw: tuple[int, int] | None) -> None:
        super().__init__()
        # a strided conv's input size is not the example's: no size hint for its weight layout
        hint = example_hw if conv.stride == (1, 1) else None
        self.conv = _PackedConv(conv, hint, prepack=hint is not None)
        self.attr = attr
        self.scalars = list(scalars)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.contiguous(memory_format=CL), self.attr, self.scalars)


def _activation_of(node: Any, modules: dict[str, nn.Module]) -> tuple[str, list[float]] | None:
    """The oneDNN post-op equivalent of fx ``node`` when it is a plain activation, else None."""
    import torch.nn.functional as F

    def slope(default: float = 0.01) -> float:
        if len(node.args) > 1:
            return float(node.args[1])
        return float(node.kwargs.get("negative_slope", default))

    if node.op == "call_module":
        mod = modules.get(str(node.target))
        if isinstance(mod, nn.ReLU):
            return "relu", []
        if isinstance(mod, nn.SiLU):
            return "swish", []
        if isinstance(mod, nn.Sigmoid):
            return "sigmoid", []
        if isinstance(mod, nn.Tanh):
            return "tanh", []
        if isinstance(mod, nn.LeakyReLU):
            return "leaky_relu", [float(mod.negative_slope)]
        return None
    if node.op == "call_function":
        if node.target in (torch.relu, F.relu, torch.relu_):
            return "relu", []
        if node.target is F.silu:
            return "swish", []
        if node.target in (torch.sigmoid, F.sigmoid):
            return "sigmoid", []
        if node.target in (torch.tanh, F.tanh):
            return "tanh", []
        if node.target is F.leaky_relu:
            return "leaky_relu", [slope()]
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_", "sigmoid", "tanh"):
        return {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}[node.target], []
    return None


def _plain_conv(mod: nn.Module) -> bool:
    return (type(mod) is nn.Conv2d and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str))


def generic_fused(model: nn.Module, example_hw: tuple[int, int] | None) -> nn.Module:
    """The ``fused`` form of any module (a family that declares none gets this one).

    The model is traced with torch.fx; every plain Conv2d becomes one pre-packed oneDNN
    primitive on channels_last tensors, with the activation that is its only user (ReLU, SiLU,
    sigmoid, tanh, LeakyReLU) fused as a post-op. A forward fx cannot trace (data-dependent
    control flow) keeps its Python code and only has its convs replaced. Exact to summation order.
    """
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure: convs only, the forward as written
        gm = None
    if gm is None:
        for name, mod in list(model.named_modules()):
            if _plain_conv(mod):
                parent_name, _, leaf = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, leaf, _PackedConvModule(mod, "none", (), example_hw))
        return model
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _plain_conv(modules.get(str(node.target))):
            continue
        conv = modules[str(node.target)]
        attr, scalars = "none", []
        users = list(node.users)
        if len(users) == 1:
            act = _activation_of(users[0], modules)
            if act is not None:
                attr, scalars = act
                users[0].replace_all_uses_with(node)
                gm.graph.erase_node(users[0])
        name = str(node.target)
        parent_name, _, leaf = name.rpartition(".")
        setattr(gm.get_submodule(parent_name) if parent_name else gm, leaf,
                _PackedConvModule(conv, attr, scalars, example_hw))
    gm.graph.lint()
    gm.recompile()
    return gm


class _Fp32Island(nn.Module):
    """A conv kept in fp32 inside a bfloat16 model: casts its input up and its output back."""

    def __init__(self, conv: nn.Conv2d, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = conv.float()
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float()).to(self.out_dtype)


class _GenericBF16(nn.Module):
    """Any model with its weights and activations in bfloat16 except the first conv (the raw
    image in) and the protected convs (those feeding a PixelShuffle or producing the output),
    which run in fp32; the output is cast back to fp32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from workbench.prune.groups import protected_convs

        x = None
        first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            from workbench.prune.groups import example_input

            x = example_input(model, size=16).contiguous(memory_format=CL)
        keep = set(protected_convs(model, x)) | ({first} if first else set())
        self.model = model.to(torch.bfloat16)
        for name in keep:
            parent_name, _, leaf = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, leaf, _Fp32Island(getattr(parent, leaf), torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the input stays fp32 up to the first conv (an island): [0, 1] images are not exact in bf16
        return self.model(x).float()


def generic_bf16(model: nn.Module) -> nn.Module:
    """The ``bf16`` form of any module (see :class:`_GenericBF16`)."""
    return _GenericBF16(model)


class _CudaGraphRunner:
    """Captures ``module`` once per input shape as a CUDA graph and replays it."""

    def __init__(self, module: nn.Module, warmup: int = 3) -> None:
        self.module = module
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def _capture(self, x: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        static_in = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.module(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.module(static_in)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=CL))
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


def prepare(model: nn.Module, *, device: str | torch.device = "cpu", mode: str = "eager",
            example_shape: Sequence[int] | None = (1, 3, 256, 256), dtype: str | None = None,
            warmup: bool = True, calibration: Sequence[torch.Tensor] | None = None) -> Deployed:
    """Prepare a copy of ``model`` for inference on ``device`` in ``mode`` (see module docstring).

    ``example_shape`` is used to warm up, compile or capture up front and as the size hint for
    the ``fused`` weight layout (any input size still works; ``compile`` compiles once per new
    shape). ``dtype`` only applies to ``cuda_graph`` (``"fp16"`` captures the fp16 model);
    ``calibration`` (1x3xHxW LR float tensors, 0..255) only to ``int8``. The caller's model is
    not modified.
    """
    from workbench.measure.evaluate import resolve_device

    dev = resolve_device(device)
    if mode not in MODES:
        raise WorkbenchError(f"unknown deploy mode {mode!r}; modes: {', '.join(MODES)}")
    if mode not in available_modes(dev):
        raise WorkbenchError(f"deploy mode {mode!r} needs a CUDA GPU (this device: {dev}); "
                             f"modes here: {', '.join(available_modes(dev))}")
    scale = getattr(model, "scale", None)
    if dev.type == "cpu":
        keep_freed_memory()
    m = _copy_to(model, dev)
    example = None
    if example_shape is not None:
        gen = torch.Generator().manual_seed(0)
        example = (torch.rand(tuple(example_shape), generator=gen) * 255).to(dev)

    def done(runner: Callable, module: nn.Module, *, dt: torch.dtype = torch.float32,
             cl: bool = False) -> Deployed:
        dep = Deployed(runner, module, mode=mode, device=dev, dtype=dt, channels_last=cl,
                       scale=scale)
        if hasattr(model, "spec"):
            dep.spec = model.spec  # its family's input range applies to the prepared model too
        if warmup and example is not None:
            dep(example)
        return dep

    if mode == "eager":
        return done(m, m)
    if mode == "channels_last":
        m = m.to(memory_format=CL)
        return done(m, m, cl=True)
    if mode == "fused":
        fam = _family_or_refuse(model, mode)
        m = m.to(memory_format=CL)
        hw = tuple(example_shape[2:]) if example_shape is not None else None
        fused = (fam.fused or generic_fused)(m, hw)
        return done(fused, m, cl=True)
    if mode == "compile":
        import torch._dynamo.config as dynamo_config

        # One graph per input shape: a benchmark set has a dozen shapes, and past the default
        # limit of 8 dynamo silently falls back to eager.
        dynamo_config.recompile_limit = max(int(dynamo_config.recompile_limit), 64)
        m = m.to(memory_format=CL)
        form = _family_form(model, "compiled")
        compiled = form(m).to(memory_format=CL) if form is not None else m
        return done(_frozen_compile(compiled), m, cl=True)
    if mode == "bf16":
        fam = _family_or_refuse(model, mode)
        m = m.to(memory_format=CL)
        mixed = (fam.bf16 or generic_bf16)(m)
        return done(mixed, mixed, cl=True)
    if mode == "bf16_autocast":
        m = m.to(memory_format=CL)

        def run_autocast(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                return m(x)

        return done(run_autocast, m, cl=True)
    if mode in INT8_MODES:
        from workbench.measure.quantize import GraphRunner, compile_int8, int8_from_model, require_int8_family

        require_int8_family(model)

        converted, info = int8_from_model(m, calibration)
        runner = GraphRunner(compile_int8(converted, bf16=mode == "int8_bf16"), converted)
        runner.quantization = info
        return done(runner, runner, cl=True)
    if mode == "fp16":
        m = m.half().to(memory_format=CL)
        return done(m, m, dt=torch.float16, cl=True)
    # cuda_graph
    dt = torch.float16 if dtype in ("fp16", "float16") else torch.float32
    m = m.to(dtype=dt, memory_format=CL)
    return done(_CudaGraphRunner(m), m, dt=dt, cl=True)


def _as_images(images: Iterable[Any]) -> list[np.ndarray]:
    out = []
    for item in getattr(images, "pairs", images):
        out.append(np.asarray(item if isinstance(item, np.ndarray) else item.lr))
    if not out:
        raise WorkbenchError("no images given to compare deploy outputs on")
    return out


def max_gray_diff(model: nn.Module, deployed: nn.Module, images: Iterable[Any], *,
                  device: str | torch.device | None = None) -> dict[str, Any]:
    """Largest per-pixel difference (gray levels, uint8 outputs) of ``deployed`` vs fp32 eager.

    ``images`` are uint8 HWC LR arrays, ImagePairs or a PairedSet. Returns ``max`` over all
    images, ``per_image`` maxima and the fraction of output values that differ at all.
    """
    from workbench.measure.evaluate import image_to_tensor, resolve_device, tensor_to_image
    from workbench.models.family import run_model

    dev = resolve_device(device) if device is not None else torch.device("cpu")
    ref_model = _copy_to(model, dev).float()
    per_image, differing, total = [], 0, 0
    for img in _as_images(images):
        x = image_to_tensor(img, dev)
        with torch.inference_mode():
            # both through the family's input range ([0, 1] for SPAN and DIPNet)
            ref = tensor_to_image(run_model(ref_model, x)).astype(np.int16)
            got = tensor_to_image(run_model(deployed, x)).astype(np.int16)
        diff = np.abs(ref - got)
        per_image.append(int(diff.max()))
        differing += int((diff > 0).sum())
        total += diff.size
    return {"max": max(per_image), "per_image": per_image, "frac_differing": differing / total}


def check_deploy(model: nn.Module, deployed: nn.Module, images: Iterable[Any], *,
                 tolerance: int = 1) -> dict[str, Any]:
    """:func:`max_gray_diff`, raising WorkbenchError when it exceeds ``tolerance`` gray levels."""
    result = max_gray_diff(model, deployed, images,
                           device=getattr(deployed, "device", None))
    if result["max"] > tolerance:
        mode = getattr(deployed, "mode", "deployed")
        raise WorkbenchError(f"deploy mode {mode!r} differs from fp32 eager by up to "
                             f"{result['max']} gray levels (> {tolerance}) on the given images")
    return result


def judge_precision(model: nn.Module, mode: str, images: Any, *,
                    device: str | torch.device = "cpu", scale: int | None = None,
                    max_drop_db: float = PRECISION_DROP_DB, progress: bool = False) -> dict[str, Any]:
    """Is reduced-precision ``mode`` good enough? Judged by quality, not by gray levels.

    ``images`` is a PairedSet (or ImagePairs with ``lr``/``hr``). The model is scored (PSNR-Y,
    paper protocol) in fp32 eager and in ``mode``; the mode is accepted when the mean PSNR-Y
    drops by at most ``max_drop_db`` (0.01 dB). bf16 moves a few pixels by up to 6-7 gray
    levels while costing 0.001-0.006 dB, so the largest pixel difference is reported
    (``max_gray_diff``) but does not decide. Returns psnr_fp32, psnr_mode, drop, max_gray_diff,
    accepted and the settings.
    """
    from workbench.measure.evaluate import evaluate_set, resolve_device

    dev = resolve_device(device)
    pairs = list(getattr(images, "pairs", images))
    if not pairs:
        raise WorkbenchError("judge_precision: no validation images")
    sc = int(scale or getattr(images, "scale", 0) or getattr(model, "scale", 0))

    from workbench.data.benchmark import PairedSet

    pset = PairedSet(name=str(getattr(images, "name", "validation")), scale=sc, root=None,
                     pairs=pairs)
    reference = prepare(model, device=dev, mode="eager", example_shape=None)
    deployed = prepare(model, device=dev, mode=mode, example_shape=None)
    base = evaluate_set(reference, pset, device=dev, progress=progress)
    got = evaluate_set(deployed, pset, device=dev, progress=progress)
    gray = max_gray_diff(model, deployed, pairs, device=dev)
    drop = float(base.mean["psnr_y"] - got.mean["psnr_y"])
    return {"mode": mode, "set": pset.name, "images": len(pairs),
            "psnr_fp32": float(base.mean["psnr_y"]), "psnr_mode": float(got.mean["psnr_y"]),
            "drop": drop, "max_drop_db": float(max_drop_db), "max_gray_diff": int(gray["max"]),
            "accepted": bool(drop <= max_drop_db)}
