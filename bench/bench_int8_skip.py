"""Which layers should int8 keep fp32? PTQ Set5 PSNR-Y of a model for several fp32 choices.

Each choice is calibrated on the same training crops (16 of 48x48 LR, one per image) and the
converted graph is scored as quantize/dequantize arithmetic (no compile: the same numbers deploy
mode int8 compiles). ``default`` is the family's declaration (``Family.int8_fp32``).

    python bench/bench_int8_skip.py --model span_ch28_x4 --images ../shared/data/T91 \\
        --choice conv_1,upsampler.0 --choice conv_1,upsampler.0,conv_cat
    python bench/bench_int8_skip.py --model span_ch28_x4 --images ../shared/data/T91 --single

``--single`` quantizes one conv at a time (every other conv fp32): what each layer costs alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.data.benchmark import load_set  # noqa: E402
from workbench.data.images import list_images  # noqa: E402
from workbench.measure.evaluate import evaluate_set  # noqa: E402
from workbench.measure.quantize import (GraphRunner, QuantConfig, calibration_crops,  # noqa: E402
                                        default_skip, quantize_ptq)
from workbench.models.artifacts import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="span_ch28_x4")
    ap.add_argument("--images", type=Path, default=None,
                    help="training images for calibration (default: the shipped T91 samples)")
    ap.add_argument("--set", default="Set5")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--choice", action="append", default=[],
                    help="comma-separated module patterns kept fp32 (repeatable; '' = none)")
    ap.add_argument("--single", action="store_true", help="one conv int8 at a time")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = load_model(args.model).model.eval()
    files = list_images(args.images) if args.images else None
    crops = calibration_crops(files, scale=int(model.scale), count=16, lr_size=48)
    pset = load_set(args.set, int(model.scale), data_root=args.data_root)
    fp32 = evaluate_set(model, pset, progress=False).mean["psnr_y"]
    choices: dict[str, tuple[str, ...] | None] = {"default": None}
    for c in args.choice:
        choices[c or "(none)"] = tuple(p for p in c.split(",") if p)
    if args.single:
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        for c in convs:
            choices[f"only {c} int8"] = tuple(x for x in convs if x != c)
    print(f"{args.model} PTQ on {len(crops)} crops; {pset.name} PSNR-Y fp32 {fp32:.4f}; "
          f"default fp32 layers {default_skip(model)}")
    for name, skip in choices.items():
        t0 = time.perf_counter()
        converted, _ = quantize_ptq(model, crops, QuantConfig(skip=skip))
        psnr = evaluate_set(GraphRunner(converted), pset, progress=False).mean["psnr_y"]
        print(f"{name:48s} {psnr:8.4f} ({psnr - fp32:+.4f} dB)  {time.perf_counter() - t0:5.1f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
