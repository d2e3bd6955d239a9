"""RLFN (Residual Local Feature Network) built from an explicit width specification.

Every channel width that pruning can change is a field of :class:`RLFNSpec`, so a pruned model is
rebuilt exactly from its spec alone. The module and parameter names match the original release
(``conv_1``, ``block_<i>.c1_r`` ... ``upsampler.0``), so its checkpoints load strictly.

Channel groups (channels that must be pruned together because an add or a multiply couples them)
map one-to-one onto spec fields; see :func:`group_widths`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.family import Family, register_family, strip_module_prefix, unwrap_wrappers

MIN_LR_SIZE = 15  # ESA: conv2 (3x3, stride 2, no pad) then max-pool k7 s3 needs at least 15x15
#: Largest channel width and block count a spec may declare: a hand-edited or damaged
#: architecture record (trunk 10^12) must be refused before anything is allocated.
MAX_WIDTH = 4096
MAX_BLOCKS = 64
#: Largest parameter count a spec may declare (400 MB of fp32 weights; the release has 0.5 M).
MAX_PARAMS = 100_000_000


def _check_width(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WIDTH:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        raise ValueError(f"{owner}.{name} must be an integer from 1 to {MAX_WIDTH}, got {shown}")


@dataclass(frozen=True)
class BlockSpec:
    """Widths of one residual local feature block.

    ``mid1``/``mid2`` are the outputs of ``c1_r``/``c2_r``; ``out`` is the output of the 1x1 ``c5``
    (and so the input width of the next block). ``esa`` is ESA's ``conv1`` output (its reduction
    width, 16 in the release), ``esa_inner`` the ``conv2`` output and ``esa_fuse`` the common output
    of ``conv_f`` and ``conv3`` (they are added). The block's input width, which ``c3_r`` must
    produce for the residual add, is given by the previous block (or the stem).
    """

    mid1: int
    mid2: int
    out: int
    esa: int = 16
    esa_inner: int = 16
    esa_fuse: int = 16

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            _check_width("BlockSpec", name, value)


@dataclass(frozen=True)
class RLFNSpec:
    """Everything that rebuilds an RLFN: scale, stem (trunk) width and one :class:`BlockSpec` each."""

    scale: int
    trunk: int
    blocks: tuple[BlockSpec, ...]
    in_channels: int = 3
    out_channels: int = 3
    #: False builds the convs outside ESA without bias (DIPNet's layout).
    bias: bool = True
    #: 255.0: the model takes and returns images on 0..255 (RLFN's release); 1.0: on [0, 1] (DIPNet).
    input_range: float = 255.0

    def __post_init__(self) -> None:
        if not isinstance(self.bias, bool):
            raise ValueError(f"RLFNSpec.bias must be true or false, got {self.bias!r}")
        if self.input_range not in (1.0, 255.0):
            raise ValueError(f"RLFNSpec.input_range must be 1 or 255, got {repr(self.input_range)[:40]}")
        object.__setattr__(self, "input_range", float(self.input_range))
        if isinstance(self.scale, bool) or self.scale not in (1, 2, 3, 4, 8):
            shown = repr(self.scale)[:40]
            raise ValueError(f"RLFNSpec.scale must be one of 1, 2, 3, 4, 8, got {shown}")
        _check_width("RLFNSpec", "trunk", self.trunk)
        for name in ("in_channels", "out_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4:
                raise ValueError(f"RLFNSpec.{name} must be an integer from 1 to 4, got "
                                 f"{repr(value)[:40]}")
        if not isinstance(self.blocks, (tuple, list)) or not 1 <= len(self.blocks) <= MAX_BLOCKS:
            raise ValueError(f"RLFNSpec needs a list of 1 to {MAX_BLOCKS} blocks")
        blocks = []
        for b in self.blocks:
            if isinstance(b, BlockSpec):
                blocks.append(b)
            elif isinstance(b, Mapping):
                blocks.append(BlockSpec(**b))
            else:
                raise ValueError(f"RLFNSpec: a block must be a mapping of widths, got "
                                 f"{type(b).__name__}")
        object.__setattr__(self, "blocks", tuple(blocks))
        if self.param_count() > MAX_PARAMS:
            raise ValueError(f"RLFNSpec declares {self.param_count():,} parameters, more than the "
                             f"{MAX_PARAMS:,} this workbench builds")

    def param_count(self) -> int:
        """Parameters of the model this spec builds, computed without building it."""
        def esa(cin: int, cout: int, k: int) -> int:  # ESA's convs always have a bias
            return cin * cout * k * k + cout

        def conv(cin: int, cout: int, k: int) -> int:  # the others only when self.bias (not DIPNet)
            return cin * cout * k * k + (cout if self.bias else 0)

        total = conv(self.in_channels, self.trunk, 3)
        for i, b in enumerate(self.blocks):
            cin = self.block_in(i)
            total += (conv(cin, b.mid1, 3) + conv(b.mid1, b.mid2, 3) + conv(b.mid2, cin, 3)
                      + conv(cin, b.out, 1) + esa(b.out, b.esa, 1) + esa(b.esa, b.esa_fuse, 1)
                      + esa(b.esa, b.esa_inner, 3) + esa(b.esa_inner, b.esa_fuse, 3)
                      + esa(b.esa_fuse, b.out, 1))
        total += conv(self.blocks[-1].out, self.trunk, 3)
        total += conv(self.trunk, self.out_channels * self.scale ** 2, 3)
        return total

    # -- construction helpers -------------------------------------------------------------
    @classmethod
    def uniform(cls, *, scale: int, feature: int, mid: int | None = None, esa: int = 16,
                blocks: int = 6, bias: bool = True, input_range: float = 255.0) -> "RLFNSpec":
        """The release's shape: one trunk width everywhere, one middle width, one ESA width."""
        mid = feature if mid is None else mid
        if not isinstance(blocks, int) or not 1 <= blocks <= MAX_BLOCKS:
            raise ValueError(f"blocks must be an integer from 1 to {MAX_BLOCKS}, got {repr(blocks)[:40]}")
        return cls(scale=scale, trunk=feature,
                   blocks=tuple(BlockSpec(mid, mid, feature, esa, esa, esa) for _ in range(blocks)),
                   bias=bias, input_range=input_range)

    def to_dict(self) -> dict[str, Any]:
        out = {"arch": "rlfn", "scale": self.scale, "trunk": self.trunk,
               "in_channels": self.in_channels, "out_channels": self.out_channels,
               "blocks": [asdict(b) for b in self.blocks]}
        # written only when not RLFN's defaults, so RLFN records stay as older workbenches wrote them
        if not self.bias:
            out["bias"] = False
        if self.input_range != 255.0:
            out["input_range"] = self.input_range
        return out

    def group_widths(self) -> dict[str, int]:
        return group_widths(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RLFNSpec":
        if not isinstance(data, Mapping):
            raise ValueError(f"the architecture must be a mapping, not {type(data).__name__}")
        data = dict(data)
        arch = data.pop("arch", "rlfn")
        if arch != "rlfn":
            raise ValueError(f"unknown architecture {arch!r} (this workbench builds 'rlfn')")
        known = {"scale", "trunk", "blocks", "in_channels", "out_channels", "bias", "input_range"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        if "blocks" not in data:
            raise ValueError("the architecture has no 'blocks'")
        raw = data.pop("blocks")
        if not isinstance(raw, list) or not all(isinstance(b, Mapping) for b in raw):
            raise ValueError("'blocks' must be a list of mappings of widths")
        if len(raw) > MAX_BLOCKS:
            raise ValueError(f"{len(raw)} blocks: at most {MAX_BLOCKS}")
        blocks = tuple(BlockSpec(**b) for b in raw)
        return cls(blocks=blocks, **data)

    def block_in(self, index: int) -> int:
        """Input width of block ``index`` (0-based)."""
        return self.trunk if index == 0 else self.blocks[index - 1].out

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def with_blocks(self, keep: list[int]) -> "RLFNSpec":
        """The spec with only blocks ``keep`` (1-based, increasing), renumbered from 1."""
        return replace(self, blocks=tuple(self.blocks[k - 1] for k in keep))

    def with_widths(self, widths: Mapping[str, int]) -> "RLFNSpec":
        """A copy with some groups set to new widths (names as in :func:`group_widths`)."""
        current = group_widths(self)
        unknown = set(widths) - set(current)
        if unknown:
            raise KeyError(f"unknown channel groups {sorted(unknown)}; known: {sorted(current)}")
        trunk = self.trunk
        blocks = [asdict(b) for b in self.blocks]
        for name, width in widths.items():
            kind, idx, fld = _parse_group(name)
            if kind == "trunk" and idx == 0:
                trunk = int(width)
            elif kind == "trunk":
                blocks[idx - 1]["out"] = int(width)
            else:
                blocks[idx - 1][fld] = int(width)
        return replace(self, trunk=trunk, blocks=tuple(BlockSpec(**b) for b in blocks))

    def describe(self) -> str:
        """One short line of the widths: uniform ones once, per-block ones as a list.

        ``mid A/B`` is c1_r/c2_r; ``ESA R/I/F`` is reduce (conv1), inner (conv2) and fuse
        (conv_f/conv3), shown as one number when equal.
        """
        def same(values: list) -> str:
            return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))

        def joined(*lists: list) -> str:
            if all(lst == lists[0] for lst in lists):
                return same(lists[0])
            return "/".join(same(lst) for lst in lists)

        outs = [b.out for b in self.blocks]
        if set(outs) == {self.trunk}:
            trunk = f"trunk {self.trunk}"
        else:
            trunk = f"trunk {self.trunk}, block outputs {same(outs)}"
        mid = joined([b.mid1 for b in self.blocks], [b.mid2 for b in self.blocks])
        esa = joined([b.esa for b in self.blocks], [b.esa_inner for b in self.blocks],
                     [b.esa_fuse for b in self.blocks])
        return f"{self._label()} x{self.scale}: {trunk}, mid {mid}, ESA {esa}, {self.num_blocks} blocks"

    def _label(self) -> str:
        extra = ([] if self.bias else ["no bias"]) + ([] if self.input_range == 255.0 else ["[0,1]"])
        return "RLFN" + (f" ({', '.join(extra)})" if extra else "")


