"""One-shot sensitivity analysis: how much PSNR each channel group loses when pruned, untrained.

For every group and every ratio, the group's lowest-importance channels (``ratio`` of its width,
coupled channels together) are removed physically with :func:`prune_to_widths`, and the pruned
model is scored (Y-PSNR, paper protocol) on a validation set without any retraining. Each row
records the PSNR drop, params and FLOPs (NTIRE counting) and, optionally, measured latency.

Latency is measured in a named deploy mode (default the device's fastest fp32 mode,
:func:`workbench.measure.deploy.default_mode`), each pruned model *interleaved with the unpruned
baseline* (A B A B ..., ``latency_repeats`` pairs): the per-pair ratio cancels the drift of a
shared machine, and its spread (median, p10-p90, IQR) says whether a saving is real.
:func:`write_outputs` draws the PSNR drop against the latency saved (``latency_tradeoff.png``; ``tradeoff.png`` against params, FLOPs and latency saved).

Cost: a prune changes the network only from the first layer whose weights change onwards, so the
activations in front of that layer are computed once per image from the unpruned model and reused
(:class:`ActivationCache`). For each block ``i`` three points are cached: the block input (for its
mid groups), the residual sum that enters ``c5`` (for ``trunk.i``) and ``c5``'s output that
enters ESA (for its ESA groups). Only the stem group ``trunk.0`` needs a full forward pass.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from workbench.core.errors import WorkbenchError
from workbench.models import group_widths
from workbench.models.rlfn import RLFN
from workbench.prune.groups import expected_groups, select_groups
from workbench.prune.importance import DEFAULT_CRITERION, get_importance, group_scores, lowest
from workbench.prune.surgery import prune_to_widths

DEFAULT_RATIOS = (0.1, 0.25, 0.5, 0.75, 0.9)
#: Latency columns of a row (None when latency is not measured).
LATENCY_FIELDS = ("latency_ms", "latency_ratio", "latency_ratio_p10", "latency_ratio_p90",
                  "latency_ratio_iqr", "latency_saved_pct")


# -- partial forward passes -----------------------------------------------------------------

def start_point(group: str) -> tuple[str, int]:
    """Where the first changed weight of a pruned ``group`` sits: (cache point, block index).

    ``('input', 0)`` means the whole network (the stem group changes conv_1).
    """
    if group == "trunk.0":
        return "input", 0
    if group.startswith("trunk."):
        return "res", int(group.split(".")[1])
    head, _, rest = group.partition(".")
    block = int(head[len("block"):])
    return ("esa" if rest.startswith("esa.") else "in"), block


def forward_from(model: RLFN, point: tuple[str, int], cached: torch.Tensor,
                 feature: torch.Tensor) -> torch.Tensor:
    """Finish RLFN's forward pass from a cached activation.

    ``point`` is ``('in', i)`` (block i's input), ``('res', i)`` (the residual sum entering block
    i's c5) or ``('esa', i)`` (c5's output entering ESA); ``feature`` is conv_1's output (the long
    skip). Mirrors :meth:`RLFN.forward` (a test holds the two equal).
    """
    kind, index = point
    blocks = model.blocks()
    block = blocks[index - 1]
    if kind == "in":
        out = block(cached)
    elif kind == "res":
        out = block.esa(block.c5(cached))
    elif kind == "esa":
        out = block.esa(cached)
    else:
        raise ValueError(f"unknown cache point {point!r}")
    for later in blocks[index:]:
        out = later(out)
    return model.upsampler(model.conv_2(out) + feature)


def activation_at(model: RLFN, x: torch.Tensor, point: tuple[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(activation at ``point``, conv_1's output) of ``model`` on input ``x``: what
    :func:`forward_from` needs to finish the pass from there."""
    feature = model.conv_1(x)
    out = feature
    kind, index = point
    for i, block in enumerate(model.blocks(), start=1):
        if i == index and kind == "in":
            return out, feature
        h = block.act(block.c1_r(out))
        h = block.act(block.c2_r(h))
        h = block.act(block.c3_r(h)) + out
        if i == index and kind == "res":
            return h, feature
        h = block.c5(h)
        if i == index and kind == "esa":
            return h, feature
        out = block.esa(h)
    raise ValueError(f"no cache point {point!r} in a {model.spec.num_blocks}-block model")


