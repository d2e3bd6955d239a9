"""`workbench profile`: NTIRE counts, latency, the NTIRE runtime protocol and a trunk-width sweep."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "count params/FLOPs/activations (NTIRE style) and measure latency on this device"

DESCRIPTION = """\
Profile a model on the device it will run on.

Counts (always): parameters, FLOPs (conv multiply-accumulates + LeakyReLU outputs), activations
(sum of conv output elements) and the number of convs, as the NTIRE 2022 efficient-SR challenge
counts them for a 3x256x256 input.

Latency (unless --no-latency): warm-up, then median and p90 over --repeats forward passes of a
random input of --input shape (CUDA events + synchronisation on GPU, perf_counter on CPU).
--ntire-folder adds the challenge protocol: mean per-image time over a folder of full LR images.
--sweep rebuilds the model with each trunk width of a range (random weights) and measures them
interleaved, writing a CSV and a PNG plot: latency does not fall smoothly with width.

Latency is measured in a deploy mode (workbench.measure.deploy), by default the device's fastest fp32
mode (fused on CPU for an RLFN, cuda_graph on GPU); --deploy eager times the model as is (and is
implied by --dtype bf16/fp16 or --channels-last).

Several models and/or modes (--model A B ... --deploy M1 M2 ...) are timed interleaved in one run,
every (model, mode) pair once per round, and each pair's latency ratio to the first pair is
printed (median and p10-p90 of the per-round ratios): the side-by-side comparison to quote on a
shared machine. --judge adds, for reduced-precision modes (bf16, fp16), the PSNR-Y drop versus
fp32 on a validation set: accepted when at most 0.01 dB (the largest pixel difference is shown,
but does not decide).

Results record device, hardware, dtype, threads, torch version and input shape; --out writes
them as JSON. On a shared machine, quote ratios measured in one run rather than absolute times.

