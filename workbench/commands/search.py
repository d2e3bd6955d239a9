"""`workbench search`: latency-constrained channel-width search with Optuna."""
from __future__ import annotations

import argparse

from workbench.core.errors import WorkbenchError

HELP = "search channel widths for the best PSNR/latency trade-off on this device (Optuna)"

DESCRIPTION = """\
Search the width specification of an RLFN (trunk width, middle width per block, ESA width, number
of blocks) for the best trade-off between PSNR and latency measured on this device.

Any family: name channel groups (as 'workbench prune groups' lists them) with group:NAME or a
pattern with a dot or wildcard, e.g. for span_ch28_x4
  --space 'block*.mid1=16:28:4' group:feature=20:28:4 blocks=5:6
(blocks only for families with repeatable blocks: RLFN, DIPNet, SPAN).

Each trial prunes the parent to the sampled widths by channel importance (it inherits the weights),
fine-tunes it briefly (--finetune-iters, 0 allowed) and scores PSNR-Y on the validation set. Latency
is measured on a randomly initialised model of the same widths, prepared in the deploy mode users
run (--deploy; default the device's fastest fp32 mode: fused on CPU), in a separate process, never
while a search worker trains, as the median of repeats; it is cached per machine
(~/.cache/workbench/latency.sqlite), so a configuration is measured once across all studies.

Objectives:
  pareto   maximise PSNR and minimise latency (the Pareto front); constraints optional
  latency  minimise latency subject to PSNR >= --psnr-min or parent - --psnr-drop
  psnr     maximise PSNR subject to latency <= --latency-budget MS, or <= --latency-ratio R times
           the parent's latency (0.8: at least 20% faster than the parent, on any machine)

The study lives in Optuna storage (default sqlite:///OUT/study.db). Rerun the same command to resume
it; start several processes (--workers N, or the same command in other terminals or machines with
a shared --storage) to add trials to one study: the total stays exactly --trials.

Results in OUT: trials.csv, pareto.csv, pareto.md, pareto.png, summary.json, and best/ (an
artifact: the next stage's parent). Watch live with: optuna-dashboard sqlite:///OUT/study.db

On a machine other processes share, use --threads 1 --train-threads 1 (two-thread timings collapse
under load) and --premeasure N: every configuration of a small space is then timed first,
interleaved, so a slow spell hits all configurations alike.

Example (rlfn_s_x4 on this 2-core CPU: 32 trials in about 25 minutes, 2 workers):
  workbench search --model rlfn_s_x4 --trials 32 --objective pareto --psnr-drop 0.1 \\
      --space trunk=32:48:8 mid=32:48:4 esa=8:16:4 --finetune-iters 100 --lr 1e-4 \\
      --patch-size 64 --train-data ../shared/data/T91 --workers 2 --threads 1 --train-threads 1 \\
      --repeats 7 --warmup 1 --premeasure 64 --reference rlfn_ntire_x4 --out runs/search-rlfn_s
"""


def _num(value: float) -> str:
    """1e-4 as 1e-4 (not 0.0001), 0.5 as 0.5."""
    return ("%.0e" % value).replace("e-0", "e-") if 0 < abs(value) < 1e-3 else f"{value:g}"