_BLOCK_FIELDS = {"mid1": "mid1", "mid2": "mid2", "esa.reduce": "esa", "esa.inner": "esa_inner",
                 "esa.fuse": "esa_fuse"}


def _parse_group(name: str) -> tuple[str, int, str]:
    if name.startswith("trunk."):
        return "trunk", int(name.split(".", 1)[1]), "out"
    head, _, rest = name.partition(".")
    if not head.startswith("block") or rest not in _BLOCK_FIELDS:
        raise KeyError(f"not a channel group name: {name!r}")
    return "block", int(head[len("block"):]), _BLOCK_FIELDS[rest]


def group_widths(spec: RLFNSpec) -> dict[str, int]:
    """Readable name -> width of every coupled channel group, in network order.

    ``trunk.0`` is the stem group (conv_1 output, block 1's input, c3 output and c5 input, conv_2
    output, upsampler input); ``trunk.<i>`` is block i's c5 output, which feeds its ESA and block i+1
    (or conv_2). Inside block i: ``block<i>.mid1``, ``block<i>.mid2``, ``block<i>.esa.reduce`` (conv1
    output), ``block<i>.esa.inner`` (conv2 output) and ``block<i>.esa.fuse`` (conv_f/conv3 output).
    The upsampler's output never appears: PixelShuffle needs all 3*s^2 channels.
    Another family's spec answers with its own ``group_widths()``.
    """
    if not isinstance(spec, RLFNSpec):
        return spec.group_widths()
    out = {"trunk.0": spec.trunk}
    for i, b in enumerate(spec.blocks, start=1):
        out[f"block{i}.mid1"] = b.mid1
        out[f"block{i}.mid2"] = b.mid2
        out[f"block{i}.esa.reduce"] = b.esa
        out[f"block{i}.esa.inner"] = b.esa_inner
        out[f"block{i}.esa.fuse"] = b.esa_fuse
        out[f"trunk.{i}"] = b.out
    return out


