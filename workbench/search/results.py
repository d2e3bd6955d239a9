"""What a finished (or interrupted) study leaves behind, all in its out folder:

- ``trials.csv``: every trial (number, state, widths, params, latency, PSNR, feasibility, worker);
- ``pareto.csv`` / ``pareto.md``: the feasible Pareto front (PSNR up, latency down) with the ratio
  of each point's latency to the parent's;
- ``pareto.png``: all trials, the front, the parent and the reference model (if measured);
- ``summary.json``: the parent, the selected configuration, a side-by-side latency comparison;
- ``best/``: the selected configuration as an artifact (lineage: parent, trial, study, storage),
  the parent of the next recipe stage (the L2 fine-tune).

The same study can be watched live: ``optuna-dashboard sqlite:///<out>/study.db``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.core.errors import WorkbenchError
from workbench.search.objective import pareto_front

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from workbench.search.latency import LatencyMeasurer
    from workbench.search.study import SearchJob


@dataclass
class TrialRow:
    number: int
    state: str
    summary: str
    params: int | None
    latency_ms: float | None
    psnr_y: float | None
    psnr_pruned: float | None
    feasible: bool
    duplicate_of: int | None
    candidate: str | None
    spec_key: str
    seconds: float | None
    worker: str
    error: str
    cost_key: str = ""                      # cost class (workbench.search.latency.cost_key)
    measured_latency_ms: float | None = None  # this configuration's own timing; latency_ms is its class's
    cost_class_size: int = 1                # configurations whose timings made latency_ms


def trial_rows(study: "optuna.Study") -> list[TrialRow]:
    """Every trial of the study as a row, latencies pooled by cost class (:func:`pool_equal_cost`);
    with a latency budget, a trial's feasibility is judged on its class latency too."""
    rows = []
    other_ok: dict[int, bool] = {}      # every constraint but the latency budget holds
    for t in study.get_trials(deepcopy=False):
        u = t.user_attrs
        constraints = t.constraints
        feasible = t.state.name == "COMPLETE" and all(v <= 0 for v in constraints.values())
        other_ok[t.number] = t.state.name == "COMPLETE" and all(
            v <= 0 for k, v in constraints.items() if k != "latency_ms")
        worker = u.get("worker") or {}
        rows.append(TrialRow(
            number=t.number, state=t.state.name + (" (abandoned)" if u.get("abandoned") else
                                                   " (skipped duplicate)" if u.get("skipped_duplicate")
                                                   else ""),
            summary=u.get("summary", ""), params=u.get("params"), latency_ms=u.get("latency_ms"),
            psnr_y=u.get("psnr_y"), psnr_pruned=u.get("psnr_pruned"), feasible=feasible,
            duplicate_of=u.get("duplicate_of"), candidate=u.get("candidate"),
            spec_key=u.get("spec_key", ""), seconds=u.get("seconds"),
            worker=f"{worker.get('host', '')}:{worker.get('pid', '')}" if worker else "",
            error=u.get("error", ""), cost_key=u.get("cost_key", ""),
            measured_latency_ms=u.get("latency_ms")))
    pool_equal_cost(rows, study.user_attrs.get("cost_classes"))
    budget = study.user_attrs.get("latency_budget_ms")
    if budget is not None:
        for r in rows:
            if r.cost_key and r.latency_ms is not None:
                r.feasible = other_ok[r.number] and r.latency_ms <= float(budget)
    return rows