def stage_defaults() -> dict[str, object]:
    """The ``search`` recipe stage's defaults (:class:`workbench.stages.search.SearchStageConfig`,
    itself taking the fine-tune and latency ones from FinetuneSettings and LatencySettings): the
    flags' defaults, so the command and the stage cannot drift apart."""
    import dataclasses

    from workbench.stages.search import SearchStageConfig

    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(SearchStageConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from workbench.search.objective import FinetuneSettings

    d = stage_defaults()
    space = [f"{k}={v}" for k, v in d["space"].items()]
    parser.add_argument("--model", required=True, metavar="REF",
                        help="parent: an artifact folder, a .pth, or a name such as rlfn_s_x4")
    parser.add_argument("--trials", type=int, default=d["trials"], metavar="N",
                        help=f"total number of trials in the study, over all workers (default {d['trials']})")
    parser.add_argument("--objective", choices=("pareto", "latency", "psnr"), default=d["objective"],
                        help="pareto (default), latency (under a PSNR floor) or psnr (under a latency budget)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--latency-budget", type=float, metavar="MS",
                        help="constraint: latency <= MS milliseconds")
    budget.add_argument("--latency-ratio", type=float, metavar="R",
                        help="constraint: latency <= R times the parent's, both timed in this study "
                             "(e.g. 0.8); with --premeasure the parent's class latency")
    floor = parser.add_mutually_exclusive_group()
    floor.add_argument("--psnr-min", type=float, metavar="DB", help="constraint: PSNR-Y >= DB")
    floor.add_argument("--psnr-drop", type=float, metavar="DB",
                       help="constraint: PSNR-Y >= the parent's PSNR - DB (e.g. 0.1)")
    parser.add_argument("--space", nargs="+", default=space,
                        metavar="DIM=LOW:HIGH[:STEP]",
                        help="search dimensions among trunk, mid, esa, blocks (RLFN) or channel "
                             "groups of any family (group:NAME, or a pattern such as block*.mid1) "
                             f"(default: {' '.join(space)}); a single value fixes one")
    parser.add_argument("--per-block", action="store_true",
                        help="sample mid and esa once per block instead of once for all blocks")
    parser.add_argument("--finetune-iters", type=int, default=d["finetune_iters"], metavar="K",
                        help=f"fine-tune iterations per candidate (default {d['finetune_iters']}: score "
                             "the pruned model)")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"],
                        help=f"fine-tune batch size (default {d['batch_size']})")
    parser.add_argument("--patch-size", type=int, default=d["patch_size"],
                        help=f"fine-tune HR patch side in pixels (default {d['patch_size']}; multiple of "
                             "the scale)")
    parser.add_argument("--lr", type=float, default=d["lr"], help=f"fine-tune learning rate (default {_num(d['lr'])})")
    parser.add_argument("--finetune-loss", choices=("l1", "l2", "distill"), default=FinetuneSettings.loss,
                        help="fine-tune loss: l1/l2 against HR, or distill: L1 to the teacher's SR "
                             f"(default {FinetuneSettings.loss})")
    parser.add_argument("--teacher", default=d["teacher"], metavar="REF",
                        help="teacher of --finetune-loss distill: parent (the --model) or a model REF")
    parser.add_argument("--train-data", metavar="DIR",
                        help="HR images for the fine-tunes (default: the sample images shipped with "
                             "workbench)")
    parser.add_argument("--eval-set", default="Set5",
                        help="validation set: a name (Set5 is embedded) or a folder (default Set5)")
    parser.add_argument("--data-root", metavar="DIR", help="where named sets are looked up")
    parser.add_argument("--criterion", default=d["criterion"],
                        help="channel importance for pruning, ranked once on the parent (default output: "
                             "the output change when a channel is silenced; l1/l2 filter norms are "
                             "instant but misjudge the stem group trunk.0)")
    parser.add_argument("--sampler", choices=("tpe", "nsga2", "random"), default=d["sampler"],
                        help=f"Optuna sampler (default {d['sampler']})")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage: sqlite:///path.db, journal:///path.log, postgresql://... "
                             "(default sqlite:///OUT/study.db)")
    parser.add_argument("--study-name", default=d["study_name"],
                        help=f"study name in the storage (default {d['study_name']})")
    parser.add_argument("--workers", type=int, default=d["workers"], metavar="N",
                        help=f"worker processes adding trials to the study (default {d['workers']})")
    parser.add_argument("--out", default="runs/search", metavar="DIR",
                        help="output folder (default runs/search)")
    parser.add_argument("--device", default="cpu", help="device to train and measure on (cpu, cuda)")
    shape = ",".join(str(v) for v in d["input_shape"])
    parser.add_argument("--input-shape", default=shape, metavar="N,C,H,W",
                        help=f"LR input shape timed (default {shape}, the NTIRE setting)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=d["dtype"],
                        help=f"precision timed (default {d['dtype']})")
    parser.add_argument("--deploy", default=d["deploy"], metavar="MODE",
                        help="deploy mode the candidates are timed in (workbench.measure.deploy: eager, "
                             "channels_last, fused, compile, bf16, fp16, cuda_graph ...; default: "
                             "the device's fastest fp32 mode, fused on CPU, cuda_graph on GPU); "
                             "compile compiles every candidate afresh (seconds each)")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="CPU threads for latency (default: torch's default, all cores)")
    parser.add_argument("--train-threads", type=int, metavar="T",
                        help="torch threads per worker for fine-tuning and evaluation (default: cores / "
                             "workers); 1 is much faster on a machine others are using")
    parser.add_argument("--repeats", type=int, default=d["repeats"],
                        help=f"timed repeats per latency (default {d['repeats']})")
    parser.add_argument("--warmup", type=int, default=d["warmup"],
                        help=f"warm-up runs per latency (default {d['warmup']})")
    parser.add_argument("--latency-stat", choices=("median", "min"), default=d["latency_statistic"],
                        help=f"statistic of the repeats the search optimises (default {d['latency_statistic']}; min "
                             "resists load from other processes on a shared machine)")
    parser.add_argument("--premeasure", type=int, default=d["premeasure"], metavar="N",
                        help="measure every configuration of the space before training when it has at "
                             "most N (one quiet block of timings; later trials hit the cache)")
    parser.add_argument("--ntire-folder", metavar="DIR",
                        help="time the NTIRE way: mean per-image time over this folder of LR images")
    parser.add_argument("--latency-cache", metavar="FILE",
                        help="latency cache (default ~/.cache/workbench/latency.sqlite or "
                             "$WORKBENCH_LATENCY_CACHE)")
    parser.add_argument("--reference", metavar="REF",
                        help="also mark this model on the plot (e.g. rlfn_ntire_x4)")
    parser.add_argument("--compare-rounds", type=int, default=d["compare_rounds"],
                        help="rounds of the final side-by-side parent/selected timing (0: skip)")
    parser.add_argument("--leakage", choices=("error", "warn", "off"), default="error",
                        help="a fine-tune image identical or nearly identical to an image of the "
                             "validation set: error (default: refuse), warn, or off (no check)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sampler and fine-tunes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def job_from_args(args: argparse.Namespace) -> "object":
    from workbench.search.latency import LatencySettings
    from workbench.search.objective import FinetuneSettings, ObjectiveConfig
    from workbench.search.space import SearchSpace
    from workbench.search.study import SearchJob

    try:
        shape = tuple(int(v) for v in args.input_shape.replace("x", ",").split(","))
    except ValueError:
        raise WorkbenchError(f"--input-shape {args.input_shape!r}: expected N,C,H,W") from None
    return SearchJob(
        parent=args.model, out_dir=args.out, n_trials=args.trials,
        space=SearchSpace.from_strings(args.space, per_block=args.per_block),
        objective=ObjectiveConfig(objective=args.objective, latency_budget_ms=args.latency_budget,
                                  latency_ratio=args.latency_ratio,
                                  psnr_min=args.psnr_min, psnr_drop=args.psnr_drop),
        finetune=FinetuneSettings(iterations=args.finetune_iters, batch_size=args.batch_size,
                                  patch_size=args.patch_size, lr=args.lr, loss=args.finetune_loss,
                                  teacher=args.teacher),
        latency=LatencySettings(device=args.device, input_shape=shape, dtype=args.dtype,
                                threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                                ntire_folder=args.ntire_folder, cache_path=args.latency_cache,
                                statistic=args.latency_stat, deploy=args.deploy),
        storage=args.storage, study_name=args.study_name, eval_set=args.eval_set,
        data_root=args.data_root, train_data=args.train_data, device=args.device, seed=args.seed,
        sampler=args.sampler, criterion=args.criterion, reference=args.reference,
        train_threads=args.train_threads, premeasure=args.premeasure, progress=not args.no_progress)


def check_leakage(args: argparse.Namespace) -> None:
    """Refuse (or warn about) fine-tune images that copy a validation image; see
    :mod:`workbench.data.leakage`. Without fine-tuning nothing is trained, so nothing leaks."""
    from workbench.data.leakage import guard_folder

    if args.finetune_iters > 0:
        guard_folder(args.train_data, args.eval_set, data_root=args.data_root, policy=args.leakage,
                     error_remedy="remove it from --train-data or pass --leakage warn to proceed anyway",
                     warn_remedy="training on it anyway (--leakage warn)")


def run(args: argparse.Namespace) -> int:
    from workbench.search.results import format_summary
    from workbench.search.study import run_search

    check_leakage(args)
    from workbench.core.outputs import check_output_dir, check_output_file

    check_output_file(args.latency_cache, "--latency-cache")
    check_output_dir(args.out, "--out")
    job = job_from_args(args)
    summary = run_search(job, workers=args.workers, compare_rounds=args.compare_rounds)
    print(format_summary(summary))
    return 0
