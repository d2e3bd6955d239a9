"""Deploy-mode latency of an SR model on 1x3x256x256, against this CPU's measured 3x3 conv rate.

One run measures, interleaved round by round (so that background load hits every variant alike):

* the ceiling: a 3x3 convolution (stride 1, padding 1, bias) in channels_last through oneDNN, with
  the model's trunk width in and out at the benchmarked input size -- the bulk of an RLFN's work,
  so no fp32 forward can be faster per FLOP. (MKL's fp32 GEMM is much slower than oneDNN's conv on
  these CPUs, so it is no ceiling; it is kept as an extra column.)
* each inference mode of :mod:`workbench.measure.deploy` on a 1x3xSxS input.

It prints median latency, achieved GFLOP/s (2 x conv multiply-accumulates / time, MACs counted by
:func:`workbench.measure.profiling.conv_macs`), that rate as a fraction of the measured conv rate (median
over median, the per-round median of ratios, and best over best), the fraction of the GEMM rate,
the speed-up over eager, and the largest output difference in gray levels against fp32 eager on
real image content (SxS crops of the embedded Set5 HR images, the benchmarked shape, so compiled
modes need no recompilation).

    python bench/bench_deploy.py                       # eager, channels_last, fused, compile
    python bench/bench_deploy.py --modes fused compile bf16 int8 --rounds 10
    python bench/bench_deploy.py --rounds 30 --threads 2 --json bench_deploy.json

Absolute times depend on what else runs on the machine; the ratios are measured side by side.
Target (issue 11): the best fp32 deploy mode reaches at least 85% of the measured conv rate.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.models.artifacts import atomic_write_json, environment, load_model  # noqa: E402
from workbench.measure.deploy import INT8_MODES, max_gray_diff, prepare  # noqa: E402
from workbench.measure.profiling import conv_macs, device_name  # noqa: E402

FP32_MODES = {"eager", "channels_last", "fused", "compile", "cuda_graph"}
TARGET_OF_CONV = 0.85


def gemm_runner(n: int):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)

    def run() -> None:
        torch.mm(a, b, out=out)

    return run


def conv_runner(width: int, size: int):
    """One 3x3 conv, width -> width channels on a 1 x width x size x size channels_last input."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, width, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(width, width, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
    b = torch.randn(width, generator=gen)

    def run() -> None:
        F.conv2d(x, w, b, padding=1)

    return run, 2.0 * width * width * 9 * size * size


