"""The one strict recipe loader: YAML -> typed, frozen config dataclasses, or every problem at once.

What it checks, before any work starts (each problem names the YAML path of the field)::

    stages[4] (sfp).ratio: must be in (0, 1), got 1.5
    stages[1] (warm).iteratons: unknown key (did you mean 'iterations'?)
    data.train[0].root: folder does not exist: datasets/DIV2K

- unknown keys (with a did-you-mean), missing required fields, wrong types (an int is accepted
  where a float is expected, never a bool where a number is);
- ``field(metadata=...)`` of the config dataclasses: ``min``/``max`` (inclusive), ``gt``/``lt``
  (exclusive), ``choices``, ``pattern`` (a regular expression the string must match, with
  ``pattern_help`` to describe it), ``exists`` ("dir", "file" or "any": a path that must exist),
  ``check`` (a function of the value returning problem messages; one starting with ``[`` or
  ``.`` continues the field's path, e.g. ``[1].type: unknown loss``);
- duplicate stage ids, unknown stage types, a model that cannot be resolved, a scale that
  contradicts the model, training data that is missing or not in the named layout;
- a config class may add its own checks: ``__post_init__`` raising ``ValueError``, a method
  ``validate(self) -> list[str]`` and/or ``validate_in(self, recipe: RecipeConfig) -> list[str]``;
  a message starting with ``field:`` is attached to that field's path.

Values are YAML (``yaml.safe_load``), ``--set`` values too; nothing is ever evaluated, so a recipe
cannot run code. ``--smoke`` merges the recipe's top-level ``smoke:`` mapping over the recipe and each
stage's ``smoke:`` mapping over that stage (mappings merge key by key, anything else is replaced).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from workbench.core.errors import WorkbenchError, short_repr
from workbench.recipes.schema import RecipeConfig

_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")

STAGE_KEYS = ("id", "stage", "smoke")
TOP_KEYS_EXTRA = ("stages", "smoke")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class RecipeError(WorkbenchError):
    """A recipe with problems; ``problems`` lists each as ``path: message``."""

    def __init__(self, source: object, problems: Sequence[str]) -> None:
        self.source = source
        # each problem bounded (values inside are already short reprs); room for two long paths
        self.problems = [p if len(p) <= 1000 else p[:997] + "..." for p in problems]
        if len(self.problems) == 1:
            text = f"{source}: {self.problems[0]}"
        else:
            text = f"{source}: {len(self.problems)} problems\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(text)


@dataclass
class StagePlan:
    """One stage of a loaded recipe."""

    index: int
    id: str
    type: str
    config: Any
    resolved: dict[str, Any]          # {"id", "stage", every config field with its value}

    @property
    def label(self) -> str:
        return f"stages[{self.index}] ({self.id})"

    @property
    def folder_name(self) -> str:
        return f"{self.index:02d}-{self.id}"


@dataclass
class Recipe:
    """A validated recipe: typed top level, typed stages and the resolved YAML text."""

    path: Path | None
    config: RecipeConfig
    stages: list[StagePlan]
    scale: int
    smoke: bool
    resolved: dict[str, Any]
    text: str = ""
    sha256: str = ""

    @property
    def name(self) -> str:
        if self.config.name:
            return self.config.name
        return self.path.stem if self.path is not None else "recipe"

    def stage(self, stage_id: str) -> StagePlan:
        for plan in self.stages:
            if plan.id == stage_id:
                return plan
        raise WorkbenchError(f"no stage with id {stage_id!r}{_did_you_mean(stage_id, [s.id for s in self.stages])}; "
                             f"stages: {', '.join(s.id for s in self.stages)}")


# -- helpers ------------------------------------------------------------------------------------

def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    if not isinstance(word, str) or len(word) > 100:
        return ""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any) -> str:
    return short_repr(value, 60)


# -- YAML with a budget ---------------------------------------------------------------------------

#: The most values (scalars, lists, mappings; each alias counted as the whole value it repeats) a
#: recipe or --set value may expand to. Real recipes have a few hundred; nested aliases ("billion
#: laughs") reach billions from a kilobyte.
MAX_YAML_VALUES = 10_000


class YAMLBudgetError(yaml.YAMLError):
    """A YAML document whose aliases expand beyond :data:`MAX_YAML_VALUES` values, or refer to
    themselves."""


class _BudgetLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts the expanded size of the composed node graph before
    constructing anything (the count is memoised per node, so it costs the file's size, not the
    expansion's)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            total = 1
            for child in _children(node):
                total += sizes[id(child)]
            if total > MAX_YAML_VALUES:
                raise YAMLBudgetError(f"aliases expand to more than {MAX_YAML_VALUES} values "
                                      "(nested aliases, an alias bomb?); refused")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            raise YAMLBudgetError("an alias refers to the value that contains it (a recursive "
                                  "structure); refused")
        active.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def safe_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` (no tags that construct objects) that refuses alias bombs and recursive
    aliases with :class:`YAMLBudgetError`."""
    return yaml.load(text, Loader=_BudgetLoader)  # noqa: S506 - a SafeLoader subclass


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and paths -> YAML-safe dicts, lists and strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def deep_merge(base: Any, patch: Any) -> Any:
    """``patch`` over ``base``: mappings merge key by key; anything else is replaced."""
    if isinstance(base, Mapping) and isinstance(patch, Mapping):
        out = dict(base)
        for key, value in patch.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


