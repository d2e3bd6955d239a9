"""The public API's plumbing: one thin function per concept that the CLI otherwise wires up.

``import workbench`` does not import this module; ``workbench.evaluate`` (and the others) do, on
first use. Each function takes a model as an ``nn.Module`` (one a family built, e.g.
``load_model(...).model``), an :class:`~workbench.models.artifacts.Artifact` or a model REF
string (``rlfn_s_x4``, an artifact folder, a ``.pth``: what :func:`load_model` takes), calls the
same internals as the matching command with the same defaults (taken from their source: the
stage configs, the settings classes, the measuring functions), and returns what those return.

    >>> import workbench
    >>> workbench.evaluate("rlfn_s_x4")["Set5"].mean["psnr_y"]          # doctest: +SKIP
    32.2395...
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

from torch import nn

from workbench.data.benchmark import EMBEDDED_SETS
from workbench.measure.profiling import compare_latency, compare_models
from workbench.measure.timing import DEFAULT_REPEATS, DEFAULT_WARMUP
from workbench.models.artifacts import Artifact, load_model
from workbench.prune.sensitivity import analyze
from workbench.search.study import SearchJob
from workbench.stages.prune import SensitivityConfig
from workbench.stages.search import SearchStageConfig

if TYPE_CHECKING:  # pragma: no cover
    from workbench.measure.evaluate import SetResult
    from workbench.prune.sensitivity import SensitivityResult
    from workbench.search.latency import LatencySettings
    from workbench.search.objective import FinetuneSettings
    from workbench.search.space import SearchSpace

__all__ = ["evaluate", "profile", "sensitivity", "search_widths"]

ModelLike = Union[nn.Module, Artifact, str, os.PathLike]

_SENSITIVITY = SensitivityConfig()   # the `sensitivity` stage and command defaults
_SEARCH = SearchStageConfig()        # the `search` stage and command defaults


def _default(fn: Any, name: str) -> Any:
    """The default of parameter ``name`` of ``fn``: one source, not a copy."""
    return inspect.signature(fn).parameters[name].default


def _artifact(model: ModelLike) -> Artifact:
    """An Artifact for a model, an artifact or a REF string (loaded with load_model)."""
    if isinstance(model, Artifact):
        return model
    if isinstance(model, nn.Module):
        return Artifact(model=model, spec=getattr(model, "spec", None), path=None)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TypeError(f"expected an nn.Module, an Artifact or a model REF string, got "
                    f"{type(model).__name__}")


def _family_artifact(model: ModelLike, what: str) -> Artifact:
    """:func:`_artifact` for a call that needs the model's family (its ``.spec``)."""
    art = _artifact(model)
    if art.spec is None:
        raise TypeError(f"{what} needs a model a family built (it has a .spec); register "
                        "yours with workbench.register_family(workbench.module_family(...))")
    return art


def _scale(art: Artifact) -> int:
    scale = getattr(art.spec, "scale", None) or getattr(art.model, "scale", None)
    if not isinstance(scale, int):
        raise TypeError("the model has no scale (no family spec and no integer .scale): pass scale=")
    return scale


def evaluate(model: ModelLike, sets: Iterable[str | os.PathLike] = EMBEDDED_SETS, *,
             scale: int | None = None, data_root: str | os.PathLike | None = None,
             device: str | None = None, deploy: str | None = None,
             save_dir: str | os.PathLike | None = None,
             progress: bool = True) -> dict[str, SetResult]:
    """PSNR-Y/SSIM-Y (paper protocol) and RGB PSNR per image and per set, as ``workbench eval``.

    ``sets`` are names under ``data_root`` or set folders (default: the embedded Set5);
    ``scale`` defaults to the model's; ``device`` None picks CUDA when available; ``deploy``
    scores the model as :func:`workbench.measure.deploy.prepare` deploys it in that mode.
    Returns set name -> :class:`~workbench.measure.evaluate.SetResult` (``.mean``, ``.images``).

    Example::

        res = workbench.evaluate("rlfn_s_x4", ["Set5", "Set14"], data_root="../shared/data")
        print(res["Set14"].mean["psnr_y"])
    """
    from workbench.measure.evaluate import evaluate as evaluate_sets, resolve_device

    art = _artifact(model)
    dev = resolve_device(device)
    net = art.model
    if deploy is not None:
        from workbench.measure.deploy import check_mode, prepare

        check_mode(deploy, dev)
        net = prepare(net, device=dev, mode=deploy, example_shape=None)
    return evaluate_sets(net, sets, scale=scale or _scale(art), data_root=data_root, device=dev,
                         save_dir=save_dir, progress=progress)


