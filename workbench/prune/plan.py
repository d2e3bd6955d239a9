"""Which groups to cut: a pruning plan that reaches a latency target, measured, in sensitivity order.

On a CPU whose convolution kernels compute channels in blocks (oneDNN: 16 with AVX-512), only
some widths buy time, and the time a set of cuts buys is not the sum of what each buys alone
(SPAN-28: a block's ``mid2`` at 16 saves 0.8% alone, two of them together with five other groups
about 5.5%). So the plan is measured as it grows, never added up:

1. every candidate group (``groups`` patterns, default all; those already at or below ``width``
   are skipped) is pruned alone to ``width`` by channel importance and scored one-shot on the
   validation set (:func:`workbench.prune.sensitivity.analyze`, its activation cache included);
2. candidates are taken in order of that one-shot PSNR drop, smallest first (the order in which
   the span-compress recipe's seven groups were once picked by hand from the sensitivity table);
3. after each addition the model pruned to every group taken so far is built, scored one-shot, and
   timed in each deploy mode interleaved with the parent in that mode (``rounds`` pairs, median of
   the per-round ratios: :func:`workbench.measure.profiling.compare_latency`);
4. the plan stops at the first set whose ratio is at most ``target_ratio`` in every mode.

The steps are a table (:meth:`CutPlan.rows`) and a plot (:func:`plot_plan`: one-shot PSNR drop
against latency ratio as the plan grows), so a user sees what each cut bought before training.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from workbench.core.errors import WorkbenchError

log = logging.getLogger("workbench.prune")

__all__ = ["CutStep", "CutPlan", "plan_cuts", "plot_plan", "write_plan"]


@dataclass
class CutStep:
    """The plan after taking one more group."""

    step: int
    group: str                      # the group taken at this step
    width_before: int
    width: int
    drop_alone_db: float            # one-shot PSNR drop of this group alone
    groups: list[str]               # every group taken so far
    psnr_y: float                   # one-shot PSNR of the model pruned to all of them
    drop_db: float
    params: int
    latency_ratio: dict[str, float]         # per deploy mode: median per-round ratio to the parent
    latency_ratio_p10: dict[str, float]
    latency_ratio_p90: dict[str, float]
    meets_target: bool


@dataclass
class CutPlan:
    """A measured pruning plan (see the module docstring)."""

    target_ratio: float
    width: int
    modes: list[str]
    set_name: str
    criterion: str
    baseline_psnr_y: float
    baseline_params: int
    input_shape: list[int]
    rounds: int
    candidates: list[dict[str, Any]] = field(default_factory=list)   # group, width, drop alone
    steps: list[CutStep] = field(default_factory=list)
    reached: bool = False

    @property
    def widths(self) -> dict[str, int]:
        """The target widths of the plan (of its last step): the input of ``prune_to_widths``."""
        return {g: self.width for g in (self.steps[-1].groups if self.steps else [])}

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for s in self.steps:
            row = {"step": s.step, "group": s.group, "width": f"{s.width_before}->{s.width}",
                   "drop_alone_db": round(s.drop_alone_db, 4), "drop_db": round(s.drop_db, 4),
                   "psnr_y": round(s.psnr_y, 4), "params": s.params}
            for m in self.modes:
                row[f"ratio_{m}"] = round(s.latency_ratio[m], 4)
                row[f"ratio_{m}_p10"] = round(s.latency_ratio_p10[m], 4)
                row[f"ratio_{m}_p90"] = round(s.latency_ratio_p90[m], 4)
            row["meets_target"] = s.meets_target
            out.append(row)
        return out

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "steps"},
                "widths": self.widths, "steps": [asdict(s) for s in self.steps]}

    def format(self) -> str:
        head = (f"{'step':>4} {'group':<16} {'width':>7} {'alone':>8} {'joint':>8} "
                + " ".join(f"{m + ' ratio':>12}" for m in self.modes))
        lines = [head]
        for s in self.steps:
            lines.append(f"{s.step:>4} {s.group:<16} {s.width_before:>3}->{s.width:<3} "
                         f"{-s.drop_alone_db:>+8.3f} {-s.drop_db:>+8.3f} "
                         + " ".join(f"{s.latency_ratio[m]:>11.3f}x" for m in self.modes)
                         + ("  <- meets the target" if s.meets_target else ""))
        if self.reached:
            verdict = f"reached {self.target_ratio:g}x in {', '.join(self.modes)} with {len(self.widths)} groups"
        elif self.steps:
            verdict = (f"{self.target_ratio:g}x not reached with {len(self.steps)} of "
                       f"{len(self.candidates)} candidate groups; closest "
                       + ", ".join(f"{m} {self.steps[-1].latency_ratio[m]:.3f}x" for m in self.modes))
        else:
            verdict = "no step taken"
        lines.append(f"one-shot PSNR-Y drops on {self.set_name} (dB, no retraining); ratios to the "
                     f"parent in the same mode, median of {self.rounds} interleaved pairs; {verdict}")
        return "\n".join(lines)


def _drops_alone(model: torch.nn.Module, pset: Any, names: list[str], width: int, *, criterion: str,
                 device: Any, progress: bool) -> dict[str, float]:
    """One-shot PSNR drop of each group pruned alone to ``width`` (one sensitivity analysis per
    distinct group width, with the ratio that leaves exactly ``width`` channels)."""
    from workbench.models import group_widths
    from workbench.prune.sensitivity import analyze, channels_to_remove

    widths = group_widths(model.spec)
    by_width: dict[int, list[str]] = {}
    for n in names:
        by_width.setdefault(widths[n], []).append(n)
    drops: dict[str, float] = {}
    for gw, members in sorted(by_width.items()):
        ratio = (gw - width) / gw
        if channels_to_remove(gw, ratio) != gw - width:  # pragma: no cover - rounding guard
            raise WorkbenchError(f"cannot express {gw} -> {width} as a pruning ratio")
        result = analyze(model, pset, ratios=[ratio], criterion=criterion, groups=members,
                         device=device, progress=progress, model_name=f"width {gw}")
        drops.update({r["group"]: float(r["psnr_drop"]) for r in result.rows})
    return drops


def plan_cuts(model: torch.nn.Module, pset: Any, *, width: int, target_ratio: float,
              groups: Iterable[str] | None = None, criterion: str = "output",
              modes: Sequence[str] | None = None, input_shape: Sequence[int] = (1, 3, 256, 256),
              rounds: int = 10, threads: int | None = None, device: str | torch.device = "cpu",
              max_groups: int | None = None, progress: bool = True,
              measure: Callable[[torch.nn.Module, torch.nn.Module, str], dict[str, float]] | None = None
              ) -> CutPlan:
    """Grow a pruning plan until the model runs at most ``target_ratio`` times the parent's latency
    in every deploy mode of ``modes`` (default the device's fastest fp32 mode); see the module
    docstring. ``measure(parent, pruned, mode)`` -> ``{"ratio", "p10", "p90"}`` replaces the
    stopwatch (tests). Returns the plan whether or not it reached the target (``plan.reached``)."""
    from workbench.measure.deploy import check_mode, default_mode
    from workbench.measure.evaluate import resolve_device
    from workbench.models import group_widths
    from workbench.prune.groups import select_groups
    from workbench.prune.sensitivity import ActivationCache
    from workbench.prune.surgery import prune_to_widths

    if not 0 < target_ratio <= 1:
        raise WorkbenchError(f"latency target must be a ratio in (0, 1] of the parent's latency, got {target_ratio}")
    if width < 1:
        raise WorkbenchError(f"plan width must be >= 1, got {width}")
    if rounds < 1:
        raise WorkbenchError(f"latency rounds must be >= 1, got {rounds}")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    modes = list(modes or [default_mode(dev, model)])
    for m in modes:
        check_mode(m, dev)
    current = group_widths(model.spec)
    names = [n for n in select_groups(model.spec, groups) if current[n] > width]
    if not names:
        raise WorkbenchError(f"no channel group wider than {width} among "
                             f"{', '.join(groups) if groups else 'the groups'} of this model")
    pairs = list(getattr(pset, "pairs", pset))
    drops = _drops_alone(model, pset, names, width, criterion=criterion, device=dev, progress=progress)
    order = sorted(names, key=lambda n: (drops[n], n))
    cache = ActivationCache(model, pairs, scale=model.spec.scale, device=dev, keep_points=False)
    base_psnr = cache.psnr(model, None)
    measure = measure or _stopwatch(input_shape=input_shape, rounds=rounds, threads=threads, device=dev)
    plan = CutPlan(target_ratio=float(target_ratio), width=int(width), modes=modes,
                   set_name=str(getattr(pset, "name", "set")), criterion=criterion,
                   baseline_psnr_y=base_psnr,
                   baseline_params=sum(p.numel() for p in model.parameters()),
                   input_shape=[int(v) for v in input_shape], rounds=int(rounds),
                   candidates=[{"group": n, "width": current[n], "drop_alone_db": drops[n]} for n in order])
    taken: list[str] = []
    for name in order[: max_groups or len(order)]:
        taken.append(name)
        pruned = prune_to_widths(model, {g: width for g in taken}, criterion=criterion).to(dev).eval()
        psnr_y = cache.psnr(pruned, None)
        timed = {m: measure(model, pruned, m) for m in modes}
        meets = all(timed[m]["ratio"] <= target_ratio for m in modes)
        plan.steps.append(CutStep(
            step=len(taken), group=name, width_before=current[name], width=width,
            drop_alone_db=drops[name], groups=list(taken), psnr_y=psnr_y, drop_db=base_psnr - psnr_y,
            params=sum(p.numel() for p in pruned.parameters()),
            latency_ratio={m: float(timed[m]["ratio"]) for m in modes},
            latency_ratio_p10={m: float(timed[m]["p10"]) for m in modes},
            latency_ratio_p90={m: float(timed[m]["p90"]) for m in modes}, meets_target=meets))
        log.info("plan step %d: + %s -> %s (one-shot %+.3f dB)", len(taken), name,
                 ", ".join(f"{m} {timed[m]['ratio']:.3f}x" for m in modes), -(base_psnr - psnr_y))
        if meets:
            plan.reached = True
            break
    return plan


def _stopwatch(*, input_shape: Sequence[int], rounds: int, threads: int | None,
               device: Any) -> Callable[[torch.nn.Module, torch.nn.Module, str], dict[str, float]]:
    from workbench.measure.deploy import prepare
    from workbench.measure.profiling import compare_latency

    shape = tuple(int(v) for v in input_shape)
    prepared: dict[str, Any] = {}

    def measure(parent: torch.nn.Module, pruned: torch.nn.Module, mode: str) -> dict[str, float]:
        if mode not in prepared:  # the parent is prepared once per mode
            prepared[mode] = prepare(parent, device=device, mode=mode, example_shape=shape)
        runners = {"parent": prepared[mode], "pruned": prepare(pruned, device=device, mode=mode,
                                                               example_shape=shape)}
        row = compare_latency(runners, input_shape=shape, device=device, rounds=rounds, warmup=2,
                              threads=threads)[1]
        return {"ratio": row["ratio"], "p10": row["ratio_p10"], "p90": row["ratio_p90"]}

    return measure


def plot_plan(plan: CutPlan, path: str | Path) -> Path:
    """One-shot PSNR drop against the latency ratio as the plan grows, one line per deploy mode,
    each point labelled with the group taken; the target as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m in plan.modes:
        xs = [1.0] + [s.latency_ratio[m] for s in plan.steps]
        ys = [0.0] + [-s.drop_db for s in plan.steps]
        lo = [0.0] + [s.latency_ratio[m] - s.latency_ratio_p10[m] for s in plan.steps]
        hi = [0.0] + [s.latency_ratio_p90[m] - s.latency_ratio[m] for s in plan.steps]
        ax.errorbar(xs, ys, xerr=[lo, hi], marker="o", ms=4, lw=1, capsize=2, label=m)
        if m == plan.modes[0]:
            for s in plan.steps:
                ax.annotate(f"+{s.group}", (s.latency_ratio[m], -s.drop_db), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
    ax.axvline(plan.target_ratio, ls="--", c="tab:purple", lw=0.8, label=f"target {plan.target_ratio:g}x")
    ax.invert_xaxis()
    ax.set_xlabel("latency / parent's in the same mode (median of interleaved pairs, p10-p90)")
    ax.set_ylabel(f"one-shot PSNR-Y change on {plan.set_name} (dB)")
    ax.set_title(f"pruning plan: groups to width {plan.width} in sensitivity order", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plan(plan: CutPlan, out_dir: str | Path, *, plots: bool = True) -> list[Path]:
    """plan.json, plan.csv and (``plots``) plan.png in ``out_dir``, written atomically."""
    import csv
    import io
    import json

    from workbench.core.files import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = plan.rows()
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(out / "plan.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "plan.json", json.dumps(plan.to_json(), indent=2).encode())
    files = [out / "plan.json", out / "plan.csv"]
    if plots and plan.steps:
        files.append(plot_plan(plan, out / "plan.png"))
    return files
