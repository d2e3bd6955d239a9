"""The result models side by side: PSNR-Y on Set5/Set14 in fp32 and bf16, and latency ratios
measured interleaved in one run, every model in the same deploy mode.

    python bench/bench_results.py                       # the committed results vs the references
    python bench/bench_results.py --models rlfn_s_x4 rlfn_ntire_x4 runs/x/03-finetune/artifact
    python bench/bench_results.py --threads 1 --rounds 30 --out bench/results/side_by_side

Models default to the two references (rlfn_s_x4, the starting point of every RLFN recipe, and
rlfn_ntire_x4, the NTIRE 2022 winner) and every committed result artifact under
bench/results/*/artifact. Latency: each (model, mode) pair is prepared once
(`workbench.measure.deploy.prepare`) and all pairs are run in turn, round after round, on one
1x3x256x256 LR input (`workbench.measure.profiling.compare_latency`), so load from other processes hits
them alike; the table gives each median ratio (p10-p90 in brackets) to rlfn_s_x4 and to
rlfn_ntire_x4 in the same mode. fp32 is the device's default mode (`fused` on CPU for RLFN-shaped
models, `channels_last` for others); bf16 is judged by PSNR-Y (accepted at <= 0.01 dB drop).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REFERENCES = ("rlfn_s_x4", "rlfn_ntire_x4")


def _default_models() -> list[str]:
    found = sorted(str(p.parent.relative_to(REPO)) for p in (REPO / "bench" / "results").glob("*/artifact/artifact.json"))
    return list(REFERENCES) + found


def _label(ref: str) -> str:
    path = Path(ref)
    return path.parent.name if path.name == "artifact" else path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, metavar="REF")
    parser.add_argument("--sets", nargs="+", default=["Set5", "Set14"])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--shape", default="1x3x256x256")
    parser.add_argument("--no-bf16", action="store_true", help="fp32 only")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "side_by_side"),
                        help="writes OUT.md and OUT.json")
    args = parser.parse_args(argv)

    import torch

    from workbench.models.artifacts import load_model
    from workbench.data.benchmark import load_set
    from workbench.measure.deploy import default_mode, judge_precision, prepare, reduced_precision_mode
    from workbench.measure.evaluate import evaluate_set
    from workbench.measure.profiling import compare_latency, ntire_counts, parse_shape

    torch.set_num_threads(args.threads)
    shape = parse_shape(args.shape)
    refs = args.models or _default_models()
    arts = {_label(r): load_model(r) for r in refs}
    low = None if args.no_bf16 else reduced_precision_mode("cpu")
    rows: dict[str, dict] = {}
    runners = {}
    for name, art in arts.items():
        fp32 = default_mode("cpu", art.model)
        row = {"ref": next(r for r in refs if _label(r) == name), "fp32_mode": fp32,
               **{k: ntire_counts(art.model)[k] for k in ("params", "flops_g")}}
        for set_name in args.sets:
            pset = load_set(set_name, art.spec.scale, data_root=args.data_root)
            row[f"{set_name}_fp32"] = float(evaluate_set(art.model, pset, progress=False).mean["psnr_y"])
            if low is not None:
                try:
                    judged = judge_precision(art.model, low, pset)
                    row[f"{set_name}_{low}"] = judged["psnr_mode"]
                    row[f"{set_name}_{low}_accepted"] = judged["accepted"]
                except Exception as exc:  # noqa: BLE001 - a mode a family lacks is reported, not fatal
                    row[f"{set_name}_{low}"] = None
                    row[f"{low}_error"] = str(exc).splitlines()[0]
        rows[name] = row
        runners[f"{name} [fp32]"] = prepare(art.model, mode=fp32, example_shape=shape)
        if low is not None and row.get(f"{low}_error") is None:
            runners[f"{name} [{low}]"] = prepare(art.model, mode=low, example_shape=shape)
    print(f"timing {len(runners)} (model, mode) pairs interleaved, {args.rounds} rounds, "
          f"{args.threads} threads, input {args.shape} ...", flush=True)
    timed = {r["name"]: r for r in compare_latency(runners, input_shape=shape, rounds=args.rounds,
                                                   warmup=3, threads=args.threads, progress=True)}
    # ratios to the references in the same mode, from the per-round medians of each pair
    header = (["model", "params", "GFLOPs"] + [f"{s} fp32" for s in args.sets]
              + ([f"{s} {low}" for s in args.sets] if low else [])
              + ["mode", "ms", "vs rlfn_s_x4", "vs rlfn_ntire_x4"])
    out_lines = [f"# Result models side by side ({args.shape}, {args.threads} threads, {args.rounds} "
                 f"interleaved rounds, torch {torch.__version__})", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for precision in ["fp32"] + ([low] if low else []):
        for name, row in rows.items():
            key = f"{name} [{precision}]"
            if key not in timed:
                continue
            t = timed[key]
            row[f"latency_{precision}_ms"] = t["median_ms"]
            ratios = {}
            for ref in REFERENCES:
                rkey = f"{ref} [{precision}]"
                if rkey in timed:
                    base = timed[rkey]["median_ms"]
                    ratios[ref] = t["median_ms"] / base
            row[f"ratio_{precision}"] = ratios
            psnrs = " | ".join(f"{row[f'{s}_fp32']:.3f}" for s in args.sets)
            if low:
                psnrs += "".join(f" | {row[f'{s}_{low}']:.3f}" if row.get(f"{s}_{low}") is not None else " | n/a"
                                 for s in args.sets)
            mode = row["fp32_mode"] if precision == "fp32" else low
            out_lines.append(f"| {name} | {row['params']:,} | {row['flops_g']:.2f} | {psnrs} | {mode} | "
                             f"{t['median_ms']:.1f} | {ratios.get('rlfn_s_x4', float('nan')):.3f} | "
                             f"{ratios.get('rlfn_ntire_x4', float('nan')):.3f} |")
    out_lines += ["", "Ratios are of medians over the same interleaved rounds; the spread of each pair's "
                  "per-round ratio to the first pair is in the JSON (ratio_p10, ratio_p90)."]
    text = "\n".join(out_lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"models": rows, "timing": timed}, indent=2, default=str) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
