"""Every CUDA path of the workbench once, as one table (at most a few minutes on a GPU).

Rows (each CUDA row needs ``torch.cuda.is_available()``; without a GPU it is skipped with the
reason, so the script is a dry run on CPU that still checks its own plumbing):

* ``eval cuda == cpu``: Set5 PSNR-Y on CUDA and on CPU, and the largest SR pixel difference
  between them (must be within one gray level);
* ``latency (CUDA events)`` and ``NTIRE protocol``: :func:`workbench.measure.profiling.measure_latency`
  (CUDA events + synchronise) and :func:`workbench.measure.profiling.ntire_latency` on Set5's LR images;
* ``deploy <mode>``: channels_last, fp16 and cuda_graph (fp32 and fp16) from
  :mod:`workbench.measure.deploy`, each with its Set5 PSNR-Y, its gray-level difference from fp32 eager
  and its latency;
* ``train AMP``: 20 iterations of :func:`workbench.train.loop.fit` with bf16 and fp16 autocast
  on random patches (finite loss, weights changed);
* ``int8``: the workbench's int8 path is the CPU x86 one (torchao PT2E + inductor); there is no
  CUDA int8 path, so the row says so.

    python bench/gpu_check.py                       # rlfn_s_x4 on Set5 (embedded)
    python bench/gpu_check.py --model rlfn_ntire_x4 --json gpu_check.json

Exit status 0 when every row that ran passed (skipped rows do not fail), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.models.artifacts import environment, load_model  # noqa: E402

NO_CUDA = "skipped: no CUDA device (torch.cuda.is_available() is False)"


def _psnr_y(model, pset) -> float:
    from workbench.measure.evaluate import evaluate_set

    return float(evaluate_set(model, pset, progress=False).mean["psnr_y"])


def _sr_all(model, pset, device) -> list[np.ndarray]:
    from workbench.measure.evaluate import super_resolve

    return [super_resolve(model, p.lr, device=device) for p in pset]


def row_eval(ctx: dict) -> dict:
    from workbench.measure.evaluate import evaluate_set

    model, pset = ctx["model"], ctx["set"]
    cpu = evaluate_set(model, pset, device="cpu", progress=False).mean["psnr_y"]
    gpu = evaluate_set(model, pset, device="cuda", progress=False).mean["psnr_y"]
    diff = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
               for a, b in zip(_sr_all(model, pset, "cpu"), _sr_all(model, pset, "cuda")))
    return {"ok": diff <= 1, "value": f"PSNR-Y cuda {gpu:.4f} / cpu {cpu:.4f} dB",
            "note": f"max SR difference {diff} gray level(s) (<= 1 required)"}


def row_latency(ctx: dict) -> dict:
    from workbench.measure.profiling import measure_latency

    lat = measure_latency(ctx["model"], input_shape=(1, 3, 256, 256), device="cuda", warmup=5,
                          repeats=20)
    return {"ok": lat["median_ms"] > 0, "value": f"{lat['median_ms']:.2f} ms median",
            "note": f"p90 {lat['p90_ms']:.2f} ms, 1x3x256x256 fp32, CUDA events"}


def row_ntire(ctx: dict) -> dict:
    from workbench.measure.profiling import ntire_latency

    lat = ntire_latency(ctx["model"], ctx["set"], device="cuda")
    ms = lat.get("mean_ms", lat.get("median_ms"))
    return {"ok": ms is not None and ms > 0, "value": f"{ms:.2f} ms per image",
            "note": f"mean over {len(ctx['set'])} {ctx['set_name']} LR images"}


def make_deploy_row(mode: str, dtype: str | None = None) -> Callable[[dict], dict]:
    def run(ctx: dict) -> dict:
        from workbench.measure.deploy import max_gray_diff, prepare
        from workbench.measure.profiling import measure_latency

        model, pset = ctx["model"], ctx["set"]
        dep = prepare(model, device="cuda", mode=mode, dtype=dtype, example_shape=(1, 3, 256, 256))
        psnr = _psnr_y(dep, pset)
        diff = max_gray_diff(model, dep, pset, device="cuda")["max"]
        lat = measure_latency(dep, input_shape=(1, 3, 256, 256), device="cuda", prepared=True,
                              warmup=3, repeats=20)
        drop = psnr - ctx["psnr_fp32"]
        fp32 = mode in ("channels_last", "cuda_graph") and dtype is None
        ok = diff <= 1 if fp32 else abs(drop) <= 0.05
        return {"ok": ok, "value": f"PSNR-Y {psnr:.4f} dB ({drop:+.4f}), {lat['median_ms']:.2f} ms",
                "note": f"max {diff} gray level(s) from fp32 eager"
                        + (" (<= 1 required)" if fp32 else " (judged by PSNR: |drop| <= 0.05 dB)")}

    return run


def make_amp_row(amp: str) -> Callable[[dict], dict]:
    def run(ctx: dict) -> dict:
        from workbench.models import create_model
        from workbench.train.loop import TrainSettings, fit

        torch.manual_seed(0)
        model = create_model("rlfn_tiny_x4")
        before = [p.detach().clone() for p in model.parameters()]
        gen = torch.Generator().manual_seed(0)
        hr = torch.rand(16, 3, 96, 96, generator=gen) * 255
        lr = torch.nn.functional.avg_pool2d(hr, 4)
        data = [(lr[i], hr[i]) for i in range(16)]
        settings = TrainSettings(iterations=20, batch_size=4, patch_size=96, lr=1e-4,
                                 checkpoint_every=0, log_every=10, amp=amp)
        metrics = fit(model, data, settings=settings, device=torch.device("cuda"), seed=0,
                      progress=False)
        changed = any(not torch.equal(a, b.cpu()) for a, b in zip(before, model.parameters()))
        loss = float(metrics["loss"])
        return {"ok": bool(np.isfinite(loss)) and changed, "value": f"loss {loss:.4g} after 20 it",
                "note": f"autocast {amp}, {metrics.get('seconds', float('nan')):.1f} s"}

    return run


def row_int8(ctx: dict) -> dict:
    return {"ok": None, "value": "-",
            "note": "skipped: int8 is the CPU x86 path (torchao PT2E + inductor, deploy mode int8); "
                    "no CUDA int8 path in workbench.measure.deploy"}


ROWS: list[tuple[str, Callable[[dict], dict], bool]] = [
    ("eval cuda == cpu", row_eval, True),
    ("latency (CUDA events)", row_latency, True),
    ("NTIRE protocol", row_ntire, True),
    ("deploy channels_last", make_deploy_row("channels_last"), True),
    ("deploy fp16", make_deploy_row("fp16"), True),
    ("deploy cuda_graph", make_deploy_row("cuda_graph"), True),
    ("deploy cuda_graph fp16", make_deploy_row("cuda_graph", "fp16"), True),
    ("train AMP bf16 (20 it)", make_amp_row("bf16"), True),
    ("train AMP fp16 (20 it)", make_amp_row("fp16"), True),
    ("int8", row_int8, False),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="rlfn_s_x4")
    ap.add_argument("--set", default="Set5", help="evaluation set (default: the embedded Set5)")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = ap.parse_args(argv)

    from workbench.data.benchmark import load_set

    cuda = torch.cuda.is_available()
    art = load_model(args.model)
    model = art.model.eval()
    pset = load_set(args.set, art.spec.scale, data_root=args.data_root)
    ctx: dict[str, Any] = {"model": model, "set": pset, "set_name": args.set}
    if cuda:
        ctx["psnr_fp32"] = _psnr_y(model.cuda(), pset)
        model.cpu()
    results = []
    t_all = time.perf_counter()
    for name, fn, needs_cuda in ROWS:
        t0 = time.perf_counter()
        if needs_cuda and not cuda:
            res = {"ok": None, "value": "-", "note": NO_CUDA}
        else:
            try:
                res = fn(ctx)
            except Exception as exc:  # a failing row is reported, the others still run
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                res = {"ok": False, "value": "error", "note": f"{type(exc).__name__}: {line}"}
                traceback.print_exc(file=sys.stderr)
        res.update(row=name, seconds=time.perf_counter() - t0)
        results.append(res)

    device = torch.cuda.get_device_name(0) if cuda else "no CUDA device (dry run)"
    print(f"gpu_check: {args.model} on {args.set}, {device}, torch {torch.__version__}"
          f"{', CUDA ' + str(torch.version.cuda) if cuda else ''}")
    head = f"{'row':<24} {'result':<7} {'value':<42} note"
    print(head)
    print("-" * len(head))
    for r in results:
        status = {True: "pass", False: "FAIL", None: "skip"}[r["ok"]]
        print(f"{r['row']:<24} {status:<7} {r['value']:<42} {r['note']}")
    failed = [r["row"] for r in results if r["ok"] is False]
    ran = sum(r["ok"] is not None for r in results)
    print(f"{ran} row(s) ran, {len(results) - ran} skipped, {len(failed)} failed "
          f"in {time.perf_counter() - t_all:.1f} s")
    if args.json is not None:
        from workbench.core.files import atomic_write_json

        atomic_write_json(args.json, {"model": args.model, "set": args.set, "cuda": cuda,
                                      "device": device, "rows": results,
                                      "environment": environment()})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
