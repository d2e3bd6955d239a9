"""The model-family interface: everything the workbench needs to know about one SR architecture.

A *family* is one module under ``workbench/models/`` that calls :func:`register_family` with a
:class:`Family`: its spec dataclass (every prunable width and the block count as data), how to build
a model from a spec, its presets (with released weights where they exist), how to normalise foreign
state-dict layouts, how to infer a spec from weights, the input range the model expects and its
deploy form. Commands, artifacts, evaluation and pruning only talk to this interface, so a new
architecture never needs edits elsewhere.

A spec class must provide ``to_dict()`` / ``from_dict(data)`` (plain JSON, so an artifact rebuilds
the model from its own metadata), ``scale``, ``describe()``, ``group_widths()`` (readable channel
group name -> width, in network order) and ``with_widths(mapping)`` (a copy with some groups set to
new widths), which is what pruning and the search use.

Input range: the workbench moves images around as float tensors on the 0..255 scale. A family whose
models were trained on [0, 1] declares ``input_range`` 1.0; :func:`model_input` /
:func:`model_output` convert at the one place where a model is called (evaluation, training,
sensitivity), so the rest of the code stays on one scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from workbench.core.errors import WorkbenchError

__all__ = ["Family", "ModelPreset", "FAMILIES", "register_family", "get_family", "family_of",
           "family_of_spec", "spec_from_any_dict", "renumber_blocks", "input_range", "model_input", "model_output", "run_model", "On255", "on_255", "unwrap_wrappers",
           "strip_module_prefix"]


@dataclass(frozen=True)
class ModelPreset:
    """A named configuration of a family: ``spec(scale)`` builds its spec; ``checkpoint`` maps a
    scale to the file name (under checkpoints/) of its released weights."""

    name: str
    spec: Callable[[int], Any]
    about: str = ""
    checkpoint: Mapping[int, str] = field(default_factory=dict)
    scales: tuple[int, ...] = (2, 3, 4)


def _identity(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class Family:
    """What one architecture declares (see the module docstring).

    ``claims(state)`` says whether a normalised state dict looks like this family's (used to load a
    bare ``.pth`` file); ``input_range(spec)`` is 255.0 or 1.0; ``mean(spec)`` the per-channel mean
    the model subtracts itself (informational: the forward applies it); ``deploy_form(model)``
    returns the model with its training-time branches folded (re-parameterisation), or the model
    itself when it is already folded; ``group_name(conv_path)`` turns the module path of a group's
    first producing conv into the family's readable group name (None: use the path).

    Deploy forms (:func:`workbench.measure.deploy.prepare` calls them; None: the generic form, which works
    for any module): ``fused(model, example_hw)`` returns a module that runs a channels_last
    fp32 copy of ``model`` with fused oneDNN convs, exact to summation order;
    ``bf16(model)`` a module that runs its body in bfloat16 with the precision-critical convs
    (stem, upsampler) in fp32; ``compiled(model)`` the plain-PyTorch module (same function, to
    rounding) that ``compile`` hands to inductor (None: the model itself). ``drop_blocks(model, keep)`` (None: the family has no repeatable
    blocks) returns a new model with only blocks ``keep`` (1-based, increasing) and the spec's
    ``num_blocks`` blocks; the search's ``blocks`` dimension and the prune stage's
    ``keep_blocks`` use it.

    int8 (:mod:`workbench.measure.quantize`): ``int8_fp32(model)`` names the modules (fnmatch
    patterns over module paths; a module covers its children) that stay fp32 by default, the
    layers whose rounding measurably costs quality (None: the generic choice, the first conv, the
    convs feeding a PixelShuffle and the last conv, :func:`workbench.measure.quantize.default_skip`);
    calibration crops and quantization-aware training go through ``input_range``;
    ``int8_min_side`` is the smallest LR side the dynamically exported graph accepts (RLFN: 24,
    ESA's pooling guard; None: ``max(2, min_lr_size)``).
    """

    name: str
    spec_type: type
    build: Callable[[Any], nn.Module]
    spec_from_state_dict: Callable[[Mapping[str, torch.Tensor]], Any]
    normalize_state_dict: Callable[[Mapping[str, Any]], dict[str, torch.Tensor]]
    claims: Callable[[Mapping[str, torch.Tensor]], bool]
    presets: Mapping[str, ModelPreset] = field(default_factory=dict)
    input_range: Callable[[Any], float] = lambda spec: 255.0
    mean: Callable[[Any], tuple[float, ...] | None] = lambda spec: None
    deploy_form: Callable[[nn.Module], nn.Module] = _identity
    group_name: Callable[[str], str | None] | None = None
    fused: Callable[[nn.Module, Any], nn.Module] | None = None
    bf16: Callable[[nn.Module], nn.Module] | None = None
    compiled: Callable[[nn.Module], nn.Module] | None = None
    drop_blocks: Callable[[nn.Module, list], nn.Module] | None = None
    #: the deploy mode latency is measured in on a CPU unless one is named
    cpu_default_deploy: str = "channels_last"
    min_lr_size: int = 1
    int8_fp32: Callable[[nn.Module], tuple[str, ...]] | None = None
    int8_min_side: int | None = None
    about: str = ""

    def spec_from_dict(self, data: Mapping[str, Any]) -> Any:
        return self.spec_type.from_dict(data)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family`` known to every command (its presets become model names such as
    ``<preset>_x4``). Registering a different family under a taken name, or a preset name that
    another family already uses, raises ValueError."""
    old = FAMILIES.get(family.name)
    if old is not None and old is not family:
        raise ValueError(f"model family {family.name!r} is registered twice")
    for other in FAMILIES.values():
        if other is not family:
            clash = set(other.presets) & set(family.presets)
            if clash:
                raise ValueError(f"presets {sorted(clash)} of family {family.name!r} are already "
                                 f"presets of {other.name!r}")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    _load_entry_points()
    try:
        return FAMILIES[name]
    except KeyError:
        raise WorkbenchError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of_spec(spec: Any) -> Family:
    """The family whose spec class ``spec`` is an instance of (a spec that names its family, as a
    wrapped module's does, picks that one)."""
    named = getattr(spec, "family", None)
    if isinstance(named, str):
        fam = FAMILIES.get(named)
        if fam is None:
            _load_entry_points()
            fam = FAMILIES.get(named)
        if fam is not None and isinstance(spec, fam.spec_type):
            return fam
    for fam in FAMILIES.values():
        if isinstance(spec, fam.spec_type):
            return fam
    raise WorkbenchError(f"no registered model family builds a {type(spec).__name__}")


def _core(model: nn.Module) -> nn.Module:
    """The model under DDP/DataParallel (``.module``), torch.compile (``._orig_mod``) or a
    :class:`workbench.measure.deploy.Deployed` wrapper (``.module``)."""
    seen = 0
    while not hasattr(model, "spec") and seen < 4:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
        seen += 1
    return model


def spec_from_any_dict(data: Mapping[str, Any]) -> Any:
    """The spec a ``to_dict()`` record describes, whatever its family (the record's ``arch``, and
    for a wrapped module its ``family``, say which)."""
    if not isinstance(data, Mapping):
        raise WorkbenchError(f"a spec record must be a mapping, not {type(data).__name__}")
    _load_entry_points()
    if data.get("arch") == "module":
        return get_family(str(data.get("family"))).spec_from_dict(data)
    errors = []
    for fam in FAMILIES.values():
        try:
            return fam.spec_from_dict(data)
        except (ValueError, KeyError, TypeError) as exc:
            errors.append(f"{fam.name}: {exc}")
    raise WorkbenchError(f"no model family reads the spec record ({'; '.join(errors)[:300]})")


def renumber_blocks(model: nn.Module, keep: list[int], target: Any, *,
                    prefix: str = "block_") -> nn.Module:
    """A fresh model of spec ``target`` holding ``model``'s weights with blocks ``keep`` renumbered
    1..len(keep) (state-dict keys ``<prefix><i>.``) and every other block's weights left out;
    loaded strictly, so a wiring that does not fit ``target`` fails here."""
    renumber = {old: new for new, old in enumerate(keep, start=1)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            head, rest = key.split(".", 1)
            old = int(head[len(prefix):])
            if old not in renumber:
                continue
            key = f"{prefix}{renumber[old]}.{rest}"
        state[key] = value
    param = next(model.parameters())
    fresh = family_of_spec(target).build(target).to(device=param.device, dtype=param.dtype)
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise WorkbenchError(f"dropping blocks: the kept weights do not fit the new spec "
                             f"({lines[1] if len(lines) > 1 else lines[0]})") from None
    return fresh.train(model.training)


def family_of(model: nn.Module) -> Family:
    spec = getattr(_core(model), "spec", None)
    if spec is None:
        raise WorkbenchError(f"{type(model).__name__} has no .spec: not a workbench family model")
    return family_of_spec(spec)


def input_range(model: nn.Module) -> float:
    """255.0 or 1.0: the scale ``model`` expects its input (and returns its output) on. A module
    that no family built (e.g. a test stub) is taken to work on 0..255."""
    spec = getattr(_core(model), "spec", None)
    if spec is None:
        return 255.0
    try:
        return float(family_of_spec(spec).input_range(spec))
    except WorkbenchError:
        return 255.0


def model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 0..255 image tensor converted to ``model``'s input range."""
    r = input_range(model)
    return x if r == 255.0 else x * (r / 255.0)


def model_output(model: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``model``'s output converted back to the 0..255 scale."""
    r = input_range(model)
    return y if r == 255.0 else y * (255.0 / r)


def run_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model`` on a 0..255 batch, through its family's input range; the output on 0..255."""
    return model_output(model, model(model_input(model, x)))


class On255(nn.Module):
    """``model`` with its family's input range folded in: takes and returns 0..255 tensors (what
    an exported graph promises whatever the family)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.factor = input_range(model) / 255.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.factor) / self.factor


def on_255(model: nn.Module) -> nn.Module:
    """``model`` itself when it works on 0..255, else an :class:`On255` around it."""
    return model if input_range(model) == 255.0 else On255(model)


# -- shared state-dict helpers ----------------------------------------------------------------

WRAPPERS = ("params_ema", "params", "state_dict", "model")


def unwrap_wrappers(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights under a 'params_ema'/'params'/'state_dict'/'model' wrapper, if any."""
    for wrapper in WRAPPERS:
        if wrapper in state and isinstance(state[wrapper], Mapping):
            return state[wrapper]
    return state


def strip_module_prefix(key: str) -> str:
    """DataParallel/DDP save their weights under 'module.'."""
    return key[len("module."):] if key.startswith("module.") else key


_ENTRY_POINTS_LOADED = False


def _load_entry_points() -> None:
    """Register families that installed packages declare in the ``workbench.families`` entry-point
    group (each entry point names a Family object or a callable returning one). Done once."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="workbench.families"):
        try:
            obj = ep.load()
            fam = obj() if callable(obj) and not isinstance(obj, Family) else obj
            if isinstance(fam, Family) and fam.name not in FAMILIES:
                register_family(fam)
        except Exception as exc:  # a broken plug-in must not break the built-in families
            import logging

            logging.getLogger(__name__).warning("model family entry point %s failed: %s",
                                                ep.name, exc)
