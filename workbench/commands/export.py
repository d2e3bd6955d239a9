"""`workbench export`: a model (pruned or not) to ONNX, checked against onnxruntime."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model to ONNX (dynamic H/W) and check it against onnxruntime"

DESCRIPTION = """\
Write the model as an ONNX graph: input 'lr' (N, 3, H, W) float32 on the 0..255 scale, output
'sr' (N, 3, s*H, s*W); batch, height and width are dynamic. With --check the file is run with
onnxruntime on real images (by default the first two images of the embedded Set5, which have
different sizes, so the dynamic axes are exercised) and compared with the PyTorch model on what is
delivered (outputs clamped and rounded to uint8): exit status 1 if any pixel differs by more than
--tolerance gray levels (default 1; a float difference of 0.002 can flip one rounding).

With --int8 the model must be an int8 artifact (the quantize stage's: model.pt + quant.pt) and the
file is its QDQ form (opset 18 or newer): int8 per-channel weights behind DequantizeLinear,
QuantizeLinear/DequantizeLinear pairs with the learned activation scales and zero-points, the
layers the quantization config keeps fp32 as fp32 convs (workbench.measure.quantize_onnx). --check then
scores onnxruntime on every image of --set (PSNR-Y) beside torch int8 (the converted graph of
deploy mode int8, q/dq arithmetic) and fp32, prints the largest gray-level difference ORT vs
torch int8, and fails (exit 2) when the two PSNR-Y differ by more than 0.05 dB.

examples:
  workbench export --model runs/prune46/04-finetune/artifact --out rlfn46.onnx --check
  workbench export --model rlfn_s_x4 --out rlfn_s_x4.onnx --opset 18
  workbench export --model bench/results/rlfn_s-int8/artifact --int8 --out rlfn_s_int8.onnx --check
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="REF",
                        help="a model name (rlfn_s_x4), released .pth or artifact")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="ONNX file to write (atomically)")
    parser.add_argument("--opset", type=int, default=None, metavar="N",
                        help="ONNX opset version, from 17 to the newest the installed torch "
                             "exporter writes (default 17; with --int8 18, its minimum)")
    parser.add_argument("--int8", action="store_true",
                        help="export an int8 artifact in QDQ form (see above)")
    parser.add_argument("--check", action="store_true",
                        help="compare onnxruntime with PyTorch on real images")
    parser.add_argument("--set", default="Set5", metavar="SET",
                        help="images for --check: a set name or folder (default the embedded Set5)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="folder holding the named set")
    parser.add_argument("--images", type=int, default=None, metavar="N",
                        help="how many images of the set --check runs (default 2; with --int8 "
                             "all)")
    parser.add_argument("--tolerance", type=int, default=1, metavar="LEVELS",
                        help="largest allowed |onnxruntime - torch| in gray levels of the uint8 "
                             "outputs (default 1)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from workbench.models.artifacts import load_model
    from workbench.core.errors import WorkbenchError
    from workbench.prune.export import check_onnx, export_onnx

    from workbench.core.outputs import check_output_file
    from workbench.prune.export import check_opset

    if args.int8:
        return _run_int8(args)
    args.opset = 17 if args.opset is None else args.opset
    args.images = 2 if args.images is None else args.images
    check_opset(args.opset)
    if args.tolerance < 0:
        raise WorkbenchError(f"--tolerance must be >= 0 gray levels, got {args.tolerance}")
    if args.images < 1:
        raise WorkbenchError(f"--images must be >= 1, got {args.images}")
    check_output_file(args.out, "--out")
    art = load_model(args.model)
    path = export_onnx(art.model, args.out, opset=args.opset)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1024:.0f} KiB, opset {args.opset}, {art.spec.describe()})")
    if not args.check:
        return 0
    from workbench.data.benchmark import load_set

    pset = load_set(args.set, art.spec.scale, data_root=args.data_root)
    pairs = list(pset)[:args.images]
    from workbench.models import MIN_LR_SIZE

    for pair in pairs:
        h, w = np.asarray(pair.lr).shape[:2]
        if min(h, w) < MIN_LR_SIZE:
            where = pair.lr_file or pair.hr_file or f"{pset.name}/{pair.name}"
            raise WorkbenchError(f"{where}: LR image is {w}x{h}; RLFN needs at least "
                                 f"{MIN_LR_SIZE}x{MIN_LR_SIZE} to check the export on")
    images = [pair.lr for pair in pairs]
    result = check_onnx(art.model, path, images, tolerance=args.tolerance)
    for r in result["images"]:
        print(f"  input {'x'.join(map(str, r['shape']))}: max |onnxruntime - torch| = "
              f"{r['max_gray_diff']} gray levels ({r['max_abs_diff']:.3g} before rounding)")
    verdict = "OK" if result["ok"] else "FAILED"
    print(f"check {verdict}: max |diff| {result['max_gray_diff']} gray levels of the uint8 output "
          f"(tolerance {args.tolerance}; {result['max_abs_diff']:.3g} on the 0..255 scale before "
          "rounding)")
    return 0 if result["ok"] else 1