_INVALID = object()


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, Sequence):
        args = typing.get_args(hint)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is tuple:
        return f"a list of {len(typing.get_args(hint))} values"
    if origin in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            Path: "a path"}.get(hint, getattr(hint, "__name__", str(hint)))


def _convert(hint: Any, value: Any, path: str, problems: list[str]) -> Any:
    """``value`` checked against the type ``hint``; problems appended, _INVALID on failure."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return value
    if hint is type(None):
        if value is None:
            return None
        problems.append(f"{path}: must be null, got {_show(value)}")
        return _INVALID
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            problems.append(f"{path}: must be {_type_name(hint)}, got null")
            return _INVALID
        candidates = [a for a in args if a is not type(None)]
        first_errors: list[str] | None = None
        for arg in candidates:
            sub: list[str] = []
            out = _convert(arg, value, path, sub)
            if not sub:
                return out
            if first_errors is None:
                first_errors = sub
        if len(candidates) == 1 and first_errors:
            problems.extend(first_errors)
        else:
            problems.append(f"{path}: must be {_type_name(hint)}, got {_show(value)}")
        return _INVALID
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value in allowed:
            return value
        problems.append(f"{path}: must be one of {', '.join(map(repr, allowed))}, got {_show(value)}"
                        f"{_did_you_mean(value, [str(a) for a in allowed])}")
        return _INVALID
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, path, problems)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 (PyYAML) reads 1e-5 without a dot in the mantissa as a string; accept it.
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str):
            return Path(value)
    elif origin in (list, Sequence) or hint in (list,):
        args = typing.get_args(hint)
        if isinstance(value, list):
            if not args:
                return list(value)
            out = [_convert(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
            return _INVALID if any(v is _INVALID for v in out) else out
    elif origin is tuple or hint is tuple:
        args = typing.get_args(hint)
        if isinstance(value, (list, tuple)):
            if not args:
                return tuple(value)
            if len(args) == 2 and args[1] is Ellipsis:
                out = [_convert(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
            elif len(value) != len(args):
                problems.append(f"{path}: must be a list of {len(args)} values, got {_show(value)}")
                return _INVALID
            else:
                out = [_convert(a, v, f"{path}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value))]
            return _INVALID if any(v is _INVALID for v in out) else tuple(out)
    elif origin in (dict, Mapping) or hint in (dict,):
        args = typing.get_args(hint)
        if isinstance(value, Mapping):
            if not args:
                return dict(value)
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    problems.append(f"{path}: keys must be strings, got {_show(k)}")
                    continue
                out[k] = _convert(args[1], v, f"{path}.{k}", problems)
            return _INVALID if any(v is _INVALID for v in out.values()) else out
    else:
        return value  # an annotation we do not interpret: accept as is
    problems.append(f"{path}: must be {_type_name(hint)}, got {_show(value)}")
    return _INVALID


def _fmt_num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _check_meta(meta: Mapping[str, Any], value: Any, path: str, problems: list[str], *,
                check_paths: bool) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)) and not isinstance(value, str):
        for i, item in enumerate(value):
            if not dataclasses.is_dataclass(item) and not isinstance(item, (list, tuple, Mapping)):
                _check_meta(meta, item, f"{path}[{i}]", problems, check_paths=check_paths)
        return
    if "choices" in meta and value not in meta["choices"]:
        choices = list(meta["choices"])
        problems.append(f"{path}: must be one of {', '.join(map(str, choices))}, got {_show(value)}"
                        f"{_did_you_mean(value, [str(c) for c in choices])}")
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        gt, lt = meta.get("gt"), meta.get("lt")
        bad = ((lo is not None and value < lo) or (hi is not None and value > hi)
               or (gt is not None and value <= gt) or (lt is not None and value >= lt))
        if bad:
            low = f"({_fmt_num(gt)}" if gt is not None else (f"[{_fmt_num(lo)}" if lo is not None else None)
            high = f"{_fmt_num(lt)})" if lt is not None else (f"{_fmt_num(hi)}]" if hi is not None else None)
            if low and high:
                rule = f"must be in {low}, {high}"
            elif low:
                rule = f"must be {'>' if gt is not None else '>='} {low[1:]}"
            else:
                rule = f"must be {'<' if lt is not None else '<='} {high[:-1]}"
            problems.append(f"{path}: {rule}, got {_fmt_num(value)}")
    pattern = meta.get("pattern")
    if pattern and isinstance(value, str) and not re.fullmatch(pattern, value):
        problems.append(f"{path}: must be {meta.get('pattern_help', 'matching ' + pattern)}, got {_show(value)}")
    exists = meta.get("exists")
    if exists and check_paths and isinstance(value, (str, Path)):
        p = Path(value).expanduser()
        ok = {"dir": p.is_dir(), "file": p.is_file()}.get(exists, p.exists())
        if not ok:
            what = {"dir": "folder", "file": "file"}.get(exists, "path")
            problems.append(f"{path}: {what} does not exist: {value}")


def _attach(path: str, message: str, field_names: Iterable[str]) -> str:
    head, sep, rest = message.partition(":")
    base = head.split("[")[0].split(".")[0].strip()
    if sep and base in set(field_names) and " " not in head.strip():
        return f"{path}.{head.strip()}:{rest}"
    return f"{path}: {message}"


_CHECK_PATHS = [True]


def build_dataclass(cls: type, raw: Any, path: str, problems: list[str], *,
                    ignore: Sequence[str] = ()) -> Any:
    """Instantiate the frozen config dataclass ``cls`` from the mapping ``raw`` (strictly)."""
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: must be a mapping of {cls.__name__} fields, got {_show(raw)}")
        return _INVALID
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    before = len(problems)
    kwargs: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    for key, value in raw.items():
        if key in ignore:
            continue
        if key not in fields:
            hint = _did_you_mean(key, fields)
            problems.append(f"{prefix}{key}: unknown key" + (hint if hint else f"; known: {', '.join(fields)}"))
            continue
        f = fields[key]
        converted = _convert(hints.get(key, Any), value, f"{prefix}{key}", problems)
        if converted is _INVALID:
            continue
        _check_meta(f.metadata, converted, f"{prefix}{key}", problems, check_paths=_CHECK_PATHS[0])
        field_check = f.metadata.get("check")
        if callable(field_check) and converted is not None:
            for message in field_check(converted) or []:
                sep = "" if message.startswith(("[", ".")) else ": "
                problems.append(f"{prefix}{key}{sep}{message}")
        kwargs[key] = converted
    for name, f in fields.items():
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            helptext = f.metadata.get("help")
            problems.append(f"{prefix}{name}: required field is missing" + (f" ({helptext})" if helptext else ""))
    if len(problems) > before:
        return _INVALID
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        problems.append(_attach(path or cls.__name__, str(exc), fields))
        return _INVALID
    check = getattr(obj, "validate", None)
    if callable(check):
        for message in check() or []:
            problems.append(_attach(path or cls.__name__, message, fields))
    return obj


# -- overrides ----------------------------------------------------------------------------------

def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """Apply ``--set a.b.c=VALUE`` (VALUE parsed as YAML) to ``raw`` in place; returns problems.

    ``stages.<id>.<field>=VALUE`` addresses a stage by its id; other keys address the top level
    (``seed=3``, ``data.val.sets=[Set5,Set14]``, ``model=rlfn_tiny_x4``).
    """
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item}: expected KEY=VALUE, e.g. stages.train.iterations=100")
            continue
        try:
            value = safe_yaml_load(text) if text.strip() else None
        except YAMLBudgetError as exc:
            problems.append(f"--set {key}: {exc}")
            continue
        except (yaml.YAMLError, RecursionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problems.append(f"--set {key}: value is not valid YAML ({short_repr(first, 200)[1:-1]})")
            continue
        parts = key.split(".")
        target: Any = raw
        if parts[0] == "stages":
            if len(parts) < 3:
                problems.append(f"--set {key}: expected stages.<id>.<field>=VALUE")
                continue
            stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
            ids = [s.get("id") for s in stages if isinstance(s, Mapping)]
            match = [s for s in stages if isinstance(s, Mapping) and s.get("id") == parts[1]]
            if not match:
                problems.append(f"--set {key}: no stage with id {parts[1]!r}{_did_you_mean(parts[1], map(str, ids))}"
                                f"; stage ids: {', '.join(map(str, ids))}")
                continue
            target, parts = match[0], parts[2:]
        for part in parts[:-1]:
            nxt = target.get(part) if isinstance(target, Mapping) else None
            if not isinstance(nxt, dict):
                nxt = {}
                target[part] = nxt
            target = nxt
        target[parts[-1]] = value
    return problems


# -- model --------------------------------------------------------------------------------------

def _model_scale(model: Any, problems: list[str], *, check_paths: bool) -> int | None:
    """The scale the recipe's model implies (None if unknown), checking the reference."""
    from workbench.models import RLFNSpec, list_models, parse_model_name

    if isinstance(model, Mapping):
        data = dict(model)
        try:
            if "blocks" in data and isinstance(data["blocks"], list):
                RLFNSpec.from_dict({"scale": 4, **data})
                return int(data["scale"]) if "scale" in data else None
            known = {"trunk", "mid", "esa", "blocks", "scale"}
            unknown = set(data) - known
            if unknown:
                key = sorted(unknown)[0]
                problems.append(f"model.{key}: unknown key{_did_you_mean(key, known)}; widths take "
                                "trunk, mid, esa, blocks (and scale)")
                return None
            if "trunk" not in data:
                problems.append("model.trunk: required field is missing (the trunk width)")
                return None
            RLFNSpec.uniform(scale=int(data.get("scale", 4)), feature=int(data["trunk"]),
                             mid=data.get("mid"), esa=int(data.get("esa", 16)),
                             blocks=int(data.get("blocks", 4)))
            return int(data["scale"]) if "scale" in data else None
        except (TypeError, ValueError) as exc:
            problems.append(f"model: not a valid width specification ({exc})")
            return None
    if not isinstance(model, str):
        problems.append(f"model: must be a model name, a path or a widths mapping, got {_show(model)}")
        return None
    path = Path(model).expanduser()
    if path.exists() or "/" in model or model.endswith((".pt", ".pth")):
        if not check_paths:
            return None
        if not path.exists():
            problems.append(f"model: no such file or folder: {model}")
            return None
        from workbench.models.artifacts import load_model

        try:
            return load_model(path).spec.scale
        except WorkbenchError as exc:
            problems.append(f"model: {exc}")
            return None
    from workbench.models import PRESETS, RANDOM_PREFIX, released_weights

    try:
        preset, scale = parse_model_name(model[len(RANDOM_PREFIX):] if model.startswith(RANDOM_PREFIX) else model)
    except WorkbenchError:
        problems.append(f"model: unknown model {_show(model)}{_did_you_mean(model, list_models())}; "
                        "give a name like rlfn_s_x4, an artifact path or widths")
        return None
    try:
        PRESETS[preset].spec(scale)
    except ValueError as exc:
        problems.append(f"model: {_show(model)}: {exc}")
        return None
    try:
        released_weights(model, must_exist=check_paths)
    except WorkbenchError as exc:
        problems.append(f"model: {exc}")
        return None
    return scale