def pool_equal_cost(rows: list[TrialRow], classes: dict[str, dict[str, Any]] | None = None) -> None:
    """Give each trial the latency of its cost class, in place (``latency_ms``; its own timing stays
    in ``measured_latency_ms``).

    Configurations that run the same convolutions (equal ``cost_key``) cost the same on any device;
    their timings differ by the machine's noise (on a loaded 2-core machine two such RLFN-S
    configurations read 0.805x and 0.863x the parent, and the search kept the one with the lower
    PSNR because it read faster). The class latency is the median over the class: over every
    configuration of the space when it was premeasured (``classes``, from
    :func:`workbench.search.study.cost_classes`), else over the distinct configurations its trials
    timed. The front and the selection then compare classes, and PSNR alone decides inside one.
    Trials without a cost key (studies from before it was recorded) keep their own timing.
    """
    from workbench.measure.timing import spread

    timed: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.cost_key and r.measured_latency_ms is not None:
            timed.setdefault(r.cost_key, {})[r.spec_key] = float(r.measured_latency_ms)
    for r in rows:
        if not r.cost_key or r.measured_latency_ms is None:
            continue
        known = (classes or {}).get(r.cost_key)
        if known:
            r.latency_ms, r.cost_class_size = float(known["latency_ms"]), int(known["configs"])
        else:
            values = list(timed[r.cost_key].values())
            r.latency_ms, r.cost_class_size = spread(values)["median"], len(values)


def front_rows(rows: list[TrialRow], *, feasible_only: bool = True) -> list[TrialRow]:
    """The Pareto front (feasible trials only, unless told) over distinct configurations, by latency."""
    seen: dict[str, TrialRow] = {}
    for r in rows:
        if r.state != "COMPLETE" or (feasible_only and not r.feasible):
            continue
        if r.psnr_y is not None and r.latency_ms is not None and r.spec_key not in seen:
            seen[r.spec_key] = r
    return pareto_front([(r, r.psnr_y, r.latency_ms) for r in seen.values()])


def select_best(rows: list[TrialRow], job: "SearchJob", attrs: dict[str, Any]) -> TrialRow | None:
    """The configuration handed to the next stage.

    With a PSNR floor (``latency`` objective, or ``pareto`` with --psnr-min/--psnr-drop): the
    fastest feasible trial, by the latency of its cost class (:func:`pool_equal_cost`), so among
    configurations of equal cost the highest PSNR wins. With only a latency budget: the highest-PSNR feasible trial. Pareto
    without constraints: the highest-PSNR point of the front.
    """
    front = front_rows(rows)
    if not front:
        return None
    if attrs.get("psnr_floor") is not None:
        return min(front, key=lambda r: (r.latency_ms, -r.psnr_y))
    return max(front, key=lambda r: (r.psnr_y, -r.latency_ms))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_csv(path: Path, rows: list[TrialRow], *, parent_latency: float | None) -> None:
    from workbench.core.files import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "state", "config", "params", "latency_ms", "latency_ratio", "psnr_y",
                     "psnr_pruned", "feasible", "duplicate_of", "seconds", "worker", "candidate",
                     "spec_key", "error", "measured_latency_ms", "cost_class_size", "cost_key"])
    for r in rows:
        ratio = r.latency_ms / parent_latency if r.latency_ms and parent_latency else None
        writer.writerow([r.number, r.state, r.summary, r.params, _fmt(r.latency_ms, 2), _fmt(ratio, 3),
                         _fmt(r.psnr_y, 4), _fmt(r.psnr_pruned, 4), r.feasible,
                         "" if r.duplicate_of is None else r.duplicate_of, _fmt(r.seconds, 1), r.worker,
                         r.candidate or "", r.spec_key, r.error, _fmt(r.measured_latency_ms, 2),
                         r.cost_class_size, r.cost_key])
    atomic_write_bytes(path, buf.getvalue().encode())