@dataclass
class _ImageCache:
    name: str
    lr: torch.Tensor
    hr_y: np.ndarray
    feature: torch.Tensor
    points: dict[tuple[str, int], torch.Tensor]


class ActivationCache:
    """Per-image activations of the unpruned model at every cache point (see module docstring).

    Memory: three feature maps per block per image (about 10 MB per block for a 52-channel
    128x128 LR image); Set5 at x4 needs a few hundred MB for rlfn_x4.
    """

    def __init__(self, model: RLFN, pairs: Sequence[Any], *, scale: int,
                 device: torch.device, keep_points: bool = True) -> None:
        from workbench.measure.evaluate import image_to_tensor
        from workbench.measure.metrics import rgb_to_y
        from workbench.models.family import model_input

        self.scale = scale
        # the cache points are RLFN's; other families are scored by full forward passes
        keep_points = keep_points and isinstance(model, RLFN)
        self.images: list[_ImageCache] = []
        model.eval()
        with torch.inference_mode():
            for pair in pairs:
                # cached on the model's input range (x/255 for [0,1] families)
                lr = model_input(model, image_to_tensor(np.asarray(pair.lr), device))
                hr = np.asarray(pair.hr)[:lr.shape[2] * scale, :lr.shape[3] * scale]
                points: dict[tuple[str, int], torch.Tensor] = {}
                feature = model.conv_1(lr) if keep_points else lr[:, :0]
                out = feature
                for i, block in enumerate(model.blocks() if keep_points else [], start=1):
                    points[("in", i)] = out
                    h = block.act(block.c1_r(out))
                    h = block.act(block.c2_r(h))
                    h = block.act(block.c3_r(h)) + out
                    points[("res", i)] = h
                    h = block.c5(h)
                    points[("esa", i)] = h
                    out = block.esa(h)
                self.images.append(_ImageCache(str(pair.name), lr, rgb_to_y(hr), feature, points))

    def psnr(self, model: RLFN, group: str | None) -> float:
        """Mean Y-PSNR of ``model`` over the cached images, recomputing only from where
        ``group``'s prune changed weights (``None`` or caching off: a full forward pass)."""
        from workbench.measure.evaluate import tensor_to_image
        from workbench.measure.metrics import psnr, rgb_to_y
        from workbench.models.family import model_output

        point = (start_point(group) if group is not None and isinstance(model, RLFN)
                 else ("input", 0))
        values = []
        model.eval()
        with torch.inference_mode():
            for img in self.images:
                if point[0] == "input" or point not in img.points:
                    out = model(img.lr)
                else:
                    out = forward_from(model, point, img.points[point], img.feature)
                sr_y = rgb_to_y(tensor_to_image(model_output(model, out)))
                values.append(psnr(sr_y, img.hr_y, border=self.scale))
        return float(np.mean(values))


# -- the analysis -----------------------------------------------------------------------------

def channels_to_remove(width: int, ratio: float) -> int:
    """round(ratio * width), at least 1 and leaving at least 1 channel."""
    if not 0.0 < ratio < 1.0:
        raise WorkbenchError(f"pruning ratio must be in (0, 1), got {ratio}")
    return min(width - 1, max(1, int(math.floor(ratio * width + 0.5))))


def _shape_key(model: torch.nn.Module) -> tuple:
    """Multiset of (conv role, weight shape); the role (c1_r, esa.conv2, ...) fixes the
    resolution a conv runs at, so models with equal keys run the same convolutions on the same
    sizes: equal FLOPs, params and (up to noise) latency. Pruning mid1 of block 2 or of block 5
    by the same amount gives equal keys, so each is counted and timed once."""
    return tuple(sorted((name.rsplit(".", 1)[-1] if not name.startswith("block_") else
                         name.split(".", 1)[1], tuple(m.weight.shape))
                        for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)))