def _check_data(config: RecipeConfig, scale: int | None, problems: list[str]) -> None:
    from workbench.data.training import sample_images_dir
    from workbench.stages.utils import training_files

    for i, source in enumerate(config.data.train):
        path = f"data.train[{i}]"
        try:
            if source.layout == "samples":
                sample_images_dir()
            elif scale is not None and Path(source.root).is_dir():
                training_files([source], scale=scale, with_lr_only=True)
        except WorkbenchError as exc:
            problems.append(f"{path}: {exc}")
    from workbench.data import benchmark

    embedded = [s.lower() for s in getattr(benchmark, "EMBEDDED_SETS", ("Set5",))]
    root = config.data.val.root
    for i, name in enumerate(config.data.val.sets):
        if root is not None and (Path(root) / name).is_dir():
            continue
        if Path(name).expanduser().is_dir() or (root is None and name.lower() in embedded):
            continue
        where = f" under {root}" if root else ""
        problems.append(f"data.val.sets[{i}]: no data set {_show(name)}{where} (embedded: "
                        f"{', '.join(getattr(benchmark, 'EMBEDDED_SETS', ('Set5',)))})")


def _eval_refs(config: RecipeConfig, plans: Sequence[StagePlan]) -> list[tuple[str, str | None]]:
    """Every (set, root) the recipe evaluates or validates on: data.val.sets and, per stage, a
    ``sets`` list, a ``set`` or an ``eval_set`` field (found in the stage's ``root`` when it has
    one, else in data.val.root). Stage types added later are covered when they name their sets
    with these fields."""
    val = config.data.val
    refs = [(name, val.root) for name in val.sets]
    for plan in plans:
        cfg = plan.config
        own_root = getattr(cfg, "root", None)
        root = own_root if isinstance(own_root, str) else val.root
        names = [n for n in (getattr(cfg, "sets", None) or []) if isinstance(n, str)]
        names += [v for v in (getattr(cfg, "set", None), getattr(cfg, "eval_set", None)) if isinstance(v, str)]
        refs += [(name, root) for name in names]
    return list(dict.fromkeys(refs))


