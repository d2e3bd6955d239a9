"""Training losses, registered by name, combined by weight.

API (stable; other stages call it)::

    register_loss(name)                      # decorator on a factory(**kwargs) -> nn.Module
    LOSSES: dict[str, factory]
    build_loss(specs) -> CombinedLoss        # specs: [{"type": "l1", "weight": 1.0}, ...] or one dict
    CombinedLoss.forward(sr, hr, lr) -> scalar tensor
    CombinedLoss.last_terms                  # {"l1": float, "contrastive": float} of the last call
    needs_teacher(specs) -> bool             # does any term need a teacher model (``distill``)?
    uses_hr(specs) -> bool                   # does any term compare against the HR patch?

Every loss module takes ``forward(sr, hr, lr)``: ``sr`` and ``hr`` are N x 3 x sH x sW and ``lr``
is N x 3 x H x W, all on the models' 0..255 scale. Pixel losses ignore ``lr``.

Scale conventions (documented because they change what a weight means):

- ``distill`` (knowledge distillation): L1 (``norm: l1``, default) or L2 (``norm: l2``) between the
  student's SR and a frozen teacher's SR of the same LR batch, on the 0..255 scale. The teacher is
  given to :func:`build_loss` by the stage (its parent by default, or the stage's ``teacher`` REF);
  it runs in ``inference_mode`` in eval mode, so it gets no gradients and never changes. It needs
  no HR patch, so it alone can train on images that only exist as LR. ``ensemble: N`` (2, 4 or
  8; default 1) distils from the teacher's self-ensemble: the mean of its SR over N flips and
  transposes of the LR batch, each transformed back. That target scores better than the
  teacher's own SR (x8: rlfn_s_x4 +0.096 / +0.101 dB on Set5 / Set14, span_ch28_x4 +0.234 /
  +0.105); the teacher costs N forwards per step, and the student still deploys as one forward.
  Measured so far it lifted no pruned student, neither one that had converged on the plain
  teacher nor one trained on it from the pruned start (bench/results/README.md, 2026-12-02).

- ``l1`` / ``l2`` are computed on the 0..255 scale the models work in. Adam is invariant to a
  constant factor on the loss, so this matches training on 0..1 images apart from Adam's eps.
- ``contrastive`` (RLFN paper, sec. 3.3): ``CL = sum_j L1(phi_j(SR), phi_j(HR)) /
  L1(phi_j(SR), phi_j(up(LR)))`` where ``phi`` is a frozen, randomly initialised
  Conv3x3 -> Tanh -> Conv3x3 and ``j`` runs over its layers (the Tanh output and the second conv's
  output). ``up`` is bicubic upsampling of LR by ``torch.nn.functional.interpolate(mode="bicubic",
  align_corners=False)`` clamped to 0..255 -- not MATLAB's imresize, which only matters for the
  negative sample's exact values. Images are divided by 255 before ``phi`` so that Tanh works in
  its linear range instead of saturating. ``phi`` is initialised from its own seeded generator, so
  the loss is identical in every run and process and does not touch the global RNG.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.errors import WorkbenchError

LossFactory = Callable[..., nn.Module]
LOSSES: dict[str, LossFactory] = {}


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Register ``factory(**kwargs) -> nn.Module`` under ``name`` (the ``type`` in a loss spec)."""

    def decorate(factory: LossFactory) -> LossFactory:
        if name in LOSSES and LOSSES[name] is not factory:
            raise ValueError(f"loss {name!r} is registered twice")
        LOSSES[name] = factory
        return factory

    return decorate


class L1Loss(nn.Module):
    """Mean absolute error between SR and HR (0..255 scale)."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor | None = None) -> torch.Tensor:
        return F.l1_loss(sr, hr)


class L2Loss(nn.Module):
    """Mean squared error between SR and HR (0..255 scale)."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor | None = None) -> torch.Tensor:
        return F.mse_loss(sr, hr)


@register_loss("l1")
def _l1() -> nn.Module:
    return L1Loss()


@register_loss("l2")
def _l2() -> nn.Module:
    return L2Loss()


@register_loss("mse")
def _mse() -> nn.Module:
    return L2Loss()