examples:
  workbench profile --model rlfn_ntire_x4
  workbench profile --model runs/ntire22/05-sfp/artifact --threads 2 --repeats 50 --out profile.json
  workbench profile --model rlfn_s_x4 --ntire-folder ../shared/data/Set14/LR_bicubic/X4
  workbench profile --model rlfn_s_x4 --sweep 32:64:2 --sweep-dir sweep/
  workbench profile --model rlfn_ntire_x4 --deploy fused      # the deploy path's latency
  workbench profile --model rlfn_ntire_x4 rlfn_s_x4 --deploy fused bf16 --judge --out cmp.json
  workbench profile --model rlfn_s_x4 --sweep 32:64:2 --threads 1 --clock cpu   # busy machine
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, nargs="+", metavar="REF",
                        help="a name (rlfn_s_x4), a released .pth, or an artifact (file or folder); "
                             "several are timed side by side")
    parser.add_argument("--input", default="1x3x256x256", metavar="NxCxHxW",
                        help="input shape for the counts and the latency (default 1x3x256x256)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="device for the latency (default: auto = CUDA if available)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="weights and input dtype for the latency (fp16: CUDA only)")
    from workbench.measure.timing import DEFAULT_REPEATS, DEFAULT_WARMUP

    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed forward passes (default {DEFAULT_REPEATS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed passes first (default {DEFAULT_WARMUP})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for the measurement (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time (default); cpu: this process's CPU time, which "
                             "hardly moves when other processes load the machine (use with "
                             "--threads 1)")
    parser.add_argument("--channels-last", action="store_true",
                        help="time with channels_last memory format (model and input)")
    parser.add_argument("--deploy", default=None, nargs="+", metavar="MODE",
                        help="time the model prepared by workbench.measure.deploy in MODE (eager, "
                             "channels_last, fused, compile, bf16, fp16, cuda_graph, ...; default: "
                             "the fastest fp32 mode of the device for the (first) model); several are "
                             "timed side by side")
    parser.add_argument("--judge", nargs="?", const="Set5", default=None, metavar="SET",
                        help="with several models/modes: judge each reduced-precision mode by the "
                             "PSNR-Y drop vs fp32 on SET (default Set5; accepted at <= 0.01 dB)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="folder holding the --judge set (default: the embedded Set5)")
    parser.add_argument("--no-latency", action="store_true", help="counts only")
    parser.add_argument("--ntire-folder", type=Path, default=None, metavar="DIR",
                        help="also time the NTIRE protocol: mean per-image time over DIR's images")
    parser.add_argument("--sweep", default=None, metavar="START:STOP[:STEP]",
                        help="latency per uniform trunk width, e.g. 32:64:2 (inclusive)")
    parser.add_argument("--sweep-mid", action="store_true",
                        help="the sweep also sets every block's middle width to the trunk width")
    parser.add_argument("--sweep-dir", type=Path, default=Path("sweep"), metavar="DIR",
                        help="where the sweep's CSV and PNG go (default ./sweep)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="write everything as JSON")


def _fmt_ms(r: dict) -> str:
    return (f"median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, min {r['min_ms']:.2f} ms "
            f"({r['repeats']} runs after {r['warmup']} warm-up)")


def run(args: argparse.Namespace) -> int:
    from workbench.core.errors import WorkbenchError

    if len(args.model) > 1 or (args.deploy is not None and len(args.deploy) > 1):
        return run_compare(args)
    args.model = args.model[0]
    if args.judge is not None:
        raise WorkbenchError("--judge compares modes: give several --deploy modes (e.g. fused bf16)")
    args.deploy = args.deploy[0] if args.deploy else None
    return run_single(args)


def _common_checks(args: argparse.Namespace):
    from workbench.core.errors import WorkbenchError
    from workbench.measure.evaluate import resolve_device
    from workbench.measure.profiling import parse_shape

    shape = parse_shape(args.input)
    if args.repeats < 1 or args.warmup < 0:
        raise WorkbenchError("--repeats must be >= 1 and --warmup >= 0")
    return shape, resolve_device(args.device)


def run_compare(args: argparse.Namespace) -> int:
    """Every (model, mode) pair timed interleaved in one run; ratios to the first pair."""
    from workbench.models.artifacts import atomic_write_json, environment, load_model
    from workbench.commands.eval import _labels
    from workbench.measure.deploy import REDUCED_PRECISION, judge_precision
    from workbench.core.errors import WorkbenchError
    from workbench.measure.profiling import compare_models

    shape, device = _common_checks(args)
    if args.sweep or args.ntire_folder is not None or args.no_latency:
        raise WorkbenchError("--sweep, --ntire-folder and --no-latency profile one model in one "
                             "mode; drop them when comparing several")
    if args.dtype != "fp32" or args.channels_last:
        raise WorkbenchError("comparing deploy modes: drop --dtype and --channels-last (a mode "
                             "sets precision and memory format; use bf16, fp16 ...)")
    arts = [load_model(ref) for ref in args.model]
    for ref, art in zip(args.model, arts):
        if shape[1] != art.spec.in_channels:
            raise WorkbenchError(f"--input {args.input}: {ref} takes {art.spec.in_channels} "
                                 f"channels, not {shape[1]}")
    labels = _labels(list(args.model))
    rows = compare_models(dict(zip(labels, (art.model for art in arts))), args.deploy,
                          input_shape=shape, device=device, rounds=args.repeats, warmup=args.warmup,
                          threads=args.threads, clock=args.clock, progress=True)
    refs = dict(zip(labels, args.model))
    for row in rows:
        row["model"] = str(refs[row["label"]])
    modes = list(dict.fromkeys(row["deploy_mode"] for row in rows))
    judged = {}
    if args.judge is not None:
        from workbench.data.benchmark import load_set

        for label, ref, art in zip(labels, args.model, arts):
            pset = load_set(args.judge, art.spec.scale, data_root=args.data_root)
            for mode in modes:
                if mode in REDUCED_PRECISION:
                    judged[f"{label} [{mode}]"] = judge_precision(art.model, mode, pset,
                                                                  device=device)
        for row in rows:
            if row["name"] in judged:
                row["precision"] = judged[row["name"]]
    r0 = rows[0]
    print(f"{len(rows)} (model, mode) pairs timed interleaved, {args.repeats} rounds after "
          f"{args.warmup} warm-up, input {'x'.join(map(str, shape))}, on {r0['device']} "
          f"({r0['device_name']}), {r0['threads']} threads, torch {r0['torch']}"
          + (", CPU-time clock" if args.clock == "cpu" else ""))
    width = max(len(r["name"]) for r in rows)
    head = (f"  {'model [mode]':<{width}}  {'params':>9}  {'GFLOPs':>7}  {'median ms':>9}  "
            f"{'p90 ms':>8}  {'x first':>7}  {'p10-p90':>11}")
    if judged:
        head += f"  {'PSNR vs fp32':>11}  {'max px':>6}  quality"
    print(head)
    for r in rows:
        line = (f"  {r['name']:<{width}}  {r['counts']['params']:>9,}  {r['counts']['flops_g']:>7.2f}  "
                f"{r['median_ms']:>9.2f}  {r['p90_ms']:>8.2f}  {r['ratio']:>6.3f}x  "
                f"{r['ratio_p10']:>5.3f}-{r['ratio_p90']:<5.3f}")
        if "precision" in r:
            j = r["precision"]
            line += (f"  {-j['drop']:>+8.4f} dB  {j['max_gray_diff']:>6}  "
                     f"{'accepted' if j['accepted'] else 'REJECTED'} (<= {j['max_drop_db']:g} dB "
                     f"on {j['set']})")
        print(line)
    print(f"  x first: per-round latency ratio to {r0['name']} (median; p10-p90 of the rounds)")
    if args.out is not None:
        atomic_write_json(args.out, {"command": "profile", "mode": "compare",
                                     "models": [str(m) for m in args.model], "deploy_modes": modes,
                                     "input_shape": list(shape), "rows": rows,
                                     "environment": environment()})
        print(f"wrote {args.out}")
    return 0


def run_single(args: argparse.Namespace) -> int:
    from workbench.models.artifacts import atomic_write_json, environment, load_model
    from workbench.core.errors import WorkbenchError
    from workbench.measure.evaluate import resolve_device
    from workbench.measure.profiling import (measure_latency, ntire_counts, ntire_latency, parse_dtype,
                                     parse_range, parse_shape, plot_sweep, sweep_trunk_widths,
                                     write_sweep_csv)

    from workbench.core.outputs import check_output_dir, check_output_file

    shape = parse_shape(args.input)
    check_output_file(args.out, "--out")
    if args.sweep:
        check_output_dir(args.sweep_dir, "--sweep-dir")
    if args.threads is not None and args.threads < 1:
        raise WorkbenchError(f"--threads must be >= 1, got {args.threads}")
    dtype = parse_dtype(args.dtype)
    if args.repeats < 1 or args.warmup < 0:
        raise WorkbenchError("--repeats must be >= 1 and --warmup >= 0")
    widths = parse_range(args.sweep) if args.sweep else None
    device = resolve_device(args.device)
    if args.deploy is not None and args.deploy != "eager":
        from workbench.measure.deploy import check_mode

        check_mode(args.deploy, device)
        if args.dtype != "fp32" or args.channels_last:
            raise WorkbenchError("--deploy sets dtype and memory format itself; drop --dtype and "
                                 "--channels-last")
    art = load_model(args.model)
    model = art.model.eval()
    if args.deploy is None and args.dtype == "fp32" and not args.channels_last:
        from workbench.measure.deploy import default_mode

        args.deploy = default_mode(device, model)  # the fastest fp32 mode of this device
    if args.deploy == "eager":
        args.deploy = None  # as is: the model in --dtype and memory format, no preparation
    if shape[1] != art.spec.in_channels:
        raise WorkbenchError(f"--input {args.input}: the model takes {art.spec.in_channels} "
                             f"channels, not {shape[1]}")
    counts = ntire_counts(model, input_shape=shape)
    report: dict = {"command": "profile", "model": str(args.model), "architecture": art.spec.to_dict(),
                    "counts": counts, "environment": environment()}
    print(f"{args.model}: {art.spec.describe()}")
    print(f"  params      {counts['params']:,}")
    print(f"  FLOPs       {counts['flops_g']:.2f} G   (NTIRE: conv MACs + LeakyReLU, input "
          f"{'x'.join(map(str, shape))})")
    print(f"  activations {counts['acts_m']:.2f} M")
    print(f"  convs       {counts['convs']}")
    common = dict(device=device, dtype=dtype, threads=args.threads, channels_last=args.channels_last)
    timed, prepared = model, False
    if args.deploy is not None and not (args.no_latency and args.ntire_folder is None):
        from workbench.measure.deploy import prepare

        timed, prepared = prepare(model, device=device, mode=args.deploy, example_shape=shape), True
        report["deploy_mode"] = args.deploy
    if not args.no_latency:
        lat = measure_latency(timed, input_shape=shape, warmup=args.warmup, repeats=args.repeats,
                              prepared=prepared, clock=args.clock, **common)
        lat["deploy_mode"] = args.deploy if prepared else "eager"
        report["latency"] = lat
        print(f"  latency     {_fmt_ms(lat)}")
        print(f"              on {lat['device']} ({lat['device_name']}), {lat['dtype']}, "
              f"{lat['threads']} threads, torch {lat['torch']}"
              + (", channels_last" if args.channels_last else "")
              + (f", deploy mode {args.deploy}" if prepared else ", deploy mode eager (as is)")
              + (", CPU-time clock" if args.clock == "cpu" else ""))
    if args.ntire_folder is not None:
        nl = ntire_latency(timed, args.ntire_folder, warmup=args.warmup, progress=True,
                           prepared=prepared, clock=args.clock, **common)
        report["ntire_latency"] = nl
        print(f"  NTIRE       mean {nl['mean_ms']:.2f} ms per image over {nl['images']} images "
              f"in {args.ntire_folder}")
    if widths is not None:
        rows = sweep_trunk_widths(art.spec, widths, input_shape=shape, warmup=min(args.warmup, 3),
                                  repeats=args.repeats, include_mid=args.sweep_mid,
                                  deploy_mode=args.deploy, clock=args.clock, **common)
        args.sweep_dir.mkdir(parents=True, exist_ok=True)
        stem = Path(str(args.model)).stem + ("_mid" if args.sweep_mid else "")
        csv_path = write_sweep_csv(rows, args.sweep_dir / f"sweep_{stem}.csv")
        png_path = plot_sweep(rows, args.sweep_dir / f"sweep_{stem}.png",
                              reference_width=art.spec.trunk)
        base = next((r for r in rows if r["width"] == art.spec.trunk), None)
        print(f"  trunk-width sweep ({len(rows)} widths, interleaved, median of {args.repeats}"
              + (f", deploy mode {args.deploy}" if args.deploy else "") + "):")
        print(f"    {'width':>5}  {'params':>9}  {'GFLOPs':>7}  {'median ms':>9}  {'p90 ms':>8}"
              + ("  vs base" if base else ""))
        for r in rows:
            rel = f"  {r['median_ms'] / base['median_ms']:.2f}x" if base else ""
            print(f"    {r['width']:>5}  {r['params']:>9,}  {r['flops_g']:>7.2f}  "
                  f"{r['median_ms']:>9.2f}  {r['p90_ms']:>8.2f}{rel}")
        print(f"  wrote {csv_path} and {png_path}")
        report["sweep"] = {"rows": rows, "csv": str(csv_path), "png": str(png_path)}
    if args.out is not None:
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
