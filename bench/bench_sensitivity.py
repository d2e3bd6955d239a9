"""Speed-up of the sensitivity analysis's activation cache, measured side by side in one run.

Runs the same one-shot analysis twice on the same model, groups and ratios: once recomputing every
forward pass from the input, once reusing the unpruned model's activations in front of each pruned
group. Prints both wall times, the speed-up of the evaluation part and of the whole analysis, and
checks that both gave identical PSNRs. The order alternates (cached first, then full, then cached
again) so that a change in machine load shows up as a difference between the two cached runs.

    python bench/bench_sensitivity.py                      # rlfn_x4, every group, ratio 0.5
    python bench/bench_sensitivity.py --model rlfn_s_x4 --ratios 0.25 0.75 --threads 1
"""
from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rlfn_x4", help="model reference (default rlfn_x4)")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5])
    parser.add_argument("--groups", nargs="+", default=None, help="shell patterns (default all)")
    parser.add_argument("--set", default="Set5")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from workbench.models.artifacts import load_model
    from workbench.data.benchmark import load_set
    from workbench.prune.sensitivity import analyze

    art = load_model(args.model)
    pset = load_set(args.set, art.spec.scale)
    kw = dict(ratios=args.ratios, groups=args.groups, progress=False, model_name=args.model)
    analyze(art.model, pset, **{**kw, "groups": ["block1.mid1"], "ratios": [0.5]})  # warm-up
    runs = {}
    for label, cached in (("cached", True), ("full", False), ("cached#2", True)):
        res = analyze(art.model, pset, use_cache=cached, **kw)
        runs[label] = res
        t = res.timing
        print(f"{label:>9}: {t['evaluations']} evaluations, total {t['total_s']:6.2f} s "
              f"(cache/baseline {t['cache_s']:5.2f} s, prune {t['prune_s']:5.2f} s, "
              f"evaluate {t['eval_s']:6.2f} s)", flush=True)
    same = all(abs(a["psnr_y"] - b["psnr_y"]) < 1e-9
               for a, b in zip(runs["cached"].rows, runs["full"].rows))
    full, c1, c2 = (runs[k].timing for k in ("full", "cached", "cached#2"))
    cached_eval = (c1["eval_s"] + c2["eval_s"]) / 2
    cached_total = (c1["total_s"] + c2["total_s"]) / 2
    print(f"{args.model} on {args.set} ({torch.get_num_threads()} threads): evaluation speed-up "
          f"x{full['eval_s'] / cached_eval:.2f}, whole analysis x{full['total_s'] / cached_total:.2f}"
          f" (cached runs differ by {abs(c1['eval_s'] - c2['eval_s']) / cached_eval:.0%}: load "
          f"noise); PSNRs identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