class ContrastiveLoss(nn.Module):
    """RLFN's contrastive loss with a frozen random feature extractor (see the module docstring).

    ``channels`` is the width of both convolutions of ``phi``; ``extractor_seed`` fixes its
    weights; ``eps`` keeps the ratio finite when SR equals the upsampled LR.
    """

    def __init__(self, *, channels: int = 64, extractor_seed: int = 0, eps: float = 1e-6) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the default init below must not consume global RNG
            self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        generator = torch.Generator().manual_seed(int(extractor_seed))
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                # Same distribution as PyTorch's default Conv2d init (kaiming-uniform, a=sqrt(5)),
                # drawn from our own generator so the extractor is reproducible.
                fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                bound = 1.0 / fan_in ** 0.5
                conv.weight.copy_(torch.empty_like(conv.weight).uniform_(-bound, bound, generator=generator))
                conv.bias.copy_(torch.empty_like(conv.bias).uniform_(-bound, bound, generator=generator))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eps = float(eps)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = image / 255.0
        first = torch.tanh(self.conv1(x))
        return [first, self.conv2(first)]

    def train(self, mode: bool = True) -> "ContrastiveLoss":
        return super().train(False)  # phi is frozen: no mode-dependent behaviour, but stay in eval

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor | None = None) -> torch.Tensor:
        if lr is None:
            raise ValueError("the contrastive loss needs the LR batch (negative sample)")
        factor = sr.shape[-1] // lr.shape[-1]
        up = F.interpolate(lr.float(), scale_factor=factor, mode="bicubic", align_corners=False)
        up = up.clamp(0.0, 255.0)
        with torch.no_grad():
            pos = self.features(hr.float())
            neg = self.features(up)
        total = sr.new_zeros((), dtype=torch.float32)
        for f_sr, f_pos, f_neg in zip(self.features(sr.float()), pos, neg):
            total = total + F.l1_loss(f_sr, f_pos) / (F.l1_loss(f_sr, f_neg) + self.eps)
        return total


@register_loss("contrastive")
def _contrastive(*, channels: int = 64, extractor_seed: int = 0, eps: float = 1e-6) -> nn.Module:
    return ContrastiveLoss(channels=channels, extractor_seed=extractor_seed, eps=eps)


class DistillLoss(nn.Module):
    """Pixel distance between the student's SR and a frozen teacher's SR (see the module docstring).

    The teacher is held outside the module tree (``self._teacher`` is a plain attribute), so that
    ``criterion.parameters()`` and ``criterion.state_dict()`` never include it.
    """

    def __init__(self, teacher: nn.Module, *, norm: str = "l1", ensemble: int = 1) -> None:
        super().__init__()
        if norm not in ("l1", "l2"):
            raise WorkbenchError(f"distill: norm must be l1 or l2, got {norm!r}")
        if ensemble not in ENSEMBLE_SIZES:
            raise WorkbenchError(f"distill: ensemble must be one of {ENSEMBLE_SIZES}, got {ensemble!r}")
        self.ensemble = int(ensemble)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.__dict__["_teacher"] = teacher
        self.norm = norm

    @property
    def teacher(self) -> nn.Module:
        return self.__dict__["_teacher"]

    def _apply(self, fn, recurse=True):  # .to(device) also moves the teacher
        self.__dict__["_teacher"] = self.teacher._apply(fn)
        return super()._apply(fn, recurse)

    def target(self, lr: torch.Tensor) -> torch.Tensor:
        """The teacher's SR of the 0..255 ``lr`` on 0..255 (no graph, a normal tensor usable in the
        student's loss), fed through the teacher family's input range like the student."""
        from workbench.models.family import run_model

        with torch.inference_mode():  # through the teacher's input range ([0, 1] for SPAN/DIPNet)
            x = lr.float()
            out = run_model(self.teacher, x)
            for k in range(1, self.ensemble):  # self-ensemble: the mean over flips / transposes
                out = out + _dihedral(run_model(self.teacher, _dihedral(x, k)), k, inverse=True)
            if self.ensemble > 1:
                out = out / self.ensemble
        return out.clone()

    def forward(self, sr: torch.Tensor, hr: torch.Tensor | None = None,
                lr: torch.Tensor | None = None) -> torch.Tensor:
        if lr is None:
            raise ValueError("the distillation loss needs the LR batch (the teacher's input)")
        target = self.target(lr)
        if target.shape != sr.shape:
            raise WorkbenchError(f"distill: the teacher's SR is {tuple(target.shape)} but the student's is "
                                 f"{tuple(sr.shape)}; the teacher must have the student's scale")
        return F.l1_loss(sr, target) if self.norm == "l1" else F.mse_loss(sr, target)


#: Teacher self-ensemble sizes of ``distill``: 1 (the teacher's SR), 2 (+ its horizontal flip),
#: 4 (+ both flips), 8 (+ the transposes: all eight flips and rotations).
ENSEMBLE_SIZES = (1, 2, 4, 8)


def _dihedral(x: torch.Tensor, k: int, *, inverse: bool = False) -> torch.Tensor:
    """Transform ``k`` (bit 0: flip W, bit 1: flip H, bit 2: swap H and W) of an NCHW batch, or
    its inverse (the same steps in reverse order)."""
    steps = [(k & 1, lambda t: t.flip(-1)), (k & 2, lambda t: t.flip(-2)),
             (k & 4, lambda t: t.transpose(-1, -2))]
    for on, step in (reversed(steps) if inverse else steps):
        if on:
            x = step(x)
    return x