def _train_refs(config: RecipeConfig, plans: Sequence[StagePlan]) -> list[tuple[str, Any]]:
    """(YAML path, source) of every training source: data.train and the stages' own ``data``."""
    refs = [(f"data.train[{i}]", s) for i, s in enumerate(config.data.train)]
    for plan in plans:
        sources = getattr(plan.config, "data", None)
        if isinstance(sources, list):
            refs += [(f"{plan.label}.data[{i}]", s) for i, s in enumerate(sources)]
    return refs


def _check_leakage(config: RecipeConfig, plans: Sequence[StagePlan], scale: int,
                   problems: list[str]) -> None:
    """A training image that copies an image of an evaluation or validation set is a problem
    (``data.leakage: error``) or a logged warning (``warn``); see :mod:`workbench.data.leakage`."""
    import logging

    from workbench.data.leakage import SignatureCache, check_leakage, default_cache_path, leak_message, set_hr_files
    from workbench.stages.utils import training_files

    if config.data.leakage == "off":
        return
    trains = _train_refs(config, plans)
    if not trains:
        return
    eval_files: list[Path] = []
    for name, root in _eval_refs(config, plans):
        try:
            eval_files += set_hr_files(name, scale, data_root=root)
        except WorkbenchError:
            continue  # a set that does not resolve is reported where the set is used
    if not eval_files:
        return
    with SignatureCache(default_cache_path()) as cache:
        for path, source in trains:
            try:
                hr = training_files([source], scale=scale, with_lr_only=True)[0]
            except WorkbenchError:
                continue  # reported by the data checks
            matches = check_leakage(hr, eval_files, cache=cache)
            if not matches:
                continue
            remedy = "training on it anyway (data.leakage: warn)" if config.data.leakage == "warn" else None
            message = f"{path}: {leak_message(matches, remedy=remedy)}"
            if config.data.leakage == "error":
                problems.append(message)
            else:
                logging.getLogger("workbench.recipes").warning("warning: %s", message)


