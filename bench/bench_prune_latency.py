"""Latency of a model and its pruned version, measured side by side (interleaved) in one run.

    python bench/bench_prune_latency.py                                  # rlfn_s_x4 vs trunk 46
    python bench/bench_prune_latency.py --pruned runs/prune46/03-finetune/artifact
    python bench/bench_prune_latency.py --widths trunk=32 --shape 1x3x256x256 --rounds 5

Both models are timed in alternating rounds (each round: warm-up, then the median of --repeats
forward passes), so a change in machine load hits both alike; the ratio of the medians over the
rounds is the figure to quote. Also prints params and FLOPs (NTIRE counting).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rlfn_s_x4", help="the original (default rlfn_s_x4)")
    parser.add_argument("--pruned", default=None,
                        help="pruned artifact (default: --model pruned one-shot to --widths)")
    parser.add_argument("--widths", nargs="+", default=["trunk=46"], metavar="NAME=WIDTH")
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--shape", default="1x3x256x256")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from workbench.artifacts import load_model
    from workbench.commands.prune import parse_widths
    from workbench.profiling import measure_latency, ntire_counts, parse_shape
    from workbench.prune.surgery import prune_to_widths

    shape = parse_shape(args.shape)
    original = load_model(args.model).model.eval()
    if args.pruned:
        pruned = load_model(args.pruned).model.eval()
    else:
        pruned = prune_to_widths(original, parse_widths(args.widths), criterion=args.criterion)
    models = {"original": original, "pruned": pruned}
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            r = measure_latency(model, input_shape=shape, warmup=2, repeats=args.repeats)
            times[name].append(r["median_ms"])
    for name, model in models.items():
        c = ntire_counts(model)
        print(f"{name:>8}: {model.spec.describe()[:60]:<60} params {c['params']:>8,}  "
              f"FLOPs {c['flops_g']:6.2f} G  latency median {statistics.median(times[name]):8.1f} ms "
              f"(rounds: {', '.join(f'{t:.0f}' for t in times[name])})")
    ratio = statistics.median(p / o for p, o in zip(times["pruned"], times["original"]))
    print(f"pruned / original latency on {'x'.join(map(str, shape))}, {torch.get_num_threads()} "
          f"threads: {ratio:.3f} (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