def _conv_out_hw(name: str, h: int, w: int) -> tuple[int, int]:
    """Output size of an RLFN conv from its role: ESA's conv2 (3x3, stride 2, no padding) and
    conv3 (after a 7x7/3 max-pool) run small; everything else at the LR size."""
    if name.endswith("esa.conv2") or name.endswith("esa.conv3"):
        h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        if name.endswith("esa.conv2"):
            return h2, w2
        return (h2 - 7) // 3 + 1, (w2 - 7) // 3 + 1
    return h, w


def fast_counts(model: RLFN, *, input_shape: Sequence[int] = (1, 3, 256, 256)) -> dict[str, Any]:
    """Params and FLOPs (G) of an RLFN computed from its conv shapes, counted the NTIRE way
    (conv multiply-accumulates plus one per LeakyReLU output element), without a forward pass.

    :func:`analyze` checks it against :func:`workbench.measure.profiling.ntire_counts` on the unpruned
    model and uses the slower ntire_counts throughout if they ever disagree.
    """
    n, _, h, w = (int(v) for v in input_shape)
    macs = 0
    for name, conv in model.named_modules():
        if isinstance(conv, torch.nn.Conv2d):
            oh, ow = _conv_out_hw(name, h, w)
            kh, kw = conv.kernel_size
            macs += n * oh * ow * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw
    lrelu = sum(n * h * w * (b.c1_r.out_channels + b.c2_r.out_channels + b.c3_r.out_channels)
                for b in model.blocks())
    return {"params": int(sum(p.numel() for p in model.parameters())),
            "flops_g": (macs + lrelu) / 1e9}


