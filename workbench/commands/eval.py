"""`workbench eval`: PSNR/SSIM (Y, scale-pixel border) and RGB PSNR on benchmark sets."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate models on benchmark sets (Y-PSNR/SSIM as in the paper, RGB PSNR as in NTIRE)"

DESCRIPTION = """\
Evaluate one or more models on benchmark sets and print, per image and as set means:
  PSNR-Y and SSIM-Y  MATLAB rgb2ycbcr luma, `scale` pixels cropped at every border
                     (the protocol of the RLFN paper's Table 1);
  PSNR-RGB           all three channels, same crop (the NTIRE 2022 challenge's protocol).
The model's output is clamped to 0..255 and rounded to uint8 before scoring.

With neither --sets nor --data-root the embedded Set5 is used (no download needed).

examples:
  workbench eval --model rlfn_s_x4
  workbench eval --model rlfn_x4 runs/ntire22/05-sfp/artifact --sets Set5 Set14 \\
      --data-root ../shared/data --out results.json --save-sr sr/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", required=True, metavar="REF",
                        help="model(s) to evaluate: a name (rlfn_s_x4), a released .pth, a "
                             "single-file artifact or an artifact folder")
    parser.add_argument("--sets", nargs="+", default=None, metavar="SET",
                        help="set names under --data-root (Set5, Set14, ...) or set folders "
                             "holding HR/ and LR_bicubic/X<s>/ (default: Set5)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="folder holding the named sets (default: the embedded Set5 only)")
    parser.add_argument("--save-sr", type=Path, default=None, metavar="DIR",
                        help="also write the SR images as DIR/<model>/<set>/x<s>/<image>.png")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="write all results (per image and means, with the environment) as JSON")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run the model (default: auto = CUDA if available)")
    parser.add_argument("--deploy", default=None, metavar="MODE",
                        help="evaluate the model as prepared by workbench.measure.deploy in MODE "
                             "(channels_last, fused, compile, bf16, ...) to check what deploying "
                             "costs in quality; a reduced precision (bf16, fp16) is judged against "
                             "fp32: accepted when PSNR-Y drops by at most 0.01 dB on each set")
    parser.add_argument("--summary", action="store_true",
                        help="print only the set means, not one row per image")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _labels(refs: list[str]) -> list[str]:
    """Short unique names for the models: a run's stage artifact (runs/R/03-sfp/artifact) is
    "R/sfp", a file its stem, a model name itself."""
    import re

    labels: list[str] = []
    for ref in refs:
        p = Path(ref)
        base = p.stem if p.suffix in (".pt", ".pth") else (p.name or str(ref))
        if p.name == "artifact" and p.parent.name:
            stage = re.sub(r"^\d+-", "", p.parent.name)
            run = p.parent.parent.name
            base = f"{run}/{stage}" if run else stage
        label, n = base, 2
        while label in labels:
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


def run(args: argparse.Namespace) -> int:
    from workbench.models.artifacts import atomic_write_json, environment, load_model
    from workbench.measure.evaluate import evaluate, format_table, resolve_device, results_to_json

    from workbench.core.outputs import check_output_dir, check_output_file

    check_output_file(args.out, "--out")
    check_output_dir(args.save_sr, "--save-sr")
    device = resolve_device(args.device)
    if args.deploy is not None:
        from workbench.measure.deploy import check_mode, prepare

        check_mode(args.deploy, device)
    from workbench.measure.deploy import REDUCED_PRECISION, judge_precision
    sets = args.sets or ["Set5"]
    # Load every model first so that a bad file fails before any evaluation work.
    arts = [load_model(ref) for ref in args.model]
    report: dict = {"command": "eval", "device": str(device), "sets": [str(s) for s in sets],
                    "data_root": str(args.data_root) if args.data_root else "embedded",
                    "environment": environment(), "models": {}}
    for label, ref, art in zip(_labels(args.model), args.model, arts):
        save_dir = args.save_sr / label if args.save_sr is not None else None
        model = art.model
        if args.deploy is not None:
            model = prepare(model, device=device, mode=args.deploy, example_shape=None)
        results = evaluate(model, sets, scale=art.spec.scale, data_root=args.data_root,
                           device=device, save_dir=save_dir, progress=not args.no_progress)
        print(f"== {label}: {art.spec.describe()}, "
              f"{sum(p.numel() for p in art.model.parameters()):,} params"
              + (f", deploy mode {args.deploy}" if args.deploy else ""))
        print(format_table(results, per_image=not args.summary))
        precision = {}
        if args.deploy in REDUCED_PRECISION:
            from workbench.data.benchmark import load_set

            for set_ref in sets:
                pset = load_set(set_ref, art.spec.scale, data_root=args.data_root)
                j = judge_precision(art.model, args.deploy, pset, device=device)
                precision[j["set"]] = j
                print(f"{args.deploy} vs fp32 on {j['set']}: PSNR-Y {j['psnr_mode']:.3f} vs "
                      f"{j['psnr_fp32']:.3f} dB ({-j['drop']:+.4f} dB), max pixel difference "
                      f"{j['max_gray_diff']} gray levels: "
                      + ("accepted" if j["accepted"] else "REJECTED")
                      + f" (limit {j['max_drop_db']:g} dB drop)")
        print()
        report["models"][label] = {
            "ref": str(ref), "path": str(art.path) if art.path else None,
            "deploy_mode": args.deploy or "eager",
            "architecture": art.spec.to_dict(),
            "params": sum(p.numel() for p in art.model.parameters()),
            "weights_sha256": art.weights_sha256,
            "sets": results_to_json(results),
        }
        if precision:
            report["models"][label]["precision"] = precision
    if args.out is not None:
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
