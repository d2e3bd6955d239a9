"""The search space: which channel widths (and how many blocks) a candidate may have.

A candidate is always a *pruned* parent, so every range is checked against the parent's widths
before a study starts (a candidate cannot be wider than the model it inherits its weights from).
Widths move in steps (``32:48:8``): on a CPU or GPU latency changes in steps with width, so a fine
step mostly adds trials that cost the same.

Optuna parameter names: ``trunk``, ``blocks``, and ``mid``/``esa`` for a shared width, or
``mid.b<i>``/``esa.b<i>`` (1-based) with ``per_block``. A dimension whose range is a single value
(or is not given) is not searched: the parent's width is kept.

Every family: *group dimensions* name channel groups as the family derives them (``workbench
prune groups``): ``group:NAME`` or a name with a dot or a shell wildcard (``block*.mid1``,
``body.*.conv1``) sets every matching group to one sampled width (per matching group with
``per_block``; optuna parameter = the pattern, or the group name); a recipe may also give a
``groups:`` mapping. ``blocks`` works for a family that declares repeatable blocks
(``Family.drop_blocks``: RLFN, SPAN); the first k blocks are kept. ``trunk``/``mid``/``esa`` are
RLFN's shorthands; other families use group dimensions (SPAN: ``feature``, ``block<i>.mid1``,
``block<i>.mid2``, ``tail``, ``fuse``).
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

from workbench.core.errors import WorkbenchError
from workbench.models.rlfn import MIN_LR_SIZE, BlockSpec, RLFNSpec  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    import optuna

DIMENSIONS = ("trunk", "mid", "esa", "blocks")
GROUP_PREFIX = "group:"


def _is_group_pattern(name: str) -> bool:
    return name.startswith(GROUP_PREFIX) or any(c in name for c in ".*?[")


def _group_names(spec: Any) -> list[str]:
    from workbench.models import group_widths

    return list(group_widths(spec))


def _matching(pattern: str, names: list[str]) -> list[str]:
    return [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]


@dataclass(frozen=True)
class IntRange:
    """Integers ``low, low+step, ..., high`` (inclusive); ``high - low`` must be a multiple of step."""

    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WorkbenchError(f"range {self}: {name} must be a positive integer, got {value!r}")
        if self.low > self.high:
            raise WorkbenchError(f"range {self}: low {self.low} is above high {self.high}")
        if (self.high - self.low) % self.step:
            raise WorkbenchError(
                f"range {self}: high - low ({self.high - self.low}) is not a multiple of step "
                f"{self.step}; e.g. use {self.low}:{self.low + (self.high - self.low) // self.step * self.step}:{self.step}")

    def __str__(self) -> str:
        return f"{self.low}:{self.high}:{self.step}"

    @classmethod
    def parse(cls, text: str | int | Mapping[str, int] | "IntRange", *, what: str = "range") -> "IntRange":
        """``"32:48:8"``, ``"32:48"`` (step 1), ``"48"`` or ``48`` (one value), or a mapping."""
        if isinstance(text, IntRange):
            return text
        if isinstance(text, bool):
            raise WorkbenchError(f"{what}: expected LOW:HIGH[:STEP], got {text!r}")
        if isinstance(text, int):
            return cls(text, text, 1)
        if isinstance(text, Mapping):
            try:
                return cls(int(text["low"]), int(text["high"]), int(text.get("step", 1)))
            except (KeyError, TypeError, ValueError):
                raise WorkbenchError(f"{what}: expected {{low, high, step}}, got {dict(text)!r}") from None
        parts = str(text).strip().split(":")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise WorkbenchError(f"{what}: expected LOW:HIGH[:STEP] with integers, got {text!r}") from None
        if len(numbers) == 1:
            return cls(numbers[0], numbers[0], 1)
        if len(numbers) in (2, 3):
            return cls(*numbers)
        raise WorkbenchError(f"{what}: expected LOW:HIGH[:STEP], got {text!r}")

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high \
            and (value - self.low) % self.step == 0


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the width specification a study samples from.

    ``trunk``: the feature width shared by every trunk group (stem, each block's output, conv_2);
    ``mid``: the middle width of each block (``c1_r`` and ``c2_r`` outputs);
    ``esa``: the ESA width of each block (reduce, inner and fuse convolutions alike);
    ``blocks``: how many blocks (the first k of the parent are kept);
    ``per_block``: sample ``mid`` and ``esa`` once per block instead of once for all blocks.
    ``None`` keeps the parent's width for that dimension.
    """

    trunk: IntRange | None = None
    mid: IntRange | None = None
    esa: IntRange | None = None
    blocks: IntRange | None = None
    per_block: bool = False
    #: (group name or shell pattern, range): group dimensions, any family (applied in order)
    groups: tuple[tuple[str, IntRange], ...] = ()

    @property
    def generic(self) -> bool:
        """True when the space has group dimensions (the family-independent path)."""
        return bool(self.groups)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_strings(cls, items: Mapping[str, Any] | list[str] | tuple[str, ...], *,
                     per_block: bool = False) -> "SearchSpace":
        """Build from ``["trunk=32:48:8", "mid=24:48:8"]`` or ``{"trunk": "32:48:8", ...}``."""
        if isinstance(items, Mapping):
            pairs = list(items.items())
        else:
            pairs = []
            for item in items:
                name, sep, value = str(item).partition("=")
                if not sep:
                    raise WorkbenchError(f"--space {item!r}: expected NAME=LOW:HIGH[:STEP] "
                                         f"with NAME one of {', '.join(DIMENSIONS)}")
                pairs.append((name.strip(), value.strip()))
        ranges: dict[str, IntRange | None] = {}
        groups: list[tuple[str, IntRange]] = []
        for name, value in list(pairs):
            if name == "groups" and isinstance(value, Mapping):
                pairs.extend((f"{GROUP_PREFIX}{k}", v) for k, v in value.items())
        for name, value in pairs:
            if name == "groups" and isinstance(value, Mapping):
                continue
            if isinstance(name, str) and _is_group_pattern(name):
                pattern = name[len(GROUP_PREFIX):] if name.startswith(GROUP_PREFIX) else name
                if not pattern or value in (None, ""):
                    raise WorkbenchError(f"search space: group dimension {name!r} needs a name "
                                         "and a range")
                groups.append((pattern, IntRange.parse(value, what=f"space.{pattern}")))
                continue
            if name == "per_block":
                per_block = bool(value) if not isinstance(value, str) else value.lower() in ("1", "true", "yes")
                continue
            if name not in DIMENSIONS:
                raise WorkbenchError(f"search space: unknown dimension {name!r}; known: "
                                     f"{', '.join(DIMENSIONS)}, per_block")
            ranges[name] = None if value in (None, "") else IntRange.parse(value, what=f"space.{name}")
        return cls(per_block=per_block, groups=tuple(groups), **ranges)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {d: (str(getattr(self, d)) if getattr(self, d) else None) for d in DIMENSIONS}
        out["per_block"] = self.per_block
        if self.groups:  # only then: RLFN studies keep their stored fingerprints
            out["groups"] = [[p, str(r)] for p, r in self.groups]
        return out

    def describe(self) -> str:
        parts = [f"{d}={getattr(self, d)}" for d in DIMENSIONS if getattr(self, d) is not None]
        parts += [f"{p}={r}" for p, r in self.groups]
        if self.per_block:
            parts.append("per block")
        return ", ".join(parts) or "(empty: the parent only)"

    # -- validation --------------------------------------------------------------------------
    def validate(self, parent: RLFNSpec) -> None:
        """Raise WorkbenchError unless every candidate is a valid pruning of ``parent``.

        Widths cannot exceed the parent's (pruning only removes channels); fewer blocks keep the
        parent's first k, so block k's output must feed conv_2 as the last block's does.
        """
        if self.generic or not isinstance(parent, RLFNSpec):
            return self._validate_generic(parent)
        trunk_widths = [parent.trunk] + [b.out for b in parent.blocks]
        if self.trunk is not None and self.trunk.high > min(trunk_widths):
            raise WorkbenchError(f"search space: trunk up to {self.trunk.high} exceeds the parent's "
                                 f"trunk width {min(trunk_widths)} (candidates are pruned from it)")
        if self.blocks is not None:
            if self.blocks.high > parent.num_blocks:
                raise WorkbenchError(f"search space: blocks up to {self.blocks.high} exceeds the "
                                     f"parent's {parent.num_blocks} blocks")
            last = parent.blocks[-1].out
            for k in self.blocks.values():
                if parent.blocks[k - 1].out != last:
                    raise WorkbenchError(
                        f"search space: keeping {k} blocks needs block {k}'s output width "
                        f"({parent.blocks[k - 1].out}) to equal the last block's ({last}), which "
                        f"conv_2 reads; fix the blocks range or prune the trunk uniformly first")
        n_max = self.blocks.high if self.blocks is not None else parent.num_blocks
        kept = parent.blocks[:n_max]
        if self.mid is not None:
            limit = min(min(b.mid1, b.mid2) for b in kept)
            if self.mid.high > limit:
                raise WorkbenchError(f"search space: mid up to {self.mid.high} exceeds the parent's "
                                     f"middle width {limit}")
        if self.esa is not None:
            limit = min(min(b.esa, b.esa_inner, b.esa_fuse) for b in kept)
            if self.esa.high > limit:
                raise WorkbenchError(f"search space: esa up to {self.esa.high} exceeds the parent's "
                                     f"ESA width {limit}")

    # -- the family-independent path (group dimensions) ------------------------------------------
    def _validate_generic(self, parent: Any) -> None:
        from workbench.models.family import family_of_spec

        names = _group_names(parent)
        fam = family_of_spec(parent)
        rlfn_dims = [d for d in ("trunk", "mid", "esa") if getattr(self, d) is not None]
        if rlfn_dims:
            import re

            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            numbered = [re.sub(r"\d+", "*", n) for n in names if re.search(r"\d", n)]
            example = f" '{numbered[0]}=LOW:HIGH:STEP'" if numbered else ""
            raise WorkbenchError(
                f"search space: {', '.join(rlfn_dims)} {'is' if len(rlfn_dims) == 1 else 'are'} "
                f"RLFN's shorthand; a {fam.name} model is searched over its channel groups "
                f"({shown}) and blocks: e.g. --space 'group:{names[0]}=LOW:HIGH:STEP'"
                f"{example} (workbench prune groups lists them)")
        if self.blocks is not None:
            if fam.drop_blocks is None or not hasattr(parent, "with_blocks"):
                raise WorkbenchError(f"search space: model family {fam.name!r} declares no "
                                     "repeatable blocks; drop the blocks dimension")
            if self.blocks.high > parent.num_blocks:
                raise WorkbenchError(f"search space: blocks up to {self.blocks.high} exceeds the "
                                     f"parent's {parent.num_blocks} blocks")
            for k in self.blocks.values():
                try:
                    self._first_blocks(parent, k)
                except ValueError as exc:
                    raise WorkbenchError(f"search space: keeping {k} blocks: {exc}") from None
        widths = self._widths(parent)
        for pattern, rng in self.groups:
            matched = _matching(pattern, names)
            if not matched:
                raise WorkbenchError(f"search space: no channel group matches {pattern!r}; groups: "
                                     f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
            limit = min(widths[n] for n in matched)
            if rng.high > limit:
                raise WorkbenchError(f"search space: {pattern} up to {rng.high} exceeds the parent's "
                                     f"width {limit} (candidates are pruned from it)")

    @staticmethod
    def _widths(spec: Any) -> dict[str, int]:
        from workbench.models import group_widths

        return group_widths(spec)

    @staticmethod
    def _first_blocks(parent: Any, n: int) -> Any:
        if n == getattr(parent, "num_blocks", 0) or not hasattr(parent, "with_blocks"):
            return parent
        return parent.with_blocks(list(range(1, n + 1)))

    def _generic_names(self, spec: Any) -> list[tuple[str, str, IntRange]]:
        """(optuna name, pattern, range) of every searched group dimension for ``spec``'s groups."""
        names = _group_names(spec)
        out = []
        for pattern, rng in self.groups:
            if rng.fixed:
                continue
            if self.per_block:
                out += [(g, pattern, rng) for g in _matching(pattern, names)]
            else:
                out.append((pattern, pattern, rng))
        return out

    def _generic_spec(self, params: Mapping[str, int], parent: Any) -> Any:
        spec = self._first_blocks(parent, self._num_blocks(params, parent))
        names = _group_names(spec)
        widths: dict[str, int] = {}
        for pattern, rng in self.groups:
            for g in _matching(pattern, names):
                if rng.fixed:
                    widths[g] = rng.low
                else:
                    widths[g] = int(params[g if self.per_block else pattern])
        return spec.with_widths(widths) if widths else spec

    def _generic_sample(self, trial: "optuna.trial.Trial", parent: Any) -> Any:
        params: dict[str, int] = {}
        if self.blocks is not None and not self.blocks.fixed:
            params["blocks"] = trial.suggest_int("blocks", self.blocks.low, self.blocks.high,
                                                 step=self.blocks.step)
        base = self._first_blocks(parent, self._num_blocks(params, parent))
        for name, _, rng in self._generic_names(base):
            params[name] = trial.suggest_int(name, rng.low, rng.high, step=rng.step)
        return self._generic_spec(params, parent)

    def _generic_params(self, spec: Any, parent: Any) -> dict[str, int] | None:
        params: dict[str, int] = {}
        if self.blocks is not None and not self.blocks.fixed:
            if spec.num_blocks not in self.blocks:
                return None
            params["blocks"] = spec.num_blocks
        widths = self._widths(spec)
        names = list(widths)
        for name, pattern, rng in self._generic_names(spec):
            values = {widths[g] for g in ([name] if self.per_block else _matching(pattern, names))}
            if len(values) != 1 or next(iter(values)) not in rng:
                return None
            params[name] = values.pop()
        try:
            return params if self._generic_spec(params, parent) == spec else None
        except (KeyError, ValueError):
            return None

    def _generic_counts(self, parent: Any) -> list[int]:
        if self.blocks is None:
            return [getattr(parent, "num_blocks", 0)]
        return self.blocks.values()

    def _generic_all(self, parent: Any) -> list[Any]:
        import itertools

        out = []
        for n in self._generic_counts(parent):
            dims = [(name, rng.values()) for name, _, rng in
                    self._generic_names(self._first_blocks(parent, n))]
            fixed = {"blocks": n} if self.blocks is not None and not self.blocks.fixed else {}
            for combo in itertools.product(*(v for _, v in dims)):
                out.append(self._generic_spec({**fixed, **dict(zip((d for d, _ in dims), combo))},
                                              parent))
        return out

    def _generic_size(self, parent: Any) -> int:
        total = 0
        for n in self._generic_counts(parent):
            sub = 1
            for _, _, rng in self._generic_names(self._first_blocks(parent, n)):
                sub *= len(rng.values())
            total += sub
        return total

    # -- sampling ------------------------------------------------------------------------------
    def names(self, parent: RLFNSpec) -> list[str]:
        """Optuna parameter names this space can suggest (for the widest block count)."""
        if self.generic or not isinstance(parent, RLFNSpec):
            return ["blocks"] * (self.blocks is not None and not self.blocks.fixed) + [n for n, _, _ in self._generic_names(self._first_blocks(parent, self.blocks.high if self.blocks is not None else parent.num_blocks))]
        n = self.blocks.high if self.blocks is not None else parent.num_blocks
        out = []
        if self.trunk is not None and not self.trunk.fixed:
            out.append("trunk")
        if self.blocks is not None and not self.blocks.fixed:
            out.append("blocks")
        for dim in ("mid", "esa"):
            rng = getattr(self, dim)
            if rng is not None and not rng.fixed:
                out.extend([f"{dim}.b{i}" for i in range(1, n + 1)] if self.per_block else [dim])
        return out

    def sample(self, trial: "optuna.trial.Trial", parent: RLFNSpec) -> RLFNSpec:
        """Suggest every searched width on ``trial`` (with its step) and return the candidate spec."""
        if self.generic or not isinstance(parent, RLFNSpec):
            return self._generic_sample(trial, parent)
        params: dict[str, int] = {}
        if self.trunk is not None and not self.trunk.fixed:
            params["trunk"] = trial.suggest_int("trunk", self.trunk.low, self.trunk.high, step=self.trunk.step)
        if self.blocks is not None and not self.blocks.fixed:
            params["blocks"] = trial.suggest_int("blocks", self.blocks.low, self.blocks.high,
                                                 step=self.blocks.step)
        n = self._num_blocks(params, parent)
        for dim in ("mid", "esa"):
            rng = getattr(self, dim)
            if rng is None or rng.fixed:
                continue
            names = [f"{dim}.b{i}" for i in range(1, n + 1)] if self.per_block else [dim]
            for name in names:
                params[name] = trial.suggest_int(name, rng.low, rng.high, step=rng.step)
        return self.spec_for(params, parent)

    def _num_blocks(self, params: Mapping[str, int], parent: RLFNSpec) -> int:
        if "blocks" in params:
            return int(params["blocks"])
        if self.blocks is not None:
            return self.blocks.low
        return getattr(parent, "num_blocks", 0)

    def spec_for(self, params: Mapping[str, int], parent: RLFNSpec) -> RLFNSpec:
        """The candidate spec for a trial's parameters (as stored in ``trial.params``)."""
        if self.generic or not isinstance(parent, RLFNSpec):
            return self._generic_spec(params, parent)
        n = self._num_blocks(params, parent)
        trunk = params.get("trunk", self.trunk.low if self.trunk is not None else None)
        blocks = []
        for i, b in enumerate(parent.blocks[:n], start=1):
            fields: dict[str, int] = {}
            mid = self._value("mid", i, params)
            if mid is not None:
                fields.update(mid1=mid, mid2=mid)
            esa = self._value("esa", i, params)
            if esa is not None:
                fields.update(esa=esa, esa_inner=esa, esa_fuse=esa)
            if trunk is not None:
                fields["out"] = int(trunk)
            blocks.append(replace(b, **fields))
        spec = replace(parent, trunk=int(trunk) if trunk is not None else parent.trunk, blocks=tuple(blocks))
        return spec

    def _value(self, dim: str, block: int, params: Mapping[str, int]) -> int | None:
        rng = getattr(self, dim)
        if rng is None:
            return None
        if rng.fixed:
            return rng.low
        key = f"{dim}.b{block}" if self.per_block else dim
        return int(params[key])

    def params_for(self, spec: RLFNSpec, parent: RLFNSpec) -> dict[str, int] | None:
        """The trial parameters that give ``spec`` (None when the space cannot express it)."""
        if self.generic or not isinstance(parent, RLFNSpec):
            return self._generic_params(spec, parent)
        params: dict[str, int] = {}
        n = spec.num_blocks
        if self.trunk is not None and not self.trunk.fixed:
            params["trunk"] = spec.trunk
        if self.blocks is not None and not self.blocks.fixed:
            params["blocks"] = n
        for dim, width in (("mid", lambda b: b.mid1), ("esa", lambda b: b.esa)):
            rng = getattr(self, dim)
            if rng is None or rng.fixed:
                continue
            if self.per_block:
                params.update({f"{dim}.b{i}": width(b) for i, b in enumerate(spec.blocks, start=1)})
            else:
                params[dim] = width(spec.blocks[0])
        ranges = {"trunk": self.trunk, "blocks": self.blocks, "mid": self.mid, "esa": self.esa}
        for name, value in params.items():
            if value not in ranges[name.split(".")[0]]:
                return None
        try:
            return params if self.spec_for(params, parent) == spec else None
        except (KeyError, ValueError):
            return None

    def all_specs(self, parent: RLFNSpec) -> list[RLFNSpec]:
        """Every candidate of the space (use :meth:`size` first: per-block spaces explode)."""
        if self.generic or not isinstance(parent, RLFNSpec):
            return self._generic_all(parent)
        import itertools

        dims: list[tuple[str, list[int]]] = []
        if self.trunk is not None and not self.trunk.fixed:
            dims.append(("trunk", self.trunk.values()))
        counts = self.blocks.values() if self.blocks is not None and not self.blocks.fixed else [None]
        out = []
        for n in counts:
            sub = list(dims) + ([("blocks", [n])] if n is not None else [])
            nb = n if n is not None else self._num_blocks({}, parent)
            for dim in ("mid", "esa"):
                rng = getattr(self, dim)
                if rng is not None and not rng.fixed:
                    names = [f"{dim}.b{i}" for i in range(1, nb + 1)] if self.per_block else [dim]
                    sub += [(name, rng.values()) for name in names]
            for combo in itertools.product(*(values for _, values in sub)):
                out.append(self.spec_for(dict(zip((name for name, _ in sub), combo)), parent))
        return out

    def size(self, parent: RLFNSpec) -> int:
        """How many distinct candidates the space holds."""
        if self.generic or not isinstance(parent, RLFNSpec):
            return self._generic_size(parent)
        total = 0
        counts = self.blocks.values() if self.blocks is not None else [parent.num_blocks]
        for n in counts:
            sub = len(self.trunk.values()) if self.trunk is not None else 1
            for dim in ("mid", "esa"):
                rng = getattr(self, dim)
                if rng is not None:
                    sub *= len(rng.values()) ** (n if self.per_block else 1)
            total += sub
        return total


def spec_key(spec: RLFNSpec) -> str:
    """Canonical one-line key of a width specification (equal specs give equal keys).

    ``x4:3>48|48,48,48,16,16,16|...|>3``: scale, input channels, stem width, then one
    ``mid1,mid2,out,esa,esa_inner,esa_fuse`` per block, then output channels (``|nobias`` and
    ``|range1`` for DIPNet's layout). Any other family: ``<family>:<the spec's canonical JSON>``.
    """
    if not isinstance(spec, RLFNSpec):
        from workbench.models.family import family_of_spec

        return f"{family_of_spec(spec).name}:" + json.dumps(spec.to_dict(), sort_keys=True,
                                                           separators=(",", ":"))
    blocks = "|".join(f"{b.mid1},{b.mid2},{b.out},{b.esa},{b.esa_inner},{b.esa_fuse}" for b in spec.blocks)
    key = f"x{spec.scale}:{spec.in_channels}>{spec.trunk}|{blocks}|>{spec.out_channels}"
    # DIPNet's layout (no bias outside ESA, [0, 1] inputs) times differently from RLFN's
    if not spec.bias:
        key += "|nobias"
    if spec.input_range != 255.0:
        key += f"|range{spec.input_range:g}"
    return key


def spec_summary(spec: RLFNSpec) -> str:
    """Short human form: ``t32 m40 e16 b6`` for uniform specs, per-block lists otherwise."""
    if not isinstance(spec, RLFNSpec):
        from workbench.models import group_widths

        widths = list(group_widths(spec).values())
        short = str(widths[0]) if len(set(widths)) == 1 else ",".join(map(str, widths))
        blocks = f" b{spec.num_blocks}" if getattr(spec, "num_blocks", 0) else ""
        return f"w{short}{blocks}"
    mids = [b.mid1 if b.mid1 == b.mid2 else f"{b.mid1}/{b.mid2}" for b in spec.blocks]
    esas = [b.esa if b.esa == b.esa_inner == b.esa_fuse else f"{b.esa}/{b.esa_inner}/{b.esa_fuse}"
            for b in spec.blocks]
    outs = {b.out for b in spec.blocks} | {spec.trunk}
    trunk = str(spec.trunk) if len(outs) == 1 else "/".join(str(w) for w in [spec.trunk] + [b.out for b in spec.blocks])

    def short(values: list[Any]) -> str:
        return str(values[0]) if len(set(map(str, values))) == 1 else ",".join(map(str, values))

    return f"t{trunk} m{short(mids)} e{short(esas)} b{spec.num_blocks}"