def _named(models: ModelLike | Sequence[ModelLike] | Mapping[str, ModelLike]) -> dict[str, Artifact]:
    """name -> Artifact; names: a mapping's keys, a REF itself, else model1, model2 ..."""
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        many = isinstance(models, Sequence) and not isinstance(models, str)
        items = [(str(m) if isinstance(m, (str, os.PathLike)) else f"model{i}", m)
                 for i, m in enumerate(models if many else [models], start=1)]
    out: dict[str, Artifact] = {}
    for name, m in items:
        label, n = str(name), 2
        while label in out:
            label, n = f"{name}#{n}", n + 1
        out[label] = _artifact(m)
    if not out:
        raise ValueError("profile: no models given")
    return out


def profile(models: ModelLike | Sequence[ModelLike] | Mapping[str, ModelLike],
            modes: Sequence[str] | None = None, *,
            input_shape: Sequence[int] = _default(compare_latency, "input_shape"),
            device: str | None = None, repeats: int = DEFAULT_REPEATS,
            warmup: int = DEFAULT_WARMUP, threads: int | None = None,
            clock: str = _default(compare_latency, "clock"),
            progress: bool = False) -> list[dict[str, Any]]:
    """Every (model, deploy mode) pair timed interleaved in one run, as ``workbench profile
    --model A B ... --deploy M1 M2 ...``.

    ``models``: one model, a list (named by their REF, else ``model1``, ``model2`` ...) or a
    mapping name -> model. ``modes`` default to the device's fastest fp32 mode for the first model
    (:func:`workbench.measure.deploy.default_mode`). One row per pair, in order, named
    ``"<name> [<mode>]"``: latency (``median_ms``, ``p90_ms`` ...), ``ratio`` (median per-round
    latency ratio to the first row, which is 1.0; ``ratio_p10``/``ratio_p90``), ``deploy_mode``,
    the NTIRE ``counts`` for ``input_shape`` and the conditions (device, threads, torch).

    Example::

        rows = workbench.profile({"full": "rlfn_s_x4", "ntire": "rlfn_ntire_x4"}, ["fused", "bf16"])
        for r in rows:
            print(r["name"], f"{r['median_ms']:.1f} ms", f"{r['ratio']:.3f}x")
    """
    from workbench.measure.evaluate import resolve_device

    arts = _named(models)
    rows = compare_models({label: art.model for label, art in arts.items()}, modes,
                          input_shape=input_shape, device=resolve_device(device), rounds=repeats,
                          warmup=warmup, threads=threads, clock=clock, progress=progress)
    for row in rows:
        row["model"] = row["label"]
    return rows


def sensitivity(model: ModelLike, *, set: str | os.PathLike = EMBEDDED_SETS[0],
                data_root: str | os.PathLike | None = None,
                ratios: Sequence[float] = tuple(_SENSITIVITY.ratios),
                criterion: str = _SENSITIVITY.criterion, groups: Iterable[str] | None = None,
                latency: bool = _SENSITIVITY.latency,
                latency_shape: Sequence[int] = tuple(_SENSITIVITY.latency_shape),
                latency_repeats: int = _SENSITIVITY.latency_repeats, deploy: str | None = None,
                device: str = _default(analyze, "device"), out_dir: str | os.PathLike | None = None,
                plots: bool = _SENSITIVITY.plots, progress: bool = True) -> SensitivityResult:
    """One-shot pruning sensitivity of every channel group, as ``workbench sensitivity``.

    Each group (``groups``: shell patterns, default all) is pruned by ``ratios`` of its width
    (lowest ``criterion`` importance first) with no retraining and scored (PSNR-Y) on ``set``
    (default the embedded Set5); ``latency`` also times every cut against the unpruned model in
    ``deploy`` mode. With ``out_dir`` the tables, plots and TensorBoard events are written there
    too. Returns a :class:`~workbench.prune.sensitivity.SensitivityResult`: ``rows`` (one per
    group and ratio: ``psnr_drop``, ``params_saved`` ...), ``ranking`` (most redundant first),
    ``baseline``.

    Example::

        res = workbench.sensitivity("rlfn_s_x4", ratios=[0.25, 0.5], criterion="l1")
        print(res.ranking[0]["group"], res.ranking[0]["mean_drop"])
    """
    from workbench.data.benchmark import load_set
    from workbench.prune.sensitivity import write_outputs

    art = _family_artifact(model, "sensitivity")
    pset = load_set(set, art.spec.scale, data_root=Path(data_root) if data_root is not None else None)
    name = art.name if art.path is not None else str(art.lineage.get("name", "model"))
    result = analyze(art.model, pset, ratios=ratios, criterion=criterion, groups=groups,
                     latency=latency, latency_shape=latency_shape, latency_repeats=latency_repeats,
                     deploy=deploy, device=device, progress=progress, model_name=name)
    if out_dir is not None:
        write_outputs(result, out_dir, plots=plots)
    return result