def real_crops(size: int = 256) -> list[np.ndarray]:
    """Centre crops of size x size from the embedded Set5 HR images that are large enough."""
    from workbench.data.benchmark import load_set

    crops = []
    for pair in load_set("Set5", 1):
        h, w = pair.hr.shape[:2]
        if h >= size and w >= size:
            top, left = (h - size) // 2, (w - size) // 2
            crops.append(np.ascontiguousarray(pair.hr[top:top + size, left:left + size]))
    return crops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="rlfn_ntire_x4")
    ap.add_argument("--modes", nargs="+", default=["eager", "channels_last", "fused", "compile"])
    ap.add_argument("--size", type=int, default=256, help="input height and width (default 256)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (each times every variant)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gemm-n", type=int, default=2048, help="GEMM size N for the extra GEMM column "
                    "(0: skip it)")
    ap.add_argument("--conv-width", type=int, default=None,
                    help="channels of the ceiling conv (default: the model's trunk width)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter (the target's clock); cpu: process CPU time, which "
                         "hardly moves when other processes load the machine (use with --threads 1)")
    ap.add_argument("--calibration", type=Path, default=None,
                    help="int8: folder of training images for 16 PTQ calibration crops of 48x48 LR "
                         "(default: the shipped T91 samples)")
    ap.add_argument("--no-check", action="store_true", help="skip the gray-level check")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    art = load_model(args.model)
    model = art.model.eval()
    shape = (1, 3, args.size, args.size)
    macs = conv_macs(model, input_shape=shape)
    gen = torch.Generator().manual_seed(0)
    from workbench.models.family import model_input

    x = model_input(model, torch.rand(shape, generator=gen) * 255)  # the family's input range
    calibration = None
    if set(args.modes) & set(INT8_MODES) and args.calibration is not None:
        from workbench.data.images import list_images
        from workbench.measure.quantize import calibration_crops

        calibration = calibration_crops(list_images(args.calibration), scale=int(model.scale),
                                        count=16, lr_size=48)

    variants = {}
    prep_s = {}
    for mode in args.modes:
        t0 = time.perf_counter()
        variants[mode] = prepare(model, device="cpu", mode=mode, example_shape=shape,
                                 calibration=calibration if mode in INT8_MODES else None)
        prep_s[mode] = time.perf_counter() - t0
        print(f"prepared {mode:<14} in {prep_s[mode]:6.1f} s", file=sys.stderr, flush=True)

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    spec = getattr(model, "spec", None)
    # the trunk width: RLFN's trunk, SPAN's feature, else 48
    width = args.conv_width or int(getattr(spec, "trunk", None) or getattr(spec, "feature", None) or 48)
    conv, conv_flop = conv_runner(width, args.size)
    refs = {"conv": conv}
    gemm_flop = 2.0 * args.gemm_n ** 3
    if args.gemm_n:
        refs["gemm"] = gemm_runner(args.gemm_n)
    times: dict[str, list[float]] = {**{k: [] for k in refs}, **{m: [] for m in variants}}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for ref in refs.values():
                ref()
            for dep in variants.values():
                dep(x)
        for r in range(args.rounds):
            for key, ref in refs.items():
                t0 = clock()
                ref()
                times[key].append(clock() - t0)
            for mode, dep in variants.items():
                t0 = clock()
                dep(x)
                times[mode].append(clock() - t0)
            print(f"\rround {r + 1}/{args.rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    conv_rate = conv_flop / statistics.median(times["conv"]) / 1e9
    gemm_rate = gemm_flop / statistics.median(times["gemm"]) / 1e9 if "gemm" in times else None
    # per-round ratio to that round's conv rate: robust to load that changes between rounds
    rows = []
    eager_med = statistics.median(times["eager"]) if "eager" in times else None
    crops = [] if args.no_check else real_crops(args.size)
    for mode in variants:
        med = statistics.median(times[mode])
        rate = 2.0 * macs / med / 1e9
        per_round = [(2.0 * macs / t) / (conv_flop / c) for t, c in zip(times[mode], times["conv"])]
        diff = max_gray_diff(model, variants[mode], crops)["max"] if crops else None
        rows.append({"mode": mode, "median_ms": med * 1e3, "min_ms": min(times[mode]) * 1e3,
                     "gflops": rate, "of_conv": rate / conv_rate,
                     "of_conv_best": (2.0 * macs / min(times[mode])) / (conv_flop / min(times["conv"])),
                     "of_conv_per_round_median": statistics.median(per_round),
                     "of_gemm": rate / gemm_rate if gemm_rate else None,
                     "speedup_vs_eager": (eager_med / med) if eager_med else None,
                     "max_gray_diff": diff, "prepare_s": prep_s[mode]})

    print(f"{args.model} on 1x3x{args.size}x{args.size}, {args.threads} threads, "
          f"{device_name('cpu')}, torch {torch.__version__}")
    print(f"conv MACs {macs / 1e9:.3f} G -> {2 * macs / 1e9:.3f} GFLOP per forward; "
          f"rounds {args.rounds} (interleaved), {args.clock} clock; load average before: "
          f"{load_before}")
    print(f"ceiling: 3x3 conv {width}->{width} on 1x{width}x{args.size}x{args.size} channels_last "
          f"(oneDNN): median {statistics.median(times['conv']) * 1e3:.2f} ms = {conv_rate:.1f} GFLOP/s "
          f"(best run {conv_flop / min(times['conv']) / 1e9:.1f})")
    if gemm_rate:
        print(f"fp32 GEMM {args.gemm_n}x{args.gemm_n} (extra column): median "
              f"{statistics.median(times['gemm']) * 1e3:.1f} ms = {gemm_rate:.1f} GFLOP/s")
    print("of conv: median rate / median conv rate; per-round: median of each round's ratio; "
          "best/best: fastest run / fastest conv (least disturbed by other load)")
    head = (f"{'mode':<14} {'median ms':>9} {'min ms':>8} {'GFLOP/s':>8} {'of conv':>8} "
            f"{'(per-round)':>11} {'(best/best)':>11} {'of GEMM':>8} {'vs eager':>8} {'gray diff':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        sp = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-"
        gd = "-" if r["max_gray_diff"] is None else str(r["max_gray_diff"])
        og = f"{r['of_gemm']:.1%}" if r["of_gemm"] is not None else "-"
        print(f"{r['mode']:<14} {r['median_ms']:>9.1f} {r['min_ms']:>8.1f} {r['gflops']:>8.1f} "
              f"{r['of_conv']:>7.1%} {r['of_conv_per_round_median']:>10.1%} "
              f"{r['of_conv_best']:>10.1%} {og:>8} {sp:>8} {gd:>9}")
    fp32 = [r for r in rows if r["mode"] in FP32_MODES and r["mode"] != "eager"]
    if fp32:
        best = max(fp32, key=lambda r: r["of_conv_per_round_median"])
        verdict = "meets" if best["of_conv_per_round_median"] >= TARGET_OF_CONV else "misses"
        print(f"best fp32 deploy: {best['mode']} at {best['of_conv_per_round_median']:.1%} of the conv "
              f"rate per round ({verdict} the {TARGET_OF_CONV:.0%} target)")
    if args.json is not None:
        atomic_write_json(args.json, {"model": args.model, "input_shape": list(shape),
                                      "threads": args.threads, "conv_macs": macs,
                                      "clock": args.clock, "load_before": load_before,
                                      "conv_width": width, "conv_gflops": conv_rate,
                                      "gemm_n": args.gemm_n, "gemm_gflops": gemm_rate,
                                      "rows": rows, "times_s": times, "environment": environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