@dataclass
class SensitivityResult:
    """Everything an analysis produced: the baseline, one row per (group, ratio), the ranking."""

    model: str
    spec: dict[str, Any]
    set_name: str
    criterion: str
    ratios: list[float]
    baseline: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    deploy_mode: str | None = None      # the mode latency was measured in (None: not measured)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rank_groups(rows: Sequence[dict[str, Any]], ratios: Sequence[float]) -> list[dict[str, Any]]:
    """One entry per group, most redundant first: ordered by mean PSNR drop over the ratios."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)
    ranking = []
    for name, group_rows in by_group.items():
        drops = {f"drop@{r['ratio']:g}": r["psnr_drop"] for r in group_rows}
        half = min(group_rows, key=lambda r: abs(r["ratio"] - 0.5))
        ranking.append({"group": name, "kind": group_rows[0]["kind"],
                        "block": group_rows[0]["block"], "width": group_rows[0]["width"],
                        "mean_drop": float(np.mean([r["psnr_drop"] for r in group_rows])),
                        **drops,
                        "params_saved@0.5": half["params_saved"],
                        "gflops_saved@0.5": half["gflops_saved"],
                        **({"latency_saved_pct@0.5": half["latency_saved_pct"]}
                           if half.get("latency_saved_pct") is not None else {})})
    ranking.sort(key=lambda r: (r["mean_drop"], r["group"]))
    for i, r in enumerate(ranking, start=1):
        r["rank"] = i
    return [{"rank": r.pop("rank"), **r} for r in ranking]


def analyze(model: RLFN, pset: Any, *, ratios: Sequence[float] = DEFAULT_RATIOS,
            criterion: str = DEFAULT_CRITERION, groups: Iterable[str] | None = None,
            latency: bool = False, latency_shape: Sequence[int] = (1, 3, 128, 128),
            latency_repeats: int = 5, deploy: str | None = None,
            device: str | torch.device = "cpu",
            use_cache: bool = True, progress: bool = True, model_name: str = "model",
            on_row: Callable[[dict[str, Any]], None] | None = None) -> SensitivityResult:
    """Prune each selected group at each ratio one-shot and score it on ``pset`` (no retraining).

    ``groups`` are shell patterns (None = every group). ``use_cache=False`` recomputes every
    forward pass from the input (the benchmark's reference). ``latency`` measures each pruned
    model on a random ``latency_shape`` input (median of ``latency_repeats``; models that run the
    same convolutions share one measurement). ``on_row`` is called with each row as it is made.

    Latency: each distinct pruned model is prepared in deploy mode ``deploy`` (default
    :func:`workbench.measure.deploy.default_mode`) and timed in ``latency_repeats`` interleaved pairs
    with the baseline (A B A B ...); a row holds the candidate's median ``latency_ms``, the
    median per-pair ``latency_ratio`` with its p10/p90/IQR, and ``latency_saved_pct``.
    """
    from workbench.core.progress import tqdm

    from workbench.measure.evaluate import resolve_device
    from workbench.measure.profiling import ntire_counts
    from workbench.measure.timing import interleaved_times, round_ratios, spread

    dev = resolve_device(device)
    get_importance(criterion)  # an unknown name fails before any work
    ratios = sorted({float(r) for r in ratios})
    for r in ratios:
        channels_to_remove(2, r)  # validates the range
    spec = model.spec
    scale = spec.scale
    pairs = list(getattr(pset, "pairs", pset))
    if not pairs:
        raise WorkbenchError(f"{getattr(pset, 'name', 'validation set')}: no images")
    names = select_groups(spec, groups)
    widths = group_widths(spec)
    ginfo = expected_groups(spec)
    model = model.to(dev).eval()
    t0 = time.perf_counter()
    cache = ActivationCache(model, pairs, scale=scale, device=dev, keep_points=use_cache)
    base_psnr = cache.psnr(model, None)
    base_counts = ntire_counts(model)
    quick = fast_counts(model) if isinstance(model, RLFN) else {}
    counter = fast_counts if (quick.get("params") == base_counts["params"] and
                              abs(quick.get("flops_g", -1) - base_counts["flops_g"]) < 1e-9) else ntire_counts
    latency_memo: dict[tuple, dict[str, Any]] = {}
    counts_memo: dict[tuple, dict[str, Any]] = {}
    mode = None
    base_times: list[float] = []
    if latency:
        from workbench.measure.deploy import check_mode, default_mode, fresh_compile, prepare

        if latency_repeats < 1:
            raise WorkbenchError(f"latency_repeats must be >= 1, got {latency_repeats}")
        mode = deploy or default_mode(dev, model)
        check_mode(mode, dev)
        if mode == "compile":  # the baseline stays compiled while every candidate compiles
            fresh_compile(limit=len(names) * len(ratios) + 16)
        shape = tuple(int(v) for v in latency_shape)
        x_lat = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255).to(dev)
        base_dep = prepare(model, device=dev, mode=mode, example_shape=shape)
        # the baseline's own figure when nothing else is measured: pairs with itself
        base_times = list(interleaved_times({"base": lambda: base_dep(x_lat)}, device=dev,
                                            rounds=latency_repeats, warmup=1)["base"])

    def lat(m: torch.nn.Module) -> dict[str, Any]:
        if not latency:
            return {"latency_ms": None}
        key = _shape_key(m)
        if key not in latency_memo:
            dep = prepare(m, device=dev, mode=mode, example_shape=shape)
            times = interleaved_times({"base": lambda: base_dep(x_lat), "cut": lambda: dep(x_lat)},
                                      device=dev, rounds=latency_repeats, warmup=1)
            base_times.extend(times["base"])
            ratio = spread(round_ratios(times, "base")["cut"])
            latency_memo[key] = {"latency_ms": spread(times["cut"])["median"],
                                 "latency_ratio": ratio["median"],
                                 "latency_ratio_p10": ratio["p10"],
                                 "latency_ratio_p90": ratio["p90"],
                                 "latency_ratio_iqr": ratio["iqr"],
                                 "latency_saved_pct": 100.0 * (1.0 - ratio["median"]),
                                 "latency_pairs": latency_repeats}
        return latency_memo[key]

    baseline = {"psnr_y": base_psnr, "params": base_counts["params"],
                "flops_g": base_counts["flops_g"],
                "latency_ms": spread(base_times)["median"] if latency else None,
                "latency_shape": list(latency_shape) if latency else None,
                "deploy_mode": mode}
    t_cache = time.perf_counter() - t0
    jobs = [(n, r) for n in names for r in ratios]
    rows: list[dict[str, Any]] = []
    t_prune = t_eval = 0.0
    memo: dict[tuple[str, int], dict[str, Any]] = {}
    scores: dict[str, torch.Tensor] = {}
    bar = tqdm(jobs, desc=f"sensitivity {model_name}", unit="prune", disable=not progress)
    for name, ratio in bar:
        width = widths[name]
        removed = channels_to_remove(width, ratio) if width > 1 else 0
        if removed == 0:
            continue
        key = (name, width - removed)
        if key not in memo:
            t1 = time.perf_counter()
            if name not in scores:  # one ranking per group serves every ratio
                scores[name] = group_scores(model, ginfo[name], criterion=criterion)
            drop = set(lowest(scores[name], removed))
            keep = [i for i in range(width) if i not in drop]
            pruned = prune_to_widths(model, {}, keep={name: keep})
            t2 = time.perf_counter()
            value = cache.psnr(pruned, name if use_cache else None)
            t_eval += time.perf_counter() - t2
            t_prune += t2 - t1
            skey = _shape_key(pruned)
            if skey not in counts_memo:
                counts_memo[skey] = counter(pruned)
            counts = counts_memo[skey]
            memo[key] = {"psnr_y": value, "params": counts["params"],
                         "flops_g": counts["flops_g"], **lat(pruned)}
        m = memo[key]
        row = {"group": name, "kind": ginfo[name].kind, "block": ginfo[name].block,
               "width": width, "ratio": ratio, "kept": width - removed, "removed": removed,
               "psnr_y": m["psnr_y"], "psnr_drop": base_psnr - m["psnr_y"],
               "params": m["params"], "params_saved": baseline["params"] - m["params"],
               "flops_g": m["flops_g"], "gflops_saved": baseline["flops_g"] - m["flops_g"],
               **{k: m.get(k) for k in LATENCY_FIELDS}}
        rows.append(row)
        bar.set_postfix_str(f"{name} {ratio:g}: {-row['psnr_drop']:+.3f} dB")
        if on_row is not None:
            on_row(row)
    bar.close()
    if latency:  # the baseline figure over every pair it was part of
        baseline["latency_ms"] = spread(base_times)["median"]
        baseline["latency_runs"] = len(base_times)
    timing = {"total_s": time.perf_counter() - t0, "cache_s": t_cache, "prune_s": t_prune,
              "eval_s": t_eval, "evaluations": len(memo), "cached": use_cache,
              "latency_measurements": len(latency_memo),
              "latency_pairs_per_model": latency_repeats if latency else 0,
              "counts": "ntire_counts" if counter is ntire_counts else "fast_counts (checked)"}
    return SensitivityResult(model=model_name, spec=spec.to_dict(),
                             set_name=str(getattr(pset, "name", "set")), criterion=criterion,
                             ratios=ratios, baseline=baseline, rows=rows,
                             ranking=rank_groups(rows, ratios), timing=timing, deploy_mode=mode)


# -- outputs ----------------------------------------------------------------------------------

ROW_FIELDS = ("group", "kind", "block", "width", "ratio", "kept", "removed", "psnr_y", "psnr_drop",
              "params", "params_saved", "flops_g", "gflops_saved") + LATENCY_FIELDS


def _csv_text(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else
                             (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row[k]))
                         for k in fields})
    return buf.getvalue()


def _plot_group(result: SensitivityResult, group: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r["group"] == group]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ax.plot([r["ratio"] for r in rows], [r["psnr_drop"] for r in rows], "o-", color="C0")
    for r in rows:
        ax.annotate(str(r["kept"]), (r["ratio"], r["psnr_drop"]), textcoords="offset points",
                    xytext=(0, 5), ha="center", fontsize=7, color="0.35")
    ax.set_xlabel("fraction of channels removed (labels: channels kept)")
    ax.set_ylabel("Y-PSNR drop (dB)")
    ax.set_title(f"{group} (width {rows[0]['width']}, {result.criterion}) on {result.set_name}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


KIND_ORDER = ("trunk", "mid1", "mid2", "esa.reduce", "esa.inner", "esa.fuse")


def _plot_overview(result: SensitivityResult):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), dpi=100, sharey=True)
    ymax = max([r["psnr_drop"] for r in result.rows] + [0.01])
    for ax, kind in zip(axes.flat, KIND_ORDER):
        groups = [g["group"] for g in sorted(result.ranking, key=lambda g: (g["block"], g["group"]))
                  if g["kind"] == kind]
        for j, group in enumerate(groups):
            rows = [r for r in result.rows if r["group"] == group]
            ax.plot([r["ratio"] for r in rows], [r["psnr_drop"] for r in rows], "o-", ms=3,
                    color=plt.cm.viridis(j / max(1, len(groups) - 1)), label=group)
        ax.set_title(kind, fontsize=10)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylim(-0.005, ymax * 1.5)
        ax.grid(alpha=0.3)
        if groups:
            ax.legend(fontsize=6, ncol=2)
    for ax in axes[1]:
        ax.set_xlabel("fraction of channels removed")
    for ax in axes[:, 0]:
        ax.set_ylabel("Y-PSNR drop (dB, symlog)")
    fig.suptitle(f"One-shot sensitivity of {result.model} ({result.criterion}, no retraining) on "
                 f"{result.set_name}; baseline {result.baseline['psnr_y']:.3f} dB")
    fig.tight_layout()
    return fig


def _tradeoff_axes(result: SensitivityResult) -> list[tuple[str, str, Any]]:
    """(row key, axis label, value) for each saving the rows can be plotted against."""
    axes = [("params_saved", "parameters saved", lambda r: r["params_saved"]),
            ("gflops_saved", "GFLOPs saved (NTIRE counting)", lambda r: r["gflops_saved"])]
    base_ms = result.baseline.get("latency_ms")
    if base_ms and all(r.get("latency_ms") is not None for r in result.rows):
        axes.append(("latency_saved", "latency saved (ms, measured)",
                     lambda r: base_ms - r["latency_ms"]))
    return axes


def _plot_tradeoff(result: SensitivityResult):
    """What each cut buys: PSNR drop against parameters, FLOPs and (when measured) latency saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = _tradeoff_axes(result)
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5.2 * len(axes_spec), 4.4), dpi=100,
                             sharey=True, squeeze=False, layout="constrained")
    colors = {k: f"C{i}" for i, k in enumerate(KIND_ORDER)}
    for ax, (_, label, value) in zip(axes[0], axes_spec):
        for group in dict.fromkeys(r["group"] for r in result.rows):
            rows = sorted((r for r in result.rows if r["group"] == group), key=lambda r: r["ratio"])
            ax.plot([value(r) for r in rows], [r["psnr_drop"] for r in rows], "o-", ms=3, lw=0.8,
                    alpha=0.8, color=colors.get(rows[0]["kind"], "0.5"))
        ax.set_xlabel(label)
        ax.axhline(0.0, color="0.3", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Y-PSNR drop (dB, no retraining)")
    handles = [plt.Line2D([], [], color=c, marker="o", ms=3) for c in colors.values()]
    fig.legend(handles, list(colors), fontsize=8, loc="outside right center")
    note = "" if len(axes_spec) == 3 else " (latency not measured: --latency adds it)"
    fig.suptitle(f"What each cut buys: {result.model} on {result.set_name}, one line per group, "
                 f"points at ratios {', '.join(f'{r:g}' for r in result.ratios)}{note}", fontsize=9)
    return fig


def _plot_ranking(result: SensitivityResult):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranking = result.ranking
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(ranking) + 1)), dpi=100)
    colors = {k: f"C{i}" for i, k in enumerate(KIND_ORDER)}
    ys = np.arange(len(ranking))[::-1]
    # a linear axis: a log axis makes 0.001 dB and 0.01 dB look a whole step apart
    ax.barh(ys, [r["mean_drop"] for r in ranking],
            color=[colors.get(r["kind"], "0.5") for r in ranking])
    ax.set_yticks(ys, [r["group"] for r in ranking], fontsize=7)
    ax.axvline(0.0, color="0.3", lw=0.6)
    ax.set_xlabel(f"mean Y-PSNR drop over ratios {', '.join(f'{r:g}' for r in result.ratios)} (dB)")
    ax.set_title("groups ranked, most redundant at the top", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def _frontier(points: Sequence[tuple[float, float, Any]]) -> list[Any]:
    """Items of (saved, drop, item) that no other point beats (more saved for no more drop)."""
    best: list[Any] = []
    lowest_drop = float("inf")
    for saved, drop, item in sorted(points, key=lambda p: (-p[0], p[1])):
        if drop < lowest_drop:
            best.append(item)
            lowest_drop = drop
    return best


def _plot_latency_tradeoff(result: SensitivityResult):
    """PSNR drop against latency saved: one point per (group, ratio), what each cut buys.

    Horizontal bars span the p10-p90 of the per-pair latency ratio; colours are group kinds.
    Only the cuts no other beats (more latency saved for no more PSNR lost) are labelled
    (``group->channels kept``), which keeps a 100-point plot readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r.get("latency_ratio") is not None]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    colors = {k: f"C{i}" for i, k in enumerate(KIND_ORDER)}
    for kind in KIND_ORDER:
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        saved = np.array([100 * (1 - r["latency_ratio"]) for r in sel])
        lo = saved - np.array([100 * (1 - r["latency_ratio_p90"]) for r in sel])
        hi = np.array([100 * (1 - r["latency_ratio_p10"]) for r in sel]) - saved
        ax.errorbar(saved, [r["psnr_drop"] for r in sel], xerr=[np.maximum(lo, 0), np.maximum(hi, 0)],
                    fmt="o", ms=4, capsize=2, elinewidth=0.7, alpha=0.8, color=colors[kind],
                    label=kind)
    for r in _frontier([(100 * (1 - r["latency_ratio"]), r["psnr_drop"], r) for r in rows]):
        ax.annotate(f"{r['group']}->{r['kept']}", (100 * (1 - r["latency_ratio"]), r["psnr_drop"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.25")
    ax.axvline(0, color="0.5", lw=0.8, ls=":")
    ax.set_yscale("symlog", linthresh=0.01)
    drops = [r["psnr_drop"] for r in rows] or [0.0]
    ax.set_ylim(min(drops + [0.0]) * 1.5 - 0.002, max(drops + [0.01]) * 1.5)
    ax.set_xlabel(f"latency saved vs the unpruned model (%, median of "
                  f"{result.timing.get('latency_pairs_per_model', '?')} interleaved pairs; bar: "
                  "p10-p90)")
    ax.set_ylabel("Y-PSNR drop (dB, symlog; no retraining)")
    b = result.baseline
    ax.set_title(f"What each cut buys: {result.model} on {result.set_name}, deploy mode "
                 f"{result.deploy_mode}, input {'x'.join(map(str, b.get('latency_shape') or []))}, "
                 f"baseline {b.get('latency_ms') or float('nan'):.2f} ms", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def write_outputs(result: SensitivityResult, out_dir: str | os.PathLike, *,
                  tensorboard: bool = True, plots: bool = True) -> dict[str, Path]:
    """Write results.json, sensitivity.csv (every row), ranking.csv, one PNG per group under
    plots/, overview.png, ranking.png and TensorBoard events under tb/. Returns the paths."""
    from workbench.models.artifacts import atomic_write_bytes, atomic_write_json, environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["json"] = out / "results.json"
    atomic_write_json(paths["json"], {**result.to_json(), "environment": environment()})
    paths["csv"] = out / "sensitivity.csv"
    ranked = {r["group"]: r["rank"] for r in result.ranking}
    rows = sorted(result.rows, key=lambda r: (ranked[r["group"]], r["ratio"]))
    atomic_write_bytes(paths["csv"], _csv_text(rows, ROW_FIELDS).encode())
    paths["ranking"] = out / "ranking.csv"
    rank_fields = list(result.ranking[0]) if result.ranking else ["rank", "group"]
    atomic_write_bytes(paths["ranking"], _csv_text(result.ranking, rank_fields).encode())
    writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "tb"))
        for row in result.rows:
            step = int(round(row["ratio"] * 100))
            writer.add_scalar(f"psnr_drop/{row['group']}", row["psnr_drop"], step)
            writer.add_scalar(f"params/{row['group']}", row["params"], step)
            if row.get("latency_ms") is not None:
                writer.add_scalar(f"latency_ms/{row['group']}", row["latency_ms"], step)
                writer.add_scalar(f"latency_saved_pct/{row['group']}", row["latency_saved_pct"], step)
        for r in result.ranking:
            writer.add_scalar("mean_drop_by_rank", r["mean_drop"], r["rank"])
        paths["tensorboard"] = out / "tb"
    if plots and result.rows:
        import matplotlib.pyplot as plt

        from workbench.core.files import atomic_save_figure

        plot_dir = out / "plots"
        plot_dir.mkdir(exist_ok=True)
        for group in dict.fromkeys(r["group"] for r in result.rows):
            fig = _plot_group(result, group)
            atomic_save_figure(fig, plot_dir / f"{group}.png", close=False)
            if writer is not None:
                writer.add_figure(f"group/{group}", fig)
            plt.close(fig)
        makers = [("overview", _plot_overview, "overview.png"),
                  ("ranking_plot", _plot_ranking, "ranking.png"),
                  ("tradeoff", _plot_tradeoff, "tradeoff.png")]
        if any(r.get("latency_ratio") is not None for r in result.rows):
            makers.append(("latency_tradeoff", _plot_latency_tradeoff, "latency_tradeoff.png"))
        for key, maker, fname in makers:
            fig = maker(result)
            atomic_save_figure(fig, out / fname, close=False, bbox_inches="tight")
            if writer is not None:
                writer.add_figure(key, fig)
            plt.close(fig)
            paths[key] = out / fname
        paths["plots"] = plot_dir
    if writer is not None:
        writer.close()
    return paths


def format_ranking(result: SensitivityResult, *, top: int | None = None) -> str:
    """The ranking as a text table (most redundant first)."""
    ratio_cols = [f"drop@{r:g}" for r in result.ratios]
    head = f"{'rank':>4} {'group':<18} {'width':>5} {'mean drop':>9} " + " ".join(
        f"{c:>9}" for c in ratio_cols)
    lines = [f"{result.model} on {result.set_name}: baseline Y-PSNR {result.baseline['psnr_y']:.3f} dB, "
             f"{result.baseline['params']:,} params, {result.baseline['flops_g']:.2f} GFLOPs "
             f"(criterion {result.criterion}; drops in dB, no retraining)", head]
    lat = result.baseline.get("latency_ms") is not None
    if lat:
        lines[1] += "  saved@0.5"
    for r in result.ranking[:top]:
        lines.append(f"{r['rank']:>4} {r['group']:<18} {r['width']:>5} {r['mean_drop']:>9.4f} "
                     + " ".join(f"{r.get(c, float('nan')):>9.4f}" for c in ratio_cols)
                     + (f"  {r.get('latency_saved_pct@0.5', float('nan')):>8.1f}%" if lat else ""))
    if lat:
        b = result.baseline
        lines.append(f"latency in deploy mode {result.deploy_mode}: baseline {b['latency_ms']:.2f} ms "
                     f"on {'x'.join(map(str, b['latency_shape']))}; saved@0.5 = latency saved when "
                     f"half the group goes (median of interleaved pairs with the baseline)")
    return "\n".join(lines)
