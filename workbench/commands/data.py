"""`workbench data`: download training sets, make MATLAB-bicubic LR images, check a data set."""
from __future__ import annotations

import argparse
from pathlib import Path

from workbench.core.errors import WorkbenchError

HELP = "download DIV2K/Flickr2K/BSDS500, make bicubic LR images, check a data set"
DESCRIPTION = """\
Data sets for training and evaluation.

  workbench data download div2k [--root DIR] [--scales 2 3 4] [--no-valid]
      Download the DIV2K train (and valid) HR and bicubic LR zips from the ETH/CVL DIV2K site,
      resume interrupted downloads, verify SHA-256 checksums and unpack into
      DIR/DIV2K_train_HR, DIR/DIV2K_train_LR_bicubic/X<s>, ... (the 'div2k' training layout).
  workbench data download flickr2k [--root DIR]
      Download Flickr2K.tar (2650 images, HR and LR) and unpack into DIR/Flickr2K/.
  workbench data download bsds500 [--root DIR]
      Download Berkeley's BSR_bsds500.tgz (71 MB, SHA-256 verified) and unpack only its images,
      JPEG as in the archive: the 200 train images into DIR/BSD200/ and the 200 test images into
      DIR/BSDS500-test200/ (with T91, the 491 images of the 'folder' layout). The 100 val images
      (= B100, an evaluation set) are not unpacked. Non-commercial research and education only.
      Running any of these again finds the folders and does nothing.
  workbench data make-lr HR_DIR OUT_DIR --scale S
      Write OUT_DIR/<name>x<S>.png for every HR image: MATLAB imresize(HR, 1/S, 'bicubic') of the
      image mod-cropped to S (the way benchmark LR images are made).
  workbench data check SET --scale S [--data-root DIR]
      Load a set as evaluation does (name, benchmark or DIV2K layout, plain folder) and report it.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")

    dl = sub.add_parser("download", help="download, verify and unpack DIV2K, Flickr2K or BSDS500",
                        description="Download a training set with resume and checksum verification, "
                                    "and unpack it into the layout training expects.")
    dl.add_argument("dataset", choices=["div2k", "flickr2k", "bsds500"], help="which data set")
    dl.add_argument("--root", type=Path, default=Path("datasets"),
                    help="folder to unpack into (default: ./datasets)")
    dl.add_argument("--url", default=None,
                    help="fetch from this mirror instead of the official host: a base URL "
                         "(archives are fetched as URL/<archive name>) or the full URL of one archive")
    dl.add_argument("--checksum", default=None,
                    help="expected checksum of the (single) archive to fetch: sha256:HEX, md5:HEX or "
                         "a bare hex digest; overrides the recorded one")
    dl.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4],
                    help="DIV2K bicubic LR scales to fetch (default: 2 3 4)")
    dl.add_argument("--no-valid", action="store_true", help="DIV2K: skip the validation split")
    dl.add_argument("--keep-archives", action="store_true",
                    help="keep the downloaded archives after unpacking (default: delete them)")
    dl.add_argument("--retries", type=int, default=3,
                    help="resume an interrupted transfer this many times before giving up (default: 3)")
    dl.add_argument("--timeout", type=float, default=60.0,
                    help="seconds without data before a connection counts as interrupted (default: 60)")

    mk = sub.add_parser("make-lr", help="write MATLAB-bicubic LR images for a folder of HR images",
                        description="Make LR images the benchmark way: each HR image is mod-cropped to "
                                    "the scale and resized by 1/scale with MATLAB's bicubic imresize.")
    mk.add_argument("hr_dir", type=Path, metavar="HR_DIR", help="folder of HR images")
    mk.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for <name>x<S>.png")
    mk.add_argument("--scale", type=int, required=True, help="downscaling factor S (2, 3, 4, ...)")
    mk.add_argument("--overwrite", action="store_true",
                    help="rewrite LR files that already exist (default: keep them)")

    ck = sub.add_parser("check", help="load a data set as evaluation does and report it",
                        description="Load SET (a set name, a benchmark/DIV2K folder or a folder of HR "
                                    "images) at the scale and report images and sizes; any problem is "
                                    "an error naming the file.")
    ck.add_argument("set", metavar="SET", help="set name (Set5 is embedded) or folder")
    ck.add_argument("--scale", type=int, required=True, help="SR scale")
    ck.add_argument("--data-root", type=Path, default=None, help="folder holding named sets")
    ck.add_argument("--no-make-lr", action="store_true",
                    help="fail instead of making LR images when the set has none for this scale")


def _download(args: argparse.Namespace) -> int:
    from workbench.data.download import download_dataset

    if args.retries < 0:
        raise WorkbenchError(f"--retries must be >= 0, got {args.retries}")
    if not args.timeout > 0:
        raise WorkbenchError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    from workbench.core.outputs import check_output_dir

    check_output_dir(args.root, "--root")
    fetched = download_dataset(args.dataset, args.root, scales=args.scales, valid=not args.no_valid,
                               url=args.url, checksum=args.checksum, keep_archives=args.keep_archives,
                               retries=args.retries, timeout=args.timeout)
    if fetched:
        print(f"{args.dataset}: fetched {len(fetched)} archive(s) into {args.root}")
    else:
        print(f"{args.dataset}: already complete in {args.root}")
    return 0


def _make_lr(args: argparse.Namespace) -> int:
    from workbench.core.progress import tqdm

    from workbench.data.images import list_images, mod_crop, read_image, write_image
    from workbench.data.imresize import downscale

    from workbench.core.outputs import check_output_dir

    if args.scale < 1:
        raise WorkbenchError(f"--scale must be >= 1, got {args.scale}")
    check_output_dir(args.out_dir, "OUT_DIR")
    files = list_images(args.hr_dir)
    if not files:
        raise WorkbenchError(f"{args.hr_dir}: no images found")
    written = kept = 0
    for path in tqdm(files, desc=f"make-lr x{args.scale}", unit="img"):
        target = args.out_dir / f"{path.stem}x{args.scale}.png"
        if target.exists() and not args.overwrite:
            kept += 1
            continue
        hr = mod_crop(read_image(path), args.scale)
        if min(hr.shape[:2]) < args.scale:
            raise WorkbenchError(f"{path}: image is smaller than the scale {args.scale}")
        write_image(target, downscale(hr, args.scale))
        written += 1
    note = f", kept {kept} existing (use --overwrite to redo them)" if kept else ""
    print(f"wrote {written} LR image(s) to {args.out_dir}{note}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from workbench.data.benchmark import load_set

    paired = load_set(args.set, args.scale, data_root=args.data_root, make_lr=not args.no_make_lr)
    where = "embedded copy" if paired.embedded else str(paired.root)
    print(f"{paired.name} x{paired.scale}: {len(paired)} image pairs ({where})")
    for pair in paired:
        print(f"  {pair.name:<16} HR {pair.hr.shape[0]}x{pair.hr.shape[1]}  "
              f"LR {pair.lr.shape[0]}x{pair.lr.shape[1]}")
    return 0


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "data_command", None)
    if action == "download":
        return _download(args)
    if action == "make-lr":
        return _make_lr(args)
    if action == "check":
        return _check(args)
    raise WorkbenchError("choose an action: download, make-lr or check (see 'workbench data --help')")