#: Losses that need a teacher model; build_loss passes it to their factory as ``teacher``.
TEACHER_LOSSES = {"distill"}
#: Losses that do not compare against the HR patch (usable on LR-only training images).
NO_HR_LOSSES = {"distill"}


@register_loss("distill")
def _distill(*, teacher: nn.Module | None = None, norm: str = "l1", ensemble: int = 1) -> nn.Module | None:
    if norm not in ("l1", "l2"):
        raise TypeError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if isinstance(ensemble, bool) or ensemble not in ENSEMBLE_SIZES:
        raise TypeError(f"ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))}, got {ensemble!r}")
    if teacher is None:  # spec check only (check_loss_specs); build_loss always passes the teacher
        return None
    return DistillLoss(teacher, norm=norm, ensemble=ensemble)


def _spec_list(specs: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [specs] if isinstance(specs, Mapping) else list(specs)


def needs_teacher(specs: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> bool:
    """True when a loss term needs a teacher model (``distill``)."""
    return any(isinstance(s, Mapping) and s.get("type") in TEACHER_LOSSES for s in _spec_list(specs))


def uses_hr(specs: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> bool:
    """True when a loss term compares against the HR patch (every loss but ``distill``)."""
    return any(isinstance(s, Mapping) and s.get("type") not in NO_HR_LOSSES for s in _spec_list(specs))


class CombinedLoss(nn.Module):
    """Weighted sum of registered losses; ``forward(sr, hr, lr)`` returns one scalar.

    ``last_terms`` holds each term's unweighted value from the last call (for logs/TensorBoard).
    """

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise WorkbenchError("a loss needs at least one term, e.g. [{type: l1, weight: 1.0}]")
        self.names = [name for name, _, _ in terms]
        self.weights = [float(weight) for _, weight, _ in terms]
        self.terms = nn.ModuleList([module for _, _, module in terms])
        self.last_terms: dict[str, float] = {}

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor | None = None) -> torch.Tensor:
        total = None
        values: dict[str, torch.Tensor] = {}
        for name, weight, module in zip(self.names, self.weights, self.terms):
            value = module(sr, hr, lr)
            key = name if name not in values else f"{name}_{len(values)}"
            values[key] = value.detach()
            total = weight * value if total is None else total + weight * value
        self.last_terms = {k: float(v) for k, v in values.items()}
        return total

    def describe(self) -> str:
        return " + ".join(f"{w:g} x {n}" for n, w in zip(self.names, self.weights))


LOSS_SPEC_KEYS = ("type", "weight")


def check_loss_specs(specs: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[str]:
    """Problems with loss specs, as messages relative to the list (``[1].type: ...``); [] if fine."""
    import difflib

    if isinstance(specs, Mapping):
        specs = [specs]
    problems = []
    if not isinstance(specs, (list, tuple)) or not specs:
        return ["must be a non-empty list of {type: NAME, weight: W} mappings"]
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            problems.append(f"[{i}]: must be a mapping like {{type: l1, weight: 1.0}}, got {spec!r}")
            continue
        kind = spec.get("type")
        if kind not in LOSSES:
            close = difflib.get_close_matches(str(kind), list(LOSSES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"[{i}].type: unknown loss {kind!r}{hint}; known: {', '.join(sorted(LOSSES))}")
            continue
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            problems.append(f"[{i}].weight: must be a number >= 0, got {weight!r}")
        kwargs = {k: v for k, v in spec.items() if k not in LOSS_SPEC_KEYS}
        if "teacher" in kwargs:
            problems.append(f"[{i}] ({kind}): the teacher is a stage setting (teacher: REF), not a loss "
                            f"argument")
            continue
        try:
            LOSSES[kind](**kwargs)
        except TypeError as exc:
            problems.append(f"[{i}] ({kind}): {exc}")
    return problems


def build_loss(specs: Sequence[Mapping[str, Any]] | Mapping[str, Any], *,
               teacher: nn.Module | None = None) -> CombinedLoss:
    """Build the weighted sum of the losses in ``specs`` (``type``, ``weight`` and loss kwargs).

    ``teacher`` is the frozen model that ``distill`` terms compare against; it is required when
    such a term is present.
    """
    problems = check_loss_specs(specs)
    if problems:
        raise WorkbenchError("losses" + problems[0])
    specs = _spec_list(specs)
    if needs_teacher(specs) and teacher is None:
        raise WorkbenchError("losses: a distill term needs a teacher model (the stage's parent by default)")
    terms = []
    for spec in specs:
        kwargs = {k: v for k, v in spec.items() if k not in LOSS_SPEC_KEYS}
        if spec["type"] in TEACHER_LOSSES:
            kwargs["teacher"] = teacher
        terms.append((spec["type"], float(spec.get("weight", 1.0)), LOSSES[spec["type"]](**kwargs)))
    return CombinedLoss(terms)