# -- the loader ---------------------------------------------------------------------------------

def parse_recipe(raw: Any, *, source: object = "recipe", smoke: bool = False,
                 overrides: Sequence[str] = (), check_paths: bool = True,
                 path: Path | None = None) -> Recipe:
    """Validate an already-parsed recipe mapping; raise :class:`RecipeError` listing every problem."""
    from workbench.stages.registry import all_stages

    if not isinstance(raw, Mapping):
        raise RecipeError(source, [f"a recipe must be a mapping with model, data and stages; got {_show(raw)}"])
    raw = copy.deepcopy(dict(raw))
    problems: list[str] = []

    # 1. smoke overrides (the top-level mapping, then each stage's own)
    top_smoke = raw.pop("smoke", None)
    if top_smoke is not None and not isinstance(top_smoke, Mapping):
        problems.append(f"smoke: must be a mapping of overrides, got {_show(top_smoke)}")
        top_smoke = None
    if smoke and top_smoke:
        if "stages" in top_smoke:
            problems.append("smoke.stages: put stage overrides in each stage's own smoke: mapping")
        raw = deep_merge(raw, {k: v for k, v in top_smoke.items() if k != "stages"})
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        problems.append("stages: required, a non-empty list of {id, stage, ...} mappings")
        stages_raw = []
    merged_stages = []
    for i, entry in enumerate(stages_raw):
        if isinstance(entry, Mapping):
            entry = dict(entry)
            stage_smoke = entry.pop("smoke", None)
            if stage_smoke is not None and not isinstance(stage_smoke, Mapping):
                problems.append(f"stages[{i}].smoke: must be a mapping of overrides, got {_show(stage_smoke)}")
            elif smoke and stage_smoke:
                entry = deep_merge(entry, stage_smoke)
        merged_stages.append(entry)
    raw["stages"] = merged_stages

    # 2. --set overrides
    problems += apply_overrides(raw, overrides)

    # 3. top level
    _CHECK_PATHS[0] = check_paths
    try:
        config = build_dataclass(RecipeConfig, raw, "", problems, ignore=TOP_KEYS_EXTRA)
        scale = None
        if config is _INVALID and "model" in raw:
            _model_scale(raw["model"], problems, check_paths=check_paths)
        if config is not _INVALID:
            model_scale = _model_scale(config.model, problems, check_paths=check_paths)
            if config.scale is not None and model_scale is not None and config.scale != model_scale:
                problems.append(f"scale: {config.scale} contradicts the model {_show(config.model)} (x{model_scale})")
            scale = config.scale or model_scale
            if scale is not None and config.scale is None:
                config = dataclasses.replace(config, scale=scale)
            if scale is None and isinstance(config.model, Mapping):
                problems.append("scale: required when the model is given as widths")
            if check_paths and not any("data." in p for p in problems):
                _check_data(config, scale, problems)

        # 4. stages
        registry = all_stages()
        plans: list[StagePlan] = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(merged_stages):
            if not isinstance(entry, Mapping):
                problems.append(f"stages[{i}]: must be a mapping with id and stage, got {_show(entry)}")
                continue
            sid, stype = entry.get("id"), entry.get("stage")
            label = f"stages[{i}] ({sid})" if isinstance(sid, str) else f"stages[{i}]"
            if not isinstance(sid, str) or not ID_PATTERN.fullmatch(sid):
                problems.append(f"{label}.id: required, letters, digits, '_', '-' or '.', got {_show(sid)}")
            elif sid in seen:
                problems.append(f"{label}.id: duplicate id {sid!r} (also stages[{seen[sid]}])")
            else:
                seen[sid] = i
            if stype not in registry:
                problems.append(f"{label}.stage: unknown stage type {_show(stype)}"
                                f"{_did_you_mean(str(stype), registry)}; known: {', '.join(sorted(registry))}")
                continue
            stage_type = registry[stype]
            cfg = build_dataclass(stage_type.config, entry, label, problems, ignore=STAGE_KEYS)
            if cfg is _INVALID:
                continue
            check_in = getattr(cfg, "validate_in", None)
            if callable(check_in) and config is not _INVALID:
                for message in check_in(config) or []:
                    problems.append(_attach(label, message, [f.name for f in dataclasses.fields(cfg)]))
            resolved = {"id": sid, "stage": stype, **to_plain(cfg)}
            plans.append(StagePlan(index=i, id=str(sid), type=stype, config=cfg, resolved=resolved))
        if check_paths and not problems and config is not _INVALID and scale is not None:
            _check_leakage(config, plans, int(scale), problems)
    finally:
        _CHECK_PATHS[0] = True

    if problems:
        raise RecipeError(source, problems)
    resolved_top = to_plain(config)
    resolved_top["scale"] = scale
    resolved = {**resolved_top, "smoke": smoke, "stages": [p.resolved for p in plans]}
    text = yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, width=100)
    return Recipe(path=path, config=config, stages=plans, scale=int(scale), smoke=smoke,
                  resolved=resolved, text=text, sha256=hashlib.sha256(text.encode()).hexdigest())