def _run_int8(args: argparse.Namespace) -> int:
    """``--int8``: QDQ export of an int8 artifact; ``--check`` judges it by PSNR-Y."""
    from workbench.models.artifacts import load_model
    from workbench.core.errors import WorkbenchError
    from workbench.core.outputs import check_output_file
    from workbench.measure.quantize_onnx import (INT8_MIN_OPSET, MAX_PSNR_GAP_DB, check_int8_onnx,
                                         export_int8_onnx)

    opset = INT8_MIN_OPSET if args.opset is None else args.opset
    if args.images is not None and args.images < 1:
        raise WorkbenchError(f"--images must be >= 1, got {args.images}")
    check_output_file(args.out, "--out")
    art = load_model(args.model)
    if getattr(art.model, "quantization", None) is None:
        raise WorkbenchError(f"{args.model}: --int8 needs an int8 artifact (model.pt + quant.pt "
                             "from the quantize stage); this model has no quantization state")
    info = export_int8_onnx(art.model, args.out, opset=opset)
    print(f"wrote {info['path']} ({info['size'] / 1024:.0f} KiB, opset {opset}, QDQ: "
          f"{info['int8_convs']} int8 convs, {len(info['fp32_convs'])} fp32, "
          f"{info['quantize']} QuantizeLinear, {info['dequantize']} DequantizeLinear; "
          f"{art.spec.describe()})")
    if not args.check:
        return 0
    from workbench.data.benchmark import load_set

    pset = load_set(args.set, art.spec.scale, data_root=args.data_root)
    if args.images is not None:
        from workbench.data.benchmark import PairedSet

        pset = PairedSet(name=pset.name, scale=pset.scale, root=None,
                         pairs=list(pset)[:args.images])
    r = check_int8_onnx(art.model, info["path"], pset, max_gap_db=MAX_PSNR_GAP_DB)
    p = r["psnr_y"]
    print(f"  {r['set']} ({r['images']} images) PSNR-Y: onnxruntime {p['onnxruntime']:.3f} dB, "
          f"torch int8 {p['torch_int8']:.3f} ({r['gap_db']:+.4f}), fp32 {p['fp32']:.3f} "
          f"(ORT {r['vs_fp32_db']:+.4f})")
    print(f"  max |onnxruntime - torch int8| = {r['max_gray_diff']} gray levels of the uint8 "
          "output (reported; PSNR-Y decides)")
    if not r["ok"]:
        raise WorkbenchError(f"int8 ONNX check failed: onnxruntime PSNR-Y {p['onnxruntime']:.3f} "
                             f"dB differs from torch int8 {p['torch_int8']:.3f} by "
                             f"{abs(r['gap_db']):.3f} dB (> {MAX_PSNR_GAP_DB})")
    print(f"check OK: |PSNR-Y gap| {abs(r['gap_db']):.4f} dB <= {MAX_PSNR_GAP_DB}")
    return 0