def markdown_table(front: list[TrialRow], attrs: dict[str, Any], best: TrialRow | None) -> str:
    parent_lat = attrs.get("parent_latency_ms")
    parent_psnr = attrs.get("parent_psnr_y")
    lines = ["| trial | config | params | latency ms | x parent | timings | PSNR-Y dB | vs parent dB | |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    if parent_lat is not None:
        lines.append(f"| parent | {attrs.get('parent_summary', '')} | | {parent_lat:.1f} | 1.000 | 1 | "
                     f"{_fmt(parent_psnr, 3)} | 0.000 | |")
    for r in front:
        ratio = r.latency_ms / parent_lat if parent_lat else float("nan")
        delta = r.psnr_y - parent_psnr if parent_psnr is not None else float("nan")
        mark = "selected" if best is not None and r.number == best.number else ""
        lines.append(f"| {r.number} | {r.summary} | {r.params or ''} | {r.latency_ms:.1f} | {ratio:.3f} | "
                     f"{r.cost_class_size} | {r.psnr_y:.3f} | {delta:+.3f} | {mark} |")
    return ("\n".join(lines) + "\n\nlatency ms: the median over the timed configurations of the same "
            "cost (the same convolutions; `timings` counts them), so equal-cost configurations differ "
            "only in PSNR\n")


def _focus_range(done: list[TrialRow], attrs: dict[str, Any]) -> tuple[float, float] | None:
    """The PSNR range that matters: feasible trials, the parent, the reference and the floor.

    Infeasible candidates far below (a pruned model at 8 dB) would otherwise flatten it; they
    are drawn at the bottom edge and counted in a note instead.
    """
    keys = [r.psnr_y for r in done if r.feasible]
    keys += [attrs[k] for k in ("parent_psnr_y", "reference_psnr_y", "psnr_floor")
             if isinstance(attrs.get(k), (int, float)) and math.isfinite(attrs[k])]
    if not keys:
        return None
    lo, hi = min(keys), max(keys)
    pad = max(0.05, 0.15 * (hi - lo))
    return lo - max(4 * pad, 0.25), hi + pad


def plot_front(path: Path, rows: list[TrialRow], front: list[TrialRow], attrs: dict[str, Any],
               best: TrialRow | None, *, title: str, front_all: list[TrialRow] | None = None,
               conditions: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    done = [r for r in rows if r.psnr_y is not None and r.latency_ms is not None]
    focus = _focus_range(done, attrs)
    clipped = [r for r in done if focus is not None and r.psnr_y < focus[0]]
    done = [r for r in done if r not in clipped]
    feas = [r for r in done if r.feasible]
    infeas = [r for r in done if not r.feasible]
    if feas:
        ax.scatter([r.latency_ms for r in feas], [r.psnr_y for r in feas], s=18, c="tab:blue",
                   alpha=0.6, label="trials")
    if infeas:
        ax.scatter([r.latency_ms for r in infeas], [r.psnr_y for r in infeas], s=18, c="tab:gray",
                   marker="x", alpha=0.7, label="infeasible")
    if front_all and [r.number for r in front_all] != [r.number for r in front]:
        ax.step([r.latency_ms for r in front_all], [r.psnr_y for r in front_all], where="post",
                c="tab:gray", lw=0.8, ls=":", label="front without the constraints")
    if front:
        ax.step([r.latency_ms for r in front], [r.psnr_y for r in front], where="post", c="tab:red",
                lw=1.2, label="Pareto front")
        ax.scatter([r.latency_ms for r in front], [r.psnr_y for r in front], s=30, c="tab:red")
        for r in front:
            ax.annotate(r.summary, (r.latency_ms, r.psnr_y), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    if attrs.get("parent_latency_ms") is not None:
        ax.scatter([attrs["parent_latency_ms"]], [attrs["parent_psnr_y"]], marker="*", s=160,
                   c="black", label="parent", zorder=5)
    if attrs.get("reference_latency_ms") is not None:
        ax.scatter([attrs["reference_latency_ms"]], [attrs["reference_psnr_y"]], marker="D", s=60,
                   c="tab:green", label=str(attrs.get("reference")), zorder=5)
    if best is not None:
        ax.scatter([best.latency_ms], [best.psnr_y], s=160, facecolors="none", edgecolors="tab:orange",
                   linewidths=2, label=f"selected (trial {best.number})", zorder=6)
    if attrs.get("psnr_floor") is not None:
        ax.axhline(attrs["psnr_floor"], ls="--", c="tab:orange", lw=0.8, label="PSNR floor")
    if attrs.get("latency_budget_ms") is not None:
        ratio = attrs.get("latency_ratio")
        ax.axvline(attrs["latency_budget_ms"], ls="--", c="tab:purple", lw=0.8,
                   label=f"latency budget ({ratio:g}x parent)" if ratio else "latency budget")
    if focus is not None:
        ax.set_ylim(*focus)
    if clipped:
        # far below the region that matters: marked on the bottom edge, with their lowest PSNR
        ax.scatter([r.latency_ms for r in clipped], [focus[0]] * len(clipped), marker="v", s=28,
                   c="tab:gray", clip_on=False, zorder=4,
                   label=f"{len(clipped)} infeasible below (down to {min(r.psnr_y for r in clipped):.1f} dB)")
    device = attrs.get("device_name", "")
    ax.set_xlabel(f"latency (ms, {attrs.get('latency_statistic', 'median')}) on {device}"[:80]
                  + (f"\n{conditions}" if conditions else ""), fontsize=8)
    ax.set_ylabel(f"PSNR-Y (dB) on {attrs.get('eval_set', '')}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    # outside the axes: inside, the legend hid points of the front
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    from workbench.core.files import atomic_save_figure

    atomic_save_figure(fig, path, bbox_inches="tight")   # labels and the legend are not clipped


def export_best(best: TrialRow, job: "SearchJob", attrs: dict[str, Any], dest: Path) -> Path:
    """Save the selected trial's model as an artifact whose lineage names parent, trial and study."""
    from workbench.models.artifacts import load_artifact, make_lineage, save_artifact
    from workbench.search.study import storage_url

    if not best.candidate or not Path(best.candidate).exists():
        raise WorkbenchError(f"trial {best.number}: its model was not kept (keep_candidates off or "
                             f"{best.candidate} removed); rerun with candidates kept")
    art = load_artifact(best.candidate)
    metrics = {"psnr_y": best.psnr_y, "latency_ms": best.latency_ms, "eval_set": job.eval_set,
               "parent_psnr_y": attrs.get("parent_psnr_y"), "parent_latency_ms": attrs.get("parent_latency_ms"),
               "latency_device": attrs.get("device_name")}
    lineage = make_lineage(parent=job.parent, seed=job.seed, stage="search", device=job.device,
                           trial=best.number, study=job.study_name, storage=storage_url(job),
                           candidate=best.candidate, objective=job.objective.objective)
    return save_artifact(dest, art.model, metrics=metrics, lineage=lineage,
                         config={"spec_key": best.spec_key, "space": job.space.to_dict()})


def write_results(study: "optuna.Study", job: "SearchJob", *, measurer: "LatencyMeasurer | None" = None,
                  compare_rounds: int = 5) -> dict[str, Any]:
    """Write every result file into ``job.out_dir``; returns the summary (also summary.json)."""
    from workbench.core.files import atomic_write_bytes, atomic_write_json
    from workbench.models.family import spec_from_any_dict
    from workbench.search.space import spec_summary

    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attrs = dict(study.user_attrs)
    if "parent_spec" in attrs:
        attrs["parent_summary"] = spec_summary(spec_from_any_dict(attrs["parent_spec"]))
    rows = trial_rows(study)
    front = front_rows(rows)
    best = select_best(rows, job, attrs)
    write_csv(out / "trials.csv", rows, parent_latency=attrs.get("parent_latency_ms"))
    write_csv(out / "pareto.csv", front, parent_latency=attrs.get("parent_latency_ms"))
    md = "Feasible Pareto front\n\n" + markdown_table(front, attrs, best)
    md += "\nPareto front without the constraints\n\n" + markdown_table(front_rows(rows, feasible_only=False), attrs, best)
    atomic_write_bytes(out / "pareto.md", md.encode())
    title = (f"{job.study_name}: {sum(r.state == 'COMPLETE' for r in rows)} trials, objective "
             f"{job.objective.objective}, fine-tune {job.finetune.iterations} it, latency in deploy "
             f"mode {job.latency.deploy}")
    front_all = front_rows(rows, feasible_only=False)
    write_csv(out / "pareto_unconstrained.csv", front_all, parent_latency=attrs.get("parent_latency_ms"))
    lat = job.latency
    conditions = (f"input {'x'.join(map(str, lat.input_shape))}, {lat.dtype}, "
                  f"{lat.threads or lat.resolved_threads()} threads"
                  + ("" if lat.threads else " (torch's default)")
                  + (f", NTIRE protocol on {lat.ntire_folder}" if lat.ntire_folder else ""))
    plot_front(out / "pareto.png", rows, front, attrs, best, title=title, front_all=front_all,
               conditions=conditions)

    summary: dict[str, Any] = {
        "study": job.study_name, "storage": _public_url(job), "objective": job.objective.objective,
        "trials": {"counted": sum(1 for r in rows if "(" not in r.state),
                   "complete": sum(r.state == "COMPLETE" for r in rows),
                   "failed": sum(r.state.startswith("FAIL") and "(" not in r.state for r in rows),
                   "skipped_duplicates": sum("skipped duplicate" in r.state for r in rows),
                   "distinct_configs": len({r.spec_key for r in rows if r.spec_key})},
        "parent": {k[len("parent_"):]: v for k, v in attrs.items() if k.startswith("parent_")},
        "psnr_floor": attrs.get("psnr_floor"), "latency_budget_ms": attrs.get("latency_budget_ms"),
        "latency_ratio": attrs.get("latency_ratio"),
        "device": attrs.get("device_name"), "deploy_mode": attrs.get("deploy_mode"),
        "versions": attrs.get("versions"),
        "front": [{"trial": r.number, "config": r.summary, "latency_ms": r.latency_ms, "psnr_y": r.psnr_y,
                   "params": r.params} for r in front],
        "front_unconstrained": [{"trial": r.number, "config": r.summary, "latency_ms": r.latency_ms,
                                 "psnr_y": r.psnr_y, "params": r.params} for r in front_all],
        "best": None, "files": ["trials.csv", "pareto.csv", "pareto_unconstrained.csv", "pareto.md",
                                "pareto.png"],
        "dashboard": f"optuna-dashboard {_public_url(job)}",
    }
    if attrs.get("reference_latency_ms") is not None:
        summary["reference"] = {"model": attrs.get("reference"), "latency_ms": attrs["reference_latency_ms"],
                                "psnr_y": attrs.get("reference_psnr_y")}
    if best is not None:
        summary["best"] = {"trial": best.number, "config": best.summary, "latency_ms": best.latency_ms,
                           "psnr_y": best.psnr_y, "params": best.params, "spec_key": best.spec_key}
        if job.keep_candidates and best.candidate:
            dest = Path(job.best_dir) if job.best_dir else out / "best"
            summary["best"]["artifact"] = str(export_best(best, job, attrs, dest))
            summary["files"].append(str(dest))
        if measurer is not None and "parent_spec" in attrs:
            specs = {"parent": spec_from_any_dict(attrs["parent_spec"]),
                     "best": spec_from_any_dict(study.trials[best.number].user_attrs["spec"])}
            if attrs.get("reference_spec"):
                specs["reference"] = spec_from_any_dict(attrs["reference_spec"])
            from workbench.search.space import spec_key

            distinct: dict[str, str] = {}   # spec key -> first name: equal widths are timed once
            for name, spec in specs.items():
                distinct.setdefault(spec_key(spec), name)
            timed = measurer.compare({n: specs[n] for n in distinct.values()}, rounds=compare_rounds)
            side = {name: timed[distinct[spec_key(spec)]] for name, spec in specs.items()}
            summary["side_by_side"] = {
                "parent_ms": side["parent"]["median_ms"], "best_ms": side["best"]["median_ms"],
                "ratio": side["best"]["median_ms"] / side["parent"]["median_ms"],
                "ratio_min": side["best"].get("min_ms", 0) / side["parent"].get("min_ms", 1),
                "rounds": compare_rounds, "input_shape": list(job.latency.input_shape),
                "threads": job.latency.threads, "deploy_mode": job.latency.deploy, "all": side,
                "note": "fresh interleaved measurement in one process (not from the cache)"}
            summary["side_by_side"].update(_explain_side_by_side(study, best, attrs, side))
            if "reference" in side:
                summary["side_by_side"]["reference_ms"] = side["reference"]["median_ms"]
                summary["side_by_side"]["reference_ratio"] = side["reference"]["median_ms"] / side["parent"]["median_ms"]
    atomic_write_json(out / "summary.json", summary)
    return summary


def _explain_side_by_side(study: "optuna.Study", best: TrialRow, attrs: dict[str, Any],
                          side: dict[str, Any]) -> dict[str, Any]:
    """Why the side-by-side times can differ from the per-trial ones, from the records.

    Per-trial latencies come from the persistent latency cache when the configuration was timed
    before (by this study, another study or an earlier run), so they may have been measured
    hours apart and under another load; the side-by-side is timed now, interleaved. On a shared
    machine the load, not the model, then sets the absolute times (a smoke run here: 88.5 ms
    from the cache against 1679 ms fresh for the parent's own widths, with another trial measured
    fresh at 1623 ms); the ratio within one measurement stays meaningful.
    """
    record = study.trials[best.number].user_attrs.get("latency") or {}
    per_trial_parent = attrs.get("parent_latency_ms")
    out: dict[str, Any] = {"per_trial_parent_ms": per_trial_parent, "per_trial_best_ms": best.latency_ms,
                           "per_trial_best_from_cache": bool(record.get("cached"))}
    fresh = side["parent"]["median_ms"]
    if per_trial_parent and fresh:
        drift = fresh / per_trial_parent
        out["drift"] = drift
        if not 0.8 <= drift <= 1.25:
            out["explanation"] = (
                f"the fresh side-by-side time of the parent is {drift:.1f}x its per-trial time: the "
                "per-trial times were measured earlier (or read from the latency cache) under "
                "another load of this machine; compare the ratio, which is measured in one "
                "interleaved run (on a shared machine use threads: 1 and latency_statistic: min)")
    return out


def _public_url(job: "SearchJob") -> str:
    from workbench.search.study import storage_url

    url = storage_url(job)
    if "@" in url and "://" in url:  # hide a password in a database URL
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [f"study {summary['study']} ({summary['storage']}): {summary['trials']['complete']} complete, "
             f"{summary['trials']['failed']} failed, {summary['trials']['distinct_configs']} distinct configs"]
    p = summary.get("parent") or {}
    if p.get("latency_ms") is not None:
        lines.append(f"parent: {p.get('psnr_y', float('nan')):.3f} dB, {p['latency_ms']:.1f} ms")
    parent_ms = p.get("latency_ms")
    for title, key in (("Pareto front, feasible", "front"), ("Pareto front without the constraints",
                                                             "front_unconstrained")):
        if key == "front_unconstrained" and summary.get(key) == summary.get("front"):
            continue
        lines.append(f"{title} (latency ms, x parent, PSNR-Y dB):")
        for f in summary.get(key) or []:
            ratio = f"{f['latency_ms'] / parent_ms:5.2f}x" if parent_ms else ""
            lines.append(f"  #{f['trial']:<4} {f['config']:<22} {f['latency_ms']:8.1f} ms {ratio}  {f['psnr_y']:.3f} dB")
    b = summary.get("best")
    if b:
        lines.append(f"selected: trial {b['trial']} {b['config']}: {b['psnr_y']:.3f} dB, {b['latency_ms']:.1f} ms"
                     + (f" -> {b['artifact']}" if b.get("artifact") else ""))
    else:
        lines.append("selected: none (no feasible trial)")
    s = summary.get("side_by_side")
    if s:
        lines.append(f"side by side ({s.get('deploy_mode', 'eager')}): parent {s['parent_ms']:.1f} ms, "
                     f"selected {s['best_ms']:.1f} ms, "
                     f"ratio {s['ratio']:.3f} (min-based {s.get('ratio_min', float('nan')):.3f})"
                     + (f"; reference {s['reference_ms']:.1f} ms, ratio {s['reference_ratio']:.3f}"
                        if "reference_ms" in s else ""))
    if s and s.get("explanation"):
        lines.append(f"  note: {s['explanation']}")
    lines.append(f"watch: {summary['dashboard']}")
    return "\n".join(lines)


def load_summary(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "summary.json").read_text())
