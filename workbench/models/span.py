"""SPAN (Swift Parameter-free Attention Network, Wan et al., CVPRW 2024) in deploy form.

The NTIRE 2024 efficient-SR winner and the baseline of the 2025/2026 challenges. Its training-time
"Conv3XC" blocks (1x1 -> 3x3 -> 1x1 plus a 1x1 skip) fold into one 3x3 conv; the released challenge
weights are stored folded, under ``<name>.eval_conv.*``, and this module builds exactly that form
(so the weights load strictly and the deploy form is the model itself).

Forward (inputs on [0, 1]; the model subtracts the dataset mean and multiplies by 255 itself)::

    f = conv_1((x - mean) * 255)
    block i (SPAB): a1 = silu(c1_r(h)); o3 = c3_r(silu(c2_r(a1)))
                    h' = (o3 + h) * (sigmoid(o3) - 0.5)          -> also returns a1
    t = conv_2(h after the last block)
    y = conv_cat(cat[f, t, block 1's output, block <tap>'s a1])     (1x1)
    out = PixelShuffle(upsampler.0(y))                               (no residual, no de-mean)

Every width pruning can change is a field of :class:`SPANSpec`. The attention multiply ties every
block's c3_r output to its input, so conv_1's output, every c3_r output and two slices of
conv_cat's input are one channel group (``feature``); see :meth:`SPANSpec.group_widths`.

Measured against expected.json: the tapped tensor is the *last* block's c1_r output *after* its
SiLU (the release's ``out_b5_2`` comes from block_6, whose in-place SiLU changes the returned
tensor), not block 5's raw c1_r output: that reading gives 26.64 dB on Set5 instead of 31.739.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.family import (Family, ModelPreset, register_family, strip_module_prefix,
                                     unwrap_wrappers)

#: The DIV2K RGB mean the release subtracts.
SPAN_MEAN = (0.4488, 0.4371, 0.4040)


def _positive(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class SPABSpec:
    """Widths of one SPAB: ``mid1``/``mid2`` are the outputs of c1_r/c2_r (c3_r produces the
    block's input width, the ``feature`` group)."""

    mid1: int
    mid2: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            _positive("SPABSpec", name, value)


@dataclass(frozen=True)
class SPANSpec:
    """Everything that rebuilds a deploy-form SPAN.

    ``feature`` is conv_1's output (= every block's input and c3_r output); ``tail`` conv_2's
    output; ``fuse`` conv_cat's output (the upsampler's input); ``tap`` the 1-based block whose
    activated c1_r output joins conv_cat (the last block in the release, the default).
    """

    scale: int
    feature: int
    blocks: tuple[SPABSpec, ...]
    tail: int | None = None
    fuse: int | None = None
    tap: int | None = None
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 3, 4, 8):
            raise ValueError(f"SPANSpec.scale must be one of 1, 2, 3, 4, 8, got {self.scale!r}")
        _positive("SPANSpec", "feature", self.feature)
        blocks = tuple(b if isinstance(b, SPABSpec) else SPABSpec(**b) for b in self.blocks)
        if len(blocks) < 1:
            raise ValueError("SPANSpec needs at least one block")
        object.__setattr__(self, "blocks", blocks)
        for name in ("tail", "fuse"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.feature)
            _positive("SPANSpec", name, getattr(self, name))
        if self.tap is None:
            object.__setattr__(self, "tap", len(blocks))
        if not isinstance(self.tap, int) or not 1 <= self.tap <= len(blocks):
            raise ValueError(f"SPANSpec.tap must be a block index 1..{len(blocks)}, got {self.tap!r}")

    @classmethod
    def uniform(cls, *, scale: int, feature: int, blocks: int = 6) -> "SPANSpec":
        return cls(scale=scale, feature=feature,
                   blocks=tuple(SPABSpec(feature, feature) for _ in range(blocks)))

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": "span", "scale": self.scale, "feature": self.feature,
                "blocks": [asdict(b) for b in self.blocks], "tail": self.tail, "fuse": self.fuse,
                "tap": self.tap, "in_channels": self.in_channels, "out_channels": self.out_channels}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SPANSpec":
        data = dict(data)
        arch = data.pop("arch", "span")
        if arch != "span":
            raise ValueError(f"architecture {arch!r} is not 'span'")
        known = {"scale", "feature", "blocks", "tail", "fuse", "tap", "in_channels", "out_channels"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SPAN fields {sorted(unknown)}")
        blocks = tuple(SPABSpec(**b) for b in data.pop("blocks"))
        return cls(blocks=blocks, **data)

    def group_widths(self) -> dict[str, int]:
        """Readable name -> width of every coupled channel group, in network order."""
        out = {"feature": self.feature}
        for i, b in enumerate(self.blocks, start=1):
            out[f"block{i}.mid1"] = b.mid1
            out[f"block{i}.mid2"] = b.mid2
        out["tail"] = self.tail
        out["fuse"] = self.fuse
        return out

    def with_widths(self, widths: Mapping[str, int]) -> "SPANSpec":
        current = self.group_widths()
        unknown = set(widths) - set(current)
        if unknown:
            raise KeyError(f"unknown channel groups {sorted(unknown)}; known: {sorted(current)}")
        top = {k: int(v) for k, v in widths.items() if k in ("feature", "tail", "fuse")}
        blocks = [asdict(b) for b in self.blocks]
        for name, width in widths.items():
            if name.startswith("block"):
                head, _, fld = name.partition(".")
                blocks[int(head[5:]) - 1][fld] = int(width)
        return replace(self, blocks=tuple(SPABSpec(**b) for b in blocks), **top)

    def with_blocks(self, keep: list[int]) -> "SPANSpec":
        """The spec with only blocks ``keep`` (1-based, increasing), renumbered from 1. The tap
        (whose c1_r output conv_cat reads) stays its block when kept, else becomes the last kept
        block, which must then have the old tap's mid1 width (ValueError otherwise)."""
        if self.tap in keep:
            tap = keep.index(self.tap) + 1
        else:
            tap = len(keep)
            old, new = self.blocks[self.tap - 1].mid1, self.blocks[keep[-1] - 1].mid1
            if old != new:
                raise ValueError(f"block {keep[-1]} would feed conv_cat's tapped slice with {new} "
                                 f"channels, which reads {old} (block {self.tap}'s c1_r); prune "
                                 "them to equal widths first")
        return replace(self, blocks=tuple(self.blocks[k - 1] for k in keep), tap=tap)

    def describe(self) -> str:
        mids = {(b.mid1, b.mid2) for b in self.blocks}
        if mids == {(self.feature, self.feature)} and self.tail == self.fuse == self.feature:
            return f"SPAN x{self.scale}: {self.feature} channels, {self.num_blocks} blocks (deploy form)"
        return f"SPAN x{self.scale}: {self.num_blocks} blocks, widths {self.group_widths()}"


class RepConv(nn.Module):
    """A deploy-form Conv3XC: the folded 3x3 conv, kept under ``eval_conv`` as the release names it."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.eval_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_conv(x)


class SPAB(nn.Module):
    """Swift parameter-free attention block (see the module docstring)."""

    def __init__(self, channels: int, spec: SPABSpec) -> None:
        super().__init__()
        self.c1_r = RepConv(channels, spec.mid1)
        self.c2_r = RepConv(spec.mid1, spec.mid2)
        self.c3_r = RepConv(spec.mid2, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o1 = F.silu(self.c1_r(x))
        o3 = self.c3_r(F.silu(self.c2_r(o1)))
        att = torch.sigmoid(o3) - 0.5
        return (o3 + x) * att, o1


class SPAN(nn.Module):
    """Deploy-form SPAN built from a :class:`SPANSpec`; takes and returns images on [0, 1]."""

    def __init__(self, spec: SPANSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.tensor(SPAN_MEAN[:spec.in_channels]
                                                  if spec.in_channels == 3 else [0.0] * spec.in_channels)
                             .view(1, -1, 1, 1), persistent=False)
        self.conv_1 = RepConv(spec.in_channels, spec.feature)
        for i, block in enumerate(spec.blocks):
            self.add_module(f"block_{i + 1}", SPAB(spec.feature, block))
        self.conv_cat = nn.Conv2d(2 * spec.feature + spec.tail + spec.blocks[spec.tap - 1].mid1,
                                  spec.fuse, 1)
        self.conv_2 = RepConv(spec.feature, spec.tail)
        self.upsampler = nn.Sequential(
            nn.Conv2d(spec.fuse, spec.out_channels * spec.scale ** 2, 3, padding=1),
            nn.PixelShuffle(spec.scale))

    @property
    def scale(self) -> int:
        return self.spec.scale

    def blocks(self) -> list[SPAB]:
        return [getattr(self, f"block_{i + 1}") for i in range(self.spec.num_blocks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.conv_1((x - self.mean) * 255.0)
        out = feature
        first = tapped = feature
        for i, block in enumerate(self.blocks(), start=1):
            out, o1 = block(out)
            if i == 1:
                first = out
            if i == self.spec.tap:
                tapped = o1
        tail = self.conv_2(out)
        return self.upsampler(self.conv_cat(torch.cat([feature, tail, first, tapped], dim=1)))


def spec_from_state_dict(state: Mapping[str, torch.Tensor], *, scale: int | None = None) -> SPANSpec:
    """Infer every width, the block count and the scale of a deploy-form SPAN from its weights.

    The tap (whose c1_r output joins conv_cat) cannot be read from shapes when all widths are
    equal; the release's (the last block) is assumed.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"missing key {key!r}: not a SPAN state dict (deploy form)")
        return tuple(state[key].shape)

    feature, in_channels = shape("conv_1.eval_conv.weight")[:2]
    n = 0
    while f"block_{n + 1}.c1_r.eval_conv.weight" in state:
        n += 1
    blocks = tuple(SPABSpec(shape(f"block_{i}.c1_r.eval_conv.weight")[0],
                            shape(f"block_{i}.c2_r.eval_conv.weight")[0]) for i in range(1, n + 1))
    tail = shape("conv_2.eval_conv.weight")[0]
    fuse = shape("conv_cat.weight")[0]
    up_out = shape("upsampler.0.weight")[0]
    inferred = int(round((up_out / in_channels) ** 0.5))
    if inferred * inferred * in_channels != up_out:
        raise ValueError(f"upsampler.0 has {up_out} outputs: not {in_channels}*s^2 for any scale")
    if scale is not None and scale != inferred:
        raise ValueError(f"weights are for x{inferred}, not x{scale}")
    cat_in = shape("conv_cat.weight")[1]
    tap_width = cat_in - 2 * feature - tail
    taps = [i for i in range(n, 0, -1) if blocks[i - 1].mid1 == tap_width]
    if not taps:
        raise ValueError(f"conv_cat reads {cat_in} channels: no block's c1_r width fits")
    return SPANSpec(scale=inferred, feature=feature, blocks=blocks, tail=tail, fuse=fuse,
                    tap=taps[0], in_channels=in_channels, out_channels=in_channels)


def normalize_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap 'params'/'params_ema'/'state_dict'/'model' and strip 'module.' prefixes."""
    return {strip_module_prefix(k): v for k, v in unwrap_wrappers(state).items()}


def claims_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    return "conv_1.eval_conv.weight" in state and "conv_cat.weight" in state


def span_group_name(root: str) -> str | None:
    """Readable group names from the first producing conv's module path."""
    path = root[:-len(".eval_conv")] if root.endswith(".eval_conv") else root
    if path == "conv_1":
        return "feature"
    if path == "conv_2":
        return "tail"
    if path == "conv_cat":
        return "fuse"
    head, _, rest = path.partition(".")
    if head.startswith("block_") and head[6:].isdigit() and rest in ("c1_r", "c2_r"):
        return f"block{int(head[6:])}.mid{rest[1]}"
    return None


PRESETS: dict[str, ModelPreset] = {
    "span_ch28": ModelPreset("span_ch28", lambda s: SPANSpec.uniform(scale=s, feature=28, blocks=6),
                             "SPAN, 28 channels, 6 blocks, deploy form (NTIRE 2024 winner)",
                             {4: "span_ch28_x4.pth"}),
    "span_tiny": ModelPreset("span_tiny", lambda s: SPANSpec(
        scale=s, feature=8, blocks=(SPABSpec(6, 6), SPABSpec(6, 6), SPABSpec(6, 6))),
        "tiny SPAN for tests (8 channels, 3 blocks)"),
}

# -- deploy forms and block dropping (workbench.measure.deploy / prune call them through the family) ----

class FusedSPAN(nn.Module):
    """SPAN's ``fused`` deploy form for CPU inference (exact to rounding and summation order).

    Folds: conv_1's weights absorb the x255 (a linear scale commutes with the zero-padded conv;
    the mean shift does not, its padding would change, so it stays one subtraction on 3
    channels). Each conv is one pre-packed oneDNN primitive on channels_last tensors with its SiLU
    fused (c1_r, c2_r), the 1x1 conv_cat stays on oneDNN, the attention
    ``(o3 + h) * (sigmoid(o3) - 0.5)`` is done in place, and pixel shuffle is one NHWC copy.
    """

    def __init__(self, model: "SPAN", example_hw: tuple[int, int] | None) -> None:
        import copy

        from workbench.measure.deploy import _PackedConv

        super().__init__()
        spec = model.spec
        self.scale = int(spec.scale)
        self.tap = int(spec.tap)
        self.mean = model.mean.detach().clone()
        hw = example_hw

        def packed(conv: nn.Conv2d) -> "_PackedConv":
            return _PackedConv(conv, hw, True)

        stem = copy.deepcopy(model.conv_1.eval_conv)
        with torch.no_grad():
            stem.weight.mul_(255.0)
        self.conv_1 = packed(stem)
        self.blocks_ = [(packed(b.c1_r.eval_conv), packed(b.c2_r.eval_conv), packed(b.c3_r.eval_conv))
                        for b in model.blocks()]
        self.conv_2 = packed(model.conv_2.eval_conv)
        self.conv_cat = packed(model.conv_cat)
        self.up = packed(model.upsampler[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from workbench.measure.deploy import _pixel_shuffle_nhwc

        feature = self.conv_1((x - self.mean).contiguous(memory_format=torch.channels_last))
        out = first = tapped = feature
        for i, (c1, c2, c3) in enumerate(self.blocks_, start=1):
            o1 = c1(out, "swish")
            o3 = c3(c2(o1, "swish"))
            att = torch.sigmoid(o3).sub_(0.5)
            out = o3.add_(out).mul_(att)
            if i == 1:
                first = out
            if i == self.tap:
                tapped = o1
        cat = torch.cat([feature, self.conv_2(out), first, tapped], dim=1)
        return _pixel_shuffle_nhwc(self.up(self.conv_cat(cat.contiguous(memory_format=torch.channels_last))),
                                   self.scale)


class MixedBF16SPAN(nn.Module):
    """SPAN's ``bf16`` deploy form: the block convs (but the first block's) and conv_2 in bfloat16;
    conv_1 (the raw image in), the first block, each block's attention and residual stream,
    conv_cat and the upsampler in fp32. ``fp32_blocks`` (1-based) and ``fp32_tail`` choose the
    blocks whose convs / whether conv_2 stay fp32.

    Measured on span_ch28_x4 (fp32 Set5 31.7390, Set14 28.4009 dB PSNR-Y; time of a 1x3x256x256
    forward, 1 thread, process CPU time, relative to every block in bf16): blocks wholly in bf16
    (attention too) -0.028 dB on Set5; every block's convs bf16 -0.0127 / -0.0048 dB, 1.00x;
    + conv_2 fp32 -0.0126 dB, 1.21x; + the last block fp32 -0.0100 dB, 1.11x; + the first
    block fp32 (this default) -0.0097 / -0.0039 dB, 1.09x; + last block and conv_2 fp32
    -0.0096 / -0.0036 dB, 1.16x. judge_precision's 0.01 dB accepts the default, narrowly."""

    def __init__(self, model: "SPAN", *, fp32_blocks: tuple[int, ...] = (1,),
                 fp32_tail: bool = False) -> None:
        super().__init__()
        self.tap = model.spec.tap
        self.register_buffer("mean", model.mean.detach().clone(), persistent=False)
        self.conv_1 = model.conv_1
        self.dtypes = [torch.float32 if i in fp32_blocks else torch.bfloat16
                       for i in range(1, model.spec.num_blocks + 1)]
        self.body = nn.ModuleList([b.to(dt) for b, dt in zip(model.blocks(), self.dtypes)])
        self.tail_dtype = torch.float32 if fp32_tail else torch.bfloat16
        self.conv_2 = model.conv_2.to(self.tail_dtype)
        self.conv_cat = model.conv_cat
        self.upsampler = model.upsampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.conv_1((x - self.mean) * 255.0)
        out = first = tapped = feature
        for i, (block, dt) in enumerate(zip(self.body, self.dtypes), start=1):
            o1 = F.silu(block.c1_r(out.to(dt)))
            o3 = block.c3_r(F.silu(block.c2_r(o1))).float()
            # the attention in fp32: (o3 + h) * (sigmoid(o3) - 0.5) cancels near zero
            out = (o3 + out) * (torch.sigmoid(o3) - 0.5)
            if i == 1:
                first = out
            if i == self.tap:
                tapped = o1
        tail = self.conv_2(out.to(self.tail_dtype))
        cat = torch.cat([feature, tail.float(), first, tapped.float()], dim=1)
        return self.upsampler(self.conv_cat(cat.contiguous(memory_format=torch.channels_last)))


def drop_blocks(model: "SPAN", keep: list[int]) -> "SPAN":
    """Keep blocks ``keep`` (1-based, increasing; checked by the caller). Every SPAB reads and
    returns the ``feature`` width, so any subset chains. The first kept block's output joins
    conv_cat as block 1's did; the tapped c1_r output is the tap block's when kept, else the last
    kept block's (its mid1 width must equal the old tap's: conv_cat reads that slice)."""
    from workbench.core.errors import WorkbenchError
    from workbench.models.family import renumber_blocks

    try:
        target = model.spec.with_blocks(keep)
    except ValueError as exc:
        raise WorkbenchError(f"cannot drop blocks: {exc}") from None
    return renumber_blocks(model, keep, target)


def int8_fp32(model: "SPAN") -> tuple[str, ...]:
    """The layers int8 keeps fp32 (workbench.measure.quantize), measured on span_ch28_x4, PTQ on 16
    T91 crops of 48x48 LR, Set5 PSNR-Y (fp32 31.739): stem and upsampler fp32 30.056; + conv_cat
    31.250 (its one per-tensor uint8 input spans four concatenated tensors of different ranges:
    alone int8 it costs 1.3 dB); + the most sensitive body convs (block 1's c1_r and c2_r,
    block 2's c1_r, the last block's c2_r: each alone int8 costs 0.07-0.21 dB, the others
    0.03-0.06) 31.610. (Every c1_r and c2_r fp32: 31.679, but then little of the body is int8.)"""
    last = len(model.spec.blocks)
    return ("conv_1", "upsampler.0", "conv_cat", "block_1.c1_r", "block_1.c2_r", "block_2.c1_r",
            f"block_{last}.c2_r")


FAMILY = register_family(Family(
    name="span", spec_type=SPANSpec, build=lambda spec: SPAN(spec),
    spec_from_state_dict=spec_from_state_dict, normalize_state_dict=normalize_state_dict,
    claims=claims_state_dict, presets=PRESETS, input_range=lambda spec: 1.0,
    mean=lambda spec: SPAN_MEAN, group_name=span_group_name,
    fused=lambda model, hw: FusedSPAN(model, hw), bf16=lambda model: MixedBF16SPAN(model),
    drop_blocks=drop_blocks, int8_fp32=int8_fp32, cpu_default_deploy="fused",
    about="SPAN (deploy form: Conv3XC folded into 3x3 convs)"))