def _settings(cls: type, value: Any, **defaults: Any) -> Any:
    """``value`` if it is a ``cls`` already, else ``cls(**defaults, **value)``."""
    if isinstance(value, cls):
        return value
    return cls(**{**defaults, **dict(value or {})})


def search_widths(model: ModelLike, space: Mapping[str, Any] | Sequence[str] | SearchSpace | None = None,
           *, out_dir: str | os.PathLike, trials: int = _SEARCH.trials,
           objective: str = _SEARCH.objective, psnr_drop: float | None = None,
           psnr_min: float | None = None, latency_budget_ms: float | None = None,
           latency_ratio: float | None = None,
           per_block: bool = _SEARCH.per_block,
           finetune: FinetuneSettings | Mapping[str, Any] | None = None,
           latency: LatencySettings | Mapping[str, Any] | None = None,
           device: str = SearchJob.device, workers: int = _SEARCH.workers,
           compare_rounds: int = _SEARCH.compare_rounds, leakage: str | None = None,
           **job: Any) -> dict[str, Any]:
    """Latency-aware width search (Optuna), as ``workbench search``; writes into ``out_dir``.

    ``space`` maps dimensions to ``"LOW:HIGH[:STEP]"`` ranges (RLFN: ``trunk``, ``mid``, ``esa``,
    ``blocks``; any family: ``"group:NAME"`` or a pattern such as ``"block*.mid1"``); default the
    ``search`` stage's. ``finetune`` and ``latency`` are
    :class:`~workbench.search.objective.FinetuneSettings` /
    :class:`~workbench.search.settings.LatencySettings` or dicts of their fields; a family
    registered in this script only needs ``latency={"isolate": False}`` (the latency worker
    process cannot import it). The other keywords of :class:`~workbench.search.study.SearchJob`
    (``eval_set``, ``data_root``, ``train_data``, ``sampler``, ``criterion``, ``seed``,
    ``progress`` ...) pass through. A model that is not a REF string is saved as an artifact
    under ``out_dir`` (``parent-<weights hash>``) for the trials to load. With fine-tuning the
    training images are checked against the validation set first (``leakage``: error, the
    default, warn or off). Rerunning with the same ``out_dir`` resumes the study. Returns the
    summary: ``summary["best"]`` holds the selected ``config``, ``psnr_y``, ``latency_ms`` and
    its ``artifact`` folder; ``summary["front"]`` the Pareto front.

    Example::

        s = workbench.search_widths("rlfn_s_x4", {"trunk": "40:48:8", "mid": "32:48:8"}, trials=8,
                                    out_dir="runs/my-search", psnr_drop=0.1)
        print(s["best"]["config"], s["best"]["artifact"])
    """
    from workbench.data.leakage import guard_folder
    from workbench.models.artifacts import make_lineage, save_artifact, state_digest
    from workbench.recipes.schema import DataConfig
    from workbench.search.latency import LatencySettings
    from workbench.search.objective import FinetuneSettings, ObjectiveConfig
    from workbench.search.space import SearchSpace
    from workbench.search.study import run_search

    if not isinstance(space, SearchSpace):
        space = SearchSpace.from_strings(_SEARCH.space if space is None else space,
                                         per_block=per_block)
    ft = _settings(FinetuneSettings, finetune)
    lat = _settings(LatencySettings, latency, device=device)
    if ft.iterations > 0:
        guard_folder(job.get("train_data"), job.get("eval_set", SearchJob.eval_set),
                     data_root=job.get("data_root"), policy=leakage or DataConfig().leakage,
                     error_remedy="remove it from train_data or pass leakage='warn' to proceed anyway",
                     warn_remedy="training on it anyway (leakage='warn')")
    if isinstance(model, (str, os.PathLike)):
        parent = str(model)
    else:
        art = _family_artifact(model, "search")
        path = Path(out_dir) / f"parent-{state_digest(art.model)[:12]}"
        if not path.exists():
            save_artifact(path, art.model, lineage=make_lineage(
                parent=art if art.path is not None else art.lineage.get("name"), stage="api.search",
                device=device))
        parent = str(path)
    search_job = SearchJob(
        parent=parent, out_dir=str(out_dir), n_trials=trials, space=space,
        objective=ObjectiveConfig(objective=objective, latency_budget_ms=latency_budget_ms,
                                  latency_ratio=latency_ratio,
                                  psnr_min=psnr_min, psnr_drop=psnr_drop),
        finetune=ft, latency=lat, device=device, **job)
    return run_search(search_job, workers=workers, compare_rounds=compare_rounds)