def conv_layer(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               padding: int | None = None, bias: bool = True) -> nn.Conv2d:
    """Conv2d with 'same' padding by default, as the release builds them."""
    if padding is None:
        padding = (kernel_size - 1) // 2
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     bias=bias)


class ESA(nn.Module):
    """Enhanced Spatial Attention (RFANet), as used in each RLFN block."""

    def __init__(self, channels: int, reduce: int, inner: int, fuse: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, reduce, 1)
        self.conv_f = nn.Conv2d(reduce, fuse, 1)
        self.conv2 = nn.Conv2d(reduce, inner, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(inner, fuse, 3, padding=1)
        self.conv4 = nn.Conv2d(fuse, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        down = self.conv2(reduced)
        pooled = F.max_pool2d(down, kernel_size=7, stride=3)
        up = self.conv3(pooled)
        up = F.interpolate(up, size=(x.size(2), x.size(3)), mode="bilinear", align_corners=False)
        mask = self.sigmoid(self.conv4(up + self.conv_f(reduced)))
        return x * mask


class RLFB(nn.Module):
    """Residual local feature block: three 3x3 conv + LeakyReLU(0.05), residual add, 1x1, ESA."""

    def __init__(self, in_channels: int, spec: BlockSpec, bias: bool = True) -> None:
        super().__init__()
        self.c1_r = conv_layer(in_channels, spec.mid1, 3, bias=bias)
        self.c2_r = conv_layer(spec.mid1, spec.mid2, 3, bias=bias)
        self.c3_r = conv_layer(spec.mid2, in_channels, 3, bias=bias)
        self.c5 = conv_layer(in_channels, spec.out, 1, bias=bias)
        self.esa = ESA(spec.out, spec.esa, spec.esa_inner, spec.esa_fuse)
        self.act = nn.LeakyReLU(negative_slope=0.05, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.c1_r(x))
        out = self.act(self.c2_r(out))
        out = self.act(self.c3_r(out))
        out = out + x
        return self.esa(self.c5(out))


class RLFN(nn.Module):
    """RLFN: conv 3x3, blocks, conv 3x3 + long skip, conv 3x3 to out*s^2, PixelShuffle.

    Takes and returns images on the 0..255 scale (the release was trained that way), or on [0, 1]
    when ``spec.input_range`` is 1 (DIPNet); ``spec.bias`` False drops the biases outside ESA.
    """

    def __init__(self, spec: RLFNSpec) -> None:
        super().__init__()
        self.spec = spec
        bias = spec.bias
        self.conv_1 = conv_layer(spec.in_channels, spec.trunk, 3, bias=bias)
        for i, block in enumerate(spec.blocks):
            self.add_module(f"block_{i + 1}", RLFB(spec.block_in(i), block, bias=bias))
        self.conv_2 = conv_layer(spec.blocks[-1].out, spec.trunk, 3, bias=bias)
        self.upsampler = nn.Sequential(
            conv_layer(spec.trunk, spec.out_channels * spec.scale ** 2, 3, bias=bias),
            nn.PixelShuffle(spec.scale),
        )

    @property
    def scale(self) -> int:
        return self.spec.scale

    def blocks(self) -> list[RLFB]:
        return [getattr(self, f"block_{i + 1}") for i in range(self.spec.num_blocks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.conv_1(x)
        out = feature
        for block in self.blocks():
            out = block(out)
        out = self.conv_2(out) + feature
        return self.upsampler(out)


def spec_from_state_dict(state: Mapping[str, torch.Tensor], *, scale: int | None = None) -> RLFNSpec:
    """Infer every width (and the scale) of an RLFN from its weights' shapes.

    Weights without ``conv_1.bias`` are DIPNet's layout (no bias outside ESA), which was trained on
    [0, 1] images: such a spec gets ``bias=False`` and ``input_range=1``. Artifacts record both, so
    this guess only concerns bare ``.pth`` files.
    Raises ValueError naming what is missing when the keys are not an RLFN's.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"missing key {key!r}: not an RLFN state dict")
        dims = tuple(getattr(state[key], "shape", ()))
        if len(dims) != 4:
            raise ValueError(f"{key!r} has shape {list(dims)}: a conv weight has 4 dimensions")
        return dims

    trunk = shape("conv_1.weight")[0]
    in_channels = shape("conv_1.weight")[1]
    n = 0
    while f"block_{n + 1}.c1_r.weight" in state:
        n += 1
    if n == 0:
        raise ValueError("no 'block_1.*' keys: not an RLFN state dict")
    blocks = []
    for i in range(1, n + 1):
        p = f"block_{i}."
        blocks.append(BlockSpec(
            mid1=shape(p + "c1_r.weight")[0], mid2=shape(p + "c2_r.weight")[0],
            out=shape(p + "c5.weight")[0], esa=shape(p + "esa.conv1.weight")[0],
            esa_inner=shape(p + "esa.conv2.weight")[0], esa_fuse=shape(p + "esa.conv3.weight")[0]))
    up_out = shape("upsampler.0.weight")[0]
    out_channels = in_channels
    inferred = int(round((up_out / out_channels) ** 0.5))
    if inferred * inferred * out_channels != up_out:
        raise ValueError(f"upsampler.0 has {up_out} outputs: not {out_channels}*s^2 for any scale")
    if scale is not None and scale != inferred:
        raise ValueError(f"weights are for x{inferred}, not x{scale}")
    bias = "conv_1.bias" in state
    return RLFNSpec(scale=inferred, trunk=trunk, blocks=tuple(blocks), in_channels=in_channels,
                    out_channels=out_channels, bias=bias, input_range=255.0 if bias else 1.0)


# The NTIRE 2022 challenge copy (team 04) names the same tensors differently.
_CHALLENGE_PREFIXES = (("fea_conv.", "conv_1."), ("LR_conv.", "conv_2."))


def normalize_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map known alternative key layouts onto this module's names.

    Handles the challenge copy (fea_conv, B1..Bn, LR_conv), wrappers that nest the weights under
    'params'/'params_ema'/'state_dict'/'model', and DataParallel/DDP 'module.' prefixes.
    """
    state = unwrap_wrappers(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = strip_module_prefix(key)
        for old, new in _CHALLENGE_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
        if key.startswith("B") and key[1:2].isdigit():
            num, _, rest = key[1:].partition(".")
            key = f"block_{int(num)}.{rest}"
        out[key] = value
    return out


@dataclass(frozen=True)
class Preset:
    name: str
    feature: int
    mid: int
    esa: int
    blocks: int
    about: str = ""
    checkpoint: dict[int, str] = field(default_factory=dict)
    bias: bool = True
    input_range: float = 255.0
    scales: tuple[int, ...] = (2, 3, 4)

    def spec(self, scale: int) -> RLFNSpec:
        return RLFNSpec.uniform(scale=scale, feature=self.feature, mid=self.mid, esa=self.esa,
                                blocks=self.blocks, bias=self.bias, input_range=self.input_range)


PRESETS: dict[str, Preset] = {
    "rlfn": Preset("rlfn", 52, 52, 16, 6, "RLFN of the paper (52 channels, 6 blocks)",
                   {2: "rlfn_x2.pth", 4: "rlfn_x4.pth"}),
    "rlfn_s": Preset("rlfn_s", 48, 48, 16, 6, "RLFN-S of the paper (48 channels, 6 blocks)",
                     {2: "rlfn_s_x2.pth", 4: "rlfn_s_x4.pth"}),
    "rlfn_ntire": Preset("rlfn_ntire", 46, 48, 16, 4,
                         "NTIRE 2022 runtime-track winner (trunk 46, mid 48, 4 blocks)",
                         {4: "rlfn_ntire_x4.pth"}),
    # DIPNet (NTIRE 2023 fastest runtime): RLFN-shaped, bias-free convs outside ESA, [0, 1] input.
    "dipnet": Preset("dipnet", 44, 38, 16, 4,
                     "DIPNet, NTIRE 2023 fastest runtime (RLFN-shaped: trunk 44, mid 38, 4 blocks, "
                     "no bias outside ESA, inputs in [0,1])", {4: "dipnet_x4.pth"},
                     bias=False, input_range=1.0),
    # Tiny variants for tests and smoke runs: seconds on a CPU.
    "rlfn_tiny": Preset("rlfn_tiny", 8, 8, 4, 2, "tiny test model (8 channels, 2 blocks)"),
    "dipnet_tiny": Preset("dipnet_tiny", 8, 6, 4, 2, "tiny DIPNet-shaped test model",
                          bias=False, input_range=1.0),
}


# -- the family declaration -----------------------------------------------------------------

_GROUP_ROOTS = {"c1_r": "mid1", "c2_r": "mid2", "esa.conv1": "esa.reduce", "esa.conv2": "esa.inner",
                "esa.conv_f": "esa.fuse"}


def rlfn_group_name(root: str) -> str | None:
    """Readable group name from the module path of the group's first producing conv: conv_1 ->
    trunk.0, block_<i>.c5 -> trunk.<i>, block_<i>.c1_r -> block<i>.mid1, ... (see group_widths)."""
    if root == "conv_1":
        return "trunk.0"
    head, _, rest = root.partition(".")
    if head.startswith("block_") and head[6:].isdigit():
        i = int(head[6:])
        if rest == "c5":
            return f"trunk.{i}"
        if rest in _GROUP_ROOTS:
            return f"block{i}.{_GROUP_ROOTS[rest]}"
    return None


def claims_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    return "conv_1.weight" in state and "block_1.c1_r.weight" in state


# -- deploy forms (workbench.measure.deploy calls them through the family) ------------------------------

class MixedBF16RLFN(nn.Module):
    """RLFN with its blocks in bfloat16 and the stem, long skip and upsampler in fp32."""

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.conv_1 = model.conv_1
        self.body = nn.ModuleList(model.blocks()).to(torch.bfloat16)
        self.conv_2 = model.conv_2
        self.upsampler = model.upsampler
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.conv_1(x)
        out = feature.to(torch.bfloat16)
        for block in self.body:
            out = block(out)
        out = self.conv_2(out.float().contiguous(memory_format=self.fmt)) + feature
        return self.upsampler(out)


#: The fused form computes every width that is at most 1/16 short of a multiple of 16 at that
#: multiple (zero weights in, zero channels out): oneDNN's AVX-512 kernels work in 16-channel
#: blocks, and on the Xeon of bench/results a 3x3 conv with 46 outputs ran about 10% slower than
#: one with 48 (1x1 16->46 + sigmoid 20% slower than 16->48), the 4% more multiplies included.
FUSED_CHANNEL_BLOCK = 16


def fused_width(width: int, block: int = FUSED_CHANNEL_BLOCK) -> int:
    """The width the ``fused`` form computes ``width`` channels at (46 -> 48, 44 and 8 stay)."""
    up = -(-width // block) * block
    return up if (up - width) * block <= width else width


def _conv_like(weight: torch.Tensor, bias: torch.Tensor | None, conv: nn.Conv2d) -> nn.Conv2d:
    """An nn.Conv2d with ``conv``'s geometry holding ``weight`` / ``bias`` (any channel counts)."""
    out = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, bias=bias is not None)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out.to(device=weight.device, memory_format=torch.channels_last)


def _zero_padded(conv: nn.Conv2d, cin: int, cout: int, *,
                 rows: list[int] | None = None) -> nn.Conv2d:
    """``conv`` widened to ``cin`` inputs / ``cout`` outputs with zero weights and zero bias (the
    extra output channels are exactly 0, the extra inputs are ignored); ``rows`` reorders the
    output channels first."""
    w = conv.weight.detach().float()
    b = None if conv.bias is None else conv.bias.detach().float()
    if rows is not None:
        w, b = w[rows], (None if b is None else b[rows])
    weight = w.new_zeros(cout, cin, *w.shape[2:])
    weight[:w.shape[0], :w.shape[1]] = w
    bias = None
    if b is not None:
        bias = b.new_zeros(cout)
        bias[:b.shape[0]] = b
    return _conv_like(weight, bias, conv)


def _folded_1x1(outer: nn.Conv2d, inner: nn.Conv2d) -> nn.Conv2d:
    """The 1x1 conv ``outer(inner(x))`` of two 1x1 convs (products taken in float64)."""
    wo = outer.weight.detach().double()[:, :, 0, 0]
    wi = inner.weight.detach().double()[:, :, 0, 0]
    bias = wo @ inner.bias.detach().double() if inner.bias is not None else wo.new_zeros(wo.shape[0])
    if outer.bias is not None:
        bias = bias + outer.bias.detach().double()
    return _conv_like((wo @ wi).float()[:, :, None, None], bias.float(), inner)


def _conv_add_(conv, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``other += conv(x)`` in place as one oneDNN conv with a sum post-op (returns ``other``)."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        other, x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
        "add", None, None, [], None)


def _conv_mul(conv, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``conv(x) * other`` as one oneDNN conv with a binary-multiply post-op."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
        "mul", None, None, [], None)


def _esa_pooled_hw(hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """The size ESA's conv3 runs at for an input of ``hw`` (conv2 3x3 s2 unpadded, pool 7 s3)."""
    if hw is None or min(hw) < MIN_LR_SIZE:
        return None
    return tuple(((s - 3) // 2 + 1 - 7) // 3 + 1 for s in hw)


def _head(model: nn.Module) -> tuple[int, int, float]:
    return int(model.scale), int(model.spec.out_channels), float(model.blocks()[0].act.negative_slope)


def _deploy_convs(model: nn.Module) -> dict[str, Any]:
    """The convs of the deploy forms: widths padded (:func:`fused_width`), ESA's conv1 folded
    into c5 (``reduce``), the upsampler's outputs ordered (i, j, channel) for the pixel shuffle."""
    spec = model.spec
    P = fused_width
    trunk = P(spec.trunk)
    blocks = []
    for i, (blk, b) in enumerate(zip(model.blocks(), spec.blocks)):
        esa = blk.esa
        cin, m1, m2, out = P(spec.block_in(i)), P(b.mid1), P(b.mid2), P(b.out)
        red, inner, fuse = P(b.esa), P(b.esa_inner), P(b.esa_fuse)
        blocks.append({
            "c1": _zero_padded(blk.c1_r, cin, m1), "c2": _zero_padded(blk.c2_r, m1, m2),
            "c3": _zero_padded(blk.c3_r, m2, cin), "c5": _zero_padded(blk.c5, cin, out),
            "reduce": _zero_padded(_folded_1x1(esa.conv1, blk.c5), cin, red),
            "conv_f": _zero_padded(esa.conv_f, red, fuse),
            "conv2": _zero_padded(esa.conv2, red, inner),
            "conv3": _zero_padded(esa.conv3, inner, fuse),
            "conv4": _zero_padded(esa.conv4, fuse, out),
        })
    up = model.upsampler[0]
    s, n = int(model.scale), int(spec.out_channels)
    # PixelShuffle reads channel oc*s*s + i*s + j into pixel (i, j) of image channel oc;
    # ordered (i, j, oc) instead, each output row of the shuffle is a run of s*n floats
    rows = [oc * s * s + r * s + c for r in range(s) for c in range(s) for oc in range(n)]
    return {"conv_1": _zero_padded(model.conv_1, spec.in_channels, trunk), "blocks": blocks,
            "conv_2": _zero_padded(model.conv_2, P(spec.blocks[-1].out), trunk),
            "up": _zero_padded(up, trunk, up.out_channels, rows=rows)}


def _shuffle_reordered(y: torch.Tensor, s: int, c: int) -> torch.Tensor:
    """PixelShuffle of an upsampler output in (i, j, channel) order into a channels_last image."""
    n, _, h, w = y.shape
    rows = y.permute(0, 2, 3, 1).reshape(n, h, w, s, s * c).permute(0, 1, 3, 2, 4)
    return rows.contiguous().view(n, h * s, w * s, c).permute(0, 3, 1, 2)


class FusedRLFN(nn.Module):
    """RLFN forward for CPU inference: one oneDNN primitive per conv on channels_last tensors.

    Where the fp32 time went (torch.profiler, rlfn_ntire_x4 at 1x3x256x256, one thread): 80% in
    the 3x3 convs; the rest in the 1x1 convs (memory-bound), page faults of freshly allocated
    activations (see :func:`workbench.measure.deploy.keep_freed_memory`), the pixel-shuffle copy
    (6-D gather, 2.5%), the residual / skip / ESA adds and the mask multiply. This form removes
    what oneDNN's post-ops and linear algebra allow, exact to rounding and summation order:

    * LeakyReLU fused into c1_r/c2_r/c3_r, sigmoid into ESA's conv4 (eltwise post-ops);
    * ESA's conv1 folded into c5 (``conv1(c5(z))`` is one 1x1 conv of ``z``), so c5's output is
      never stored: c5 runs last, with the mask multiply fused as a binary post-op;
    * ``conv_f(reduced)`` summed into the interpolated map in place (sum post-op), and conv_2's
      output summed into the stem's in place (the long skip);
    * widths a little short of a multiple of 16 computed at it (:func:`fused_width`; 46 -> 48);
    * the upsampler's output channels reordered so that pixel shuffle is one copy of 12-float
      runs into a channels_last image.

    The residual add stays an in-place add: oneDNN's sum post-op through torch runs before the
    activation, not after it.
    """

    def __init__(self, model: nn.Module, example_hw: tuple[int, int] | None, prepack: bool) -> None:
        from workbench.measure.deploy import _PackedConv

        super().__init__()
        self.scale, self.out_channels, self.slope = _head(model)
        hw = example_hw
        pooled_hw = _esa_pooled_hw(hw)

        def packed(conv: nn.Conv2d, at: tuple[int, int] | None = hw) -> "_PackedConv":
            return _PackedConv(conv, at, prepack and at is not None)

        convs = _deploy_convs(model)
        self.conv_1 = packed(convs["conv_1"])
        self.blocks_ = [{k: packed(c, pooled_hw if k == "conv3" else hw) for k, c in b.items()}
                        for b in convs["blocks"]]
        self.conv_2 = packed(convs["conv_2"])
        self.up = packed(convs["up"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = ("leaky_relu", [self.slope])
        feature = self.conv_1(x)
        out = feature
        for b in self.blocks_:
            z = b["c3"](b["c2"](b["c1"](out, *act), *act), *act).add_(out)
            reduced = b["reduce"](z)
            pooled = F.max_pool2d(b["conv2"](reduced), kernel_size=7, stride=3)
            up = F.interpolate(b["conv3"](pooled), size=z.shape[2:], mode="bilinear",
                               align_corners=False)
            mask = b["conv4"](_conv_add_(b["conv_f"], reduced, up), "sigmoid")
            out = _conv_mul(b["c5"], z, mask)
        feature = _conv_add_(self.conv_2, out, feature)
        return self._shuffle(self.up(feature))

    def _shuffle(self, y: torch.Tensor) -> torch.Tensor:
        return _shuffle_reordered(y, self.scale, self.out_channels)


class CompiledRLFN(nn.Module):
    """The module the ``compile`` mode hands to inductor: RLFN in plain PyTorch with the convs of
    :class:`FusedRLFN` (widths padded, ESA's conv1 folded into c5, the upsampler reordered for a
    one-copy pixel shuffle). Inductor fuses the activations and the adds itself; on the model as
    written it kept the 46-wide convs, stored c5's output for conv1 and ran the 6-D shuffle
    gather (10% slower at 1x3x256x256, one thread)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.scale, self.out_channels, self.slope = _head(model)
        convs = _deploy_convs(model)
        self.conv_1, self.conv_2, self.up = convs["conv_1"], convs["conv_2"], convs["up"]
        self.body = nn.ModuleList(nn.ModuleDict(b) for b in convs["blocks"])
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.slope
        feature = self.conv_1(x)
        out = feature
        for b in self.body:
            h = F.leaky_relu(b["c1"](out), a)
            h = F.leaky_relu(b["c2"](h), a)
            z = F.leaky_relu(b["c3"](h), a) + out
            reduced = b["reduce"](z)
            pooled = F.max_pool2d(b["conv2"](reduced), kernel_size=7, stride=3)
            up = F.interpolate(b["conv3"](pooled), size=z.shape[2:], mode="bilinear",
                               align_corners=False)
            out = b["c5"](z) * torch.sigmoid(b["conv4"](up + b["conv_f"](reduced)))
        return _shuffle_reordered(self.up(self.conv_2(out) + feature), self.scale,
                                  self.out_channels)


def fused_form(model: RLFN, example_hw: tuple[int, int] | None) -> nn.Module:
    """The ``fused`` deploy form: :class:`FusedRLFN` on a channels_last copy's weights."""
    return FusedRLFN(model, example_hw, prepack=True)


def compile_form(model: RLFN) -> nn.Module:
    """The module the ``compile`` deploy mode compiles: :class:`CompiledRLFN`."""
    return CompiledRLFN(model).eval()


def bf16_form(model: RLFN) -> nn.Module:
    """The ``bf16`` deploy form: blocks in bfloat16, stem, long skip and upsampler in fp32."""
    return MixedBF16RLFN(model, channels_last=True)


def drop_blocks(model: RLFN, keep: list[int]) -> RLFN:
    """Keep blocks ``keep`` (1-based, increasing, checked by the caller); the last kept block
    feeds conv_2, whose weights read its output channels in place of the old last block's."""
    from workbench.core.errors import WorkbenchError
    from workbench.models.family import renumber_blocks

    spec = model.spec
    kept = [spec.blocks[k - 1] for k in keep]
    if kept[-1].out != spec.blocks[-1].out:
        raise WorkbenchError(f"cannot drop blocks: block {keep[-1]} outputs {kept[-1].out} channels "
                             f"but conv_2 reads {spec.blocks[-1].out}; make them equal first")
    inputs = [spec.trunk] + [b.out for b in spec.blocks[:-1]]   # what each block reads
    feeds = spec.trunk
    for k in keep:
        if inputs[k - 1] != feeds:
            raise WorkbenchError(f"cannot drop blocks: block {k} reads {inputs[k - 1]} channels but "
                                 f"would be fed {feeds}; make the widths equal first")
        feeds = spec.blocks[k - 1].out
    return renumber_blocks(model, keep, spec.with_blocks(keep))


#: int8 (workbench.measure.quantize): kept out of int8 by default -- the stem, the last trunk conv
#: (into the long skip), the upsampler conv, each block's 1x1 c5 (it feeds ESA's mask), every ESA
#: conv and the first block's three 3x3 convs. rlfn_s_x4 PTQ on 16 crops, Set5 (fp32 32.240): all
#: int8 31.923; stem/conv_2/upsampler/c5 32.149; + ESA 32.174 (conv_f alone 32.163, conv1 32.158,
#: conv2-4 at most 32.153); + block_1's 3x3 convs instead 32.180 (c1_r alone 32.173, blocks 2-6
#: at most 32.158); both 32.198. ESA's convs are 16 wide, so in int8_bf16 (the rest in bf16) this
#: set costs little speed: QAT artifacts of both sets in one side-by-side run, 2.29x and 2.20x
#: fp32 compile (within this machine's noise).
INT8_FP32 = ("conv_1", "conv_2", "upsampler.0", "block_*.c5", "block_*.esa.*", "block_1.c*_r")
#: ESA's strided conv and 7x7 max-pool: torch.export proves them non-empty only from 24 LR pixels.
INT8_MIN_SIDE = 24


FAMILY = register_family(Family(
    name="rlfn", spec_type=RLFNSpec, build=lambda spec: RLFN(spec),
    spec_from_state_dict=spec_from_state_dict, normalize_state_dict=normalize_state_dict,
    claims=claims_state_dict, presets=PRESETS, input_range=lambda spec: spec.input_range,
    group_name=rlfn_group_name, min_lr_size=MIN_LR_SIZE, fused=fused_form, bf16=bf16_form,
    compiled=compile_form,
    drop_blocks=drop_blocks, cpu_default_deploy="fused",
    int8_fp32=lambda model: INT8_FP32, int8_min_side=INT8_MIN_SIDE,
    about="RLFN and RLFN-shaped networks (RLFN, RLFN-S, the NTIRE 2022 model, DIPNet)"))