def load_recipe(path: str | Path, *, smoke: bool = False, overrides: Sequence[str] = (),
                check_paths: bool = True) -> Recipe:
    """Read and validate a recipe file (see the module docstring); raise RecipeError (exit 2)."""
    path = Path(path)
    if path.is_dir():
        raise WorkbenchError(f"{path}: is a folder; a recipe is a YAML file (e.g. recipes/ntire22.yaml)")
    if not path.is_file():
        raise WorkbenchError(f"{path}: no such recipe file")
    try:
        raw = safe_yaml_load(path.read_text())
    except YAMLBudgetError as exc:
        raise WorkbenchError(f"{path}: {exc}") from None
    except RecursionError:
        raise WorkbenchError(f"{path}: values nested too deeply to read") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise WorkbenchError(f"{path}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkbenchError(f"{path}: cannot read the recipe ({exc})") from None
    return parse_recipe(raw, source=path, smoke=smoke, overrides=overrides, check_paths=check_paths,
                        path=path)


def describe_stage_types() -> str:
    """Every registered stage type with its fields, defaults and help (for `validate --explain`)."""
    from workbench.stages.registry import all_stages

    lines = []
    for name, st in sorted(all_stages().items()):
        lines.append(f"{name}: {st.help}")
        for f in dataclasses.fields(st.config):
            default = (f.default if f.default is not dataclasses.MISSING else
                       (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"))
            rules = ", ".join(f"{k} {v}" for k, v in f.metadata.items() if k in ("min", "max", "gt", "lt", "choices"))
            helptext = f.metadata.get("help", "")
            lines.append(f"    {f.name} = {default!r}  {helptext}" + (f" [{rules}]" if rules else ""))
    return "\n".join(lines)
