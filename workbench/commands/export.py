"""`workbench export`: a model (pruned or not) to ONNX, checked against onnxruntime."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model to ONNX (dynamic H/W) and check it against onnxruntime"

DESCRIPTION = """\
Write the model as an ONNX graph: input 'lr' (N, 3, H, W) float32 on the 0..255 scale, output
'sr' (N, 3, s*H, s*W); batch, height and width are dynamic. With --check the file is run with
onnxruntime on real images (by default the first two images of the embedded Set5, which have
different sizes, so the dynamic axes are exercised) and compared with the PyTorch model: exit
status 1 if any output differs by more than --tolerance (default 1e-3 on the 0..255 scale).

examples:
  workbench export --model runs/prune46/04-finetune/artifact --out rlfn46.onnx --check
  workbench export --model rlfn_s_x4 --out rlfn_s_x4.onnx --opset 18
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="REF",
                        help="a model name (rlfn_s_x4), released .pth or artifact")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="ONNX file to write (atomically)")
    parser.add_argument("--opset", type=int, default=17, metavar="N",
                        help="ONNX opset version, at least 17 (default 17)")
    parser.add_argument("--check", action="store_true",
                        help="compare onnxruntime with PyTorch on real images")
    parser.add_argument("--set", default="Set5", metavar="SET",
                        help="images for --check: a set name or folder (default the embedded Set5)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="folder holding the named set")
    parser.add_argument("--images", type=int, default=2, metavar="N",
                        help="how many images of the set --check runs (default 2)")
    parser.add_argument("--tolerance", type=float, default=1e-3, metavar="T",
                        help="largest allowed |onnxruntime - torch| on the 0..255 scale")


def run(args: argparse.Namespace) -> int:
    from workbench.artifacts import load_model
    from workbench.errors import WorkbenchError
    from workbench.prune.export import check_onnx, export_onnx

    art = load_model(args.model)
    path = export_onnx(art.model, args.out, opset=args.opset)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1024:.0f} KiB, opset {args.opset}, {art.spec.describe()})")
    if not args.check:
        return 0
    from workbench.data.benchmark import load_set

    if args.images < 1:
        raise WorkbenchError(f"--images must be >= 1, got {args.images}")
    pset = load_set(args.set, art.spec.scale, data_root=args.data_root)
    images = [pair.lr for pair in list(pset)[:args.images]]
    result = check_onnx(art.model, path, images, tolerance=args.tolerance)
    for r in result["images"]:
        print(f"  input {'x'.join(map(str, r['shape']))}: max |onnxruntime - torch| = "
              f"{r['max_abs_diff']:.3g}")
    verdict = "OK" if result["ok"] else "FAILED"
    print(f"check {verdict}: max |diff| {result['max_abs_diff']:.3g} (tolerance {args.tolerance:g}, "
          f"0..255 scale)")
    return 0 if result["ok"] else 1
