"""Latency of a model and its pruned version, measured side by side (interleaved) in one run.

    python bench/bench_prune_latency.py                                  # rlfn_s_x4 vs trunk 46
    python bench/bench_prune_latency.py --pruned runs/prune46/03-finetune/artifact
    python bench/bench_prune_latency.py --widths trunk=32 --shape 1x3x256x256 --rounds 5
    python bench/bench_prune_latency.py --deploy fused bf16       # each mode, both models

Both models are timed as deployed (--deploy; default the device's fastest fp32 mode, see
workbench.measure.deploy.default_mode), interleaved pass by pass (workbench.measure.profiling.compare_latency),
so a change in machine load hits both alike; the median of the per-round ratios (with p10-p90)
is the figure to quote. Also prints params and FLOPs (NTIRE counting).
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("--repeats", type=int, default=5, help="passes per round")
    parser.add_argument("--deploy", nargs="+", default=None, metavar="MODE",
                        help="deploy modes (default: the device's fastest fp32 mode)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from workbench.models.artifacts import load_model
    from workbench.commands.prune import parse_widths
    from workbench.measure.deploy import default_mode, prepare
    from workbench.measure.profiling import compare_latency, ntire_counts, parse_shape
    from workbench.prune.surgery import prune_to_widths

    shape = parse_shape(args.shape)
    original = load_model(args.model).model.eval()
    if args.pruned:
        pruned = load_model(args.pruned).model.eval()
    else:
        pruned = prune_to_widths(original, parse_widths(args.widths), criterion=args.criterion)
    models = {"original": original, "pruned": pruned}
    for name, model in models.items():
        c = ntire_counts(model)
        print(f"{name:>8}: {model.spec.describe()[:60]:<60} params {c['params']:>8,}  "
              f"FLOPs {c['flops_g']:6.2f} G")
    for mode in args.deploy or [default_mode("cpu")]:
        runners = {n: prepare(m, mode=mode, example_shape=shape) for n, m in models.items()}
        rows = compare_latency(runners, input_shape=shape, rounds=args.rounds * args.repeats,
                               warmup=2)
        o, p = rows
        print(f"deploy mode {mode}, {'x'.join(map(str, shape))}, {o['threads']} threads: original "
              f"{o['median_ms']:.1f} ms, pruned {p['median_ms']:.1f} ms; pruned / original "
              f"{p['ratio']:.3f} (p10-p90 {p['ratio_p10']:.3f}-{p['ratio_p90']:.3f}, "
              f"{p['rounds']} interleaved pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
