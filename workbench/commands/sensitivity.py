"""`workbench sensitivity`: one-shot pruning sensitivity of every channel group."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "one-shot pruning sensitivity of every channel group (PSNR drop, params, FLOPs, latency)"

DESCRIPTION = """\
For every channel group (coupled channels together: a residual group is pruned across all its
layers) and every ratio, remove that fraction of the group's channels by importance, with no
retraining, and score the pruned model's Y-PSNR (paper protocol) on a validation set. Records
the PSNR drop, params and FLOPs (NTIRE counting) and optionally measured latency, then ranks the
groups (most redundant first).

Each evaluation reuses the unpruned model's activations in front of the pruned group, so only
the part of the network that changed is recomputed.

Writes to --out: results.json, sensitivity.csv (every row), ranking.csv, plots/<group>.png,
overview.png, ranking.png and TensorBoard events in tb/ (tensorboard --logdir OUT/tb).

With --latency every pruned model is timed in a deploy mode (--deploy; default the device's
fastest fp32 mode) in pairs interleaved with the unpruned model (A B A B ...), and tradeoff.png
plots each cut's PSNR drop against the latency it saves (median and p10-p90 of the pair ratios).

examples:
  workbench sensitivity --model rlfn_x4 --out sensitivity/rlfn_x4
  workbench sensitivity --model rlfn_s_x4 --groups 'block*.esa.*' --ratios 0.25 0.5 --no-latency
  workbench sensitivity --model rlfn_s_x4 --latency --latency-shape 1,3,256,256 --deploy fused
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the defaults are the `sensitivity` recipe stage's (one source: SensitivityConfig)
    from workbench.stages.prune import SensitivityConfig

    d = SensitivityConfig()
    ratios = " ".join(f"{r:g}" for r in d.ratios)
    shape = ",".join(str(v) for v in d.latency_shape)
    parser.add_argument("--model", required=True, metavar="REF",
                        help="a model name (rlfn_x4), released .pth or artifact")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(d.ratios),
                        metavar="R", help="fractions of each group's channels to remove, each in "
                                          f"(0, 1) (default: {ratios})")
    parser.add_argument("--criterion", default=d.criterion, metavar="NAME",
                        help="importance criterion: output (default: the measured output change when "
                             "a channel is silenced; slower, and far better for trunk.0) or l1, l2, "
                             "l1_full (filter norms: instant, but they misjudge trained SR weights)")
    parser.add_argument("--groups", nargs="+", default=None, metavar="PATTERN",
                        help="only groups matching these shell patterns, e.g. 'trunk.*' "
                             "'block*.esa.inner' (default: every group)")
    parser.add_argument("--set", default="Set5", metavar="SET",
                        help="validation set name or folder (default Set5; the embedded copy "
                             "when --data-root is not given)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="folder holding the named set")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default sensitivity/<model name>)")
    parser.add_argument("--latency", action=argparse.BooleanOptionalAction, default=False,
                        help="also measure each pruned model's latency (median of "
                             "--latency-repeats on --latency-shape; default off)")
    parser.add_argument("--latency-shape", default=shape, metavar="N,C,H,W",
                        help=f"input shape for the latency measurement (default {shape})")
    parser.add_argument("--latency-repeats", type=int, default=d.latency_repeats, metavar="N",
                        help="pairs (baseline, pruned) timed interleaved per pruned model; the "
                             f"ratio's median and p10-p90 come from them (default {d.latency_repeats})")
    parser.add_argument("--deploy", default=None, metavar="MODE",
                        help="deploy mode the latency is measured in (workbench.measure.deploy: eager, "
                             "channels_last, fused, compile, bf16 ...; default: the device's "
                             "fastest fp32 mode, fused on CPU)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                        help="where to run (default cpu)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute every forward pass from the input (slower; for checking)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from workbench.models.artifacts import load_model
    from workbench.data.benchmark import load_set
    from workbench.core.errors import WorkbenchError
    from workbench.measure.profiling import parse_shape
    from workbench.prune.sensitivity import analyze, format_ranking, write_outputs

    if args.threads is not None:
        if args.threads < 1:
            raise WorkbenchError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.latency_repeats < 1:
        raise WorkbenchError(f"--latency-repeats must be >= 1, got {args.latency_repeats}")
    from workbench.core.outputs import check_output_dir

    check_output_dir(args.out, "--out")
    latency_shape = parse_shape(args.latency_shape)
    art = load_model(args.model)
    label = Path(str(args.model)).stem if Path(str(args.model)).suffix in (".pt", ".pth") \
        else Path(str(args.model)).name
    out = args.out if args.out is not None else Path("sensitivity") / label
    pset = load_set(args.set, art.spec.scale, data_root=args.data_root)
    result = analyze(art.model, pset, ratios=args.ratios, criterion=args.criterion,
                     groups=args.groups, latency=args.latency,
                     latency_shape=latency_shape,
                     latency_repeats=args.latency_repeats, deploy=args.deploy, device=args.device,
                     use_cache=not args.no_cache, progress=not args.no_progress,
                     model_name=label)
    paths = write_outputs(result, out, plots=not args.no_plots)
    print(format_ranking(result))
    t = result.timing
    print(f"{t['evaluations']} pruned models scored in {t['total_s']:.1f} s "
          f"({'cached activations' if t['cached'] else 'full recompute'}); wrote {out}/ "
          f"({', '.join(p.name for p in paths.values())})")
    return 0
