"""MATLAB-bicubic imresize: speed on a 512x512 image and agreement with the benchmark LR files,
next to Pillow's bicubic resize (fast, but not what the benchmarks were made with).

For each scale it times, side by side in one process, ``workbench.data.imresize.imresize`` (numpy,
uint8 with MATLAB's rounding), ``imresize_torch`` (float) and Pillow's ``Image.resize(BICUBIC)``
on Set5's 512x512 ``baby``, and reports how many LR values each reproduces on the whole set.

    python bench/bench_imresize.py                 # embedded Set5
    python bench/bench_imresize.py --set ../shared/data/Set14 --repeats 5
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (builds the cached weight tables)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    import torch
    from PIL import Image

    from workbench.data.benchmark import load_set
    from workbench.data.imresize import imresize, imresize_torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="Set5", help="set name or folder (default: embedded Set5)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"{'scale':>5}  {'imresize ms':>11}  {'torch ms':>8}  {'Pillow ms':>9}  "
          f"{'imresize equal':>14}  {'max diff':>8}  {'Pillow equal':>12}  {'max diff':>8}")
    for scale in (2, 3, 4):
        pset = load_set(args.set, scale, make_lr=False)
        big = max(pset, key=lambda p: p.hr.size)
        hr = big.hr
        tensor = torch.from_numpy(hr.transpose(2, 0, 1).astype(np.float32))
        out_hw = (hr.shape[1] // scale, hr.shape[0] // scale)
        t_np = _median_ms(lambda: imresize(hr, 1 / scale), args.repeats)
        t_torch = _median_ms(lambda: imresize_torch(tensor, 1 / scale), args.repeats)
        t_pil = _median_ms(lambda: Image.fromarray(hr).resize(out_hw, Image.BICUBIC), args.repeats)
        stats = {"ours": [0, 0, 0], "pil": [0, 0, 0]}
        for pair in pset:
            ours = imresize(pair.hr, 1 / scale)
            pil = np.asarray(Image.fromarray(pair.hr).resize((pair.lr.shape[1], pair.lr.shape[0]),
                                                             Image.BICUBIC))
            for key, got in (("ours", ours), ("pil", pil)):
                diff = np.abs(got.astype(np.int16) - pair.lr.astype(np.int16))
                stats[key][0] += int((diff == 0).sum())
                stats[key][1] += diff.size
                stats[key][2] = max(stats[key][2], int(diff.max()))
        ours_eq = 100 * stats["ours"][0] / stats["ours"][1]
        pil_eq = 100 * stats["pil"][0] / stats["pil"][1]
        print(f"{scale:>5}  {t_np:>11.1f}  {t_torch:>8.1f}  {t_pil:>9.1f}  {ours_eq:>13.3f}%  "
              f"{stats['ours'][2]:>8}  {pil_eq:>11.3f}%  {stats['pil'][2]:>8}")
    print(f"(timed on {pset.name}'s largest image, {hr.shape[0]}x{hr.shape[1]}, {args.threads} thread(s); "
          "agreement over the whole set against its LR_bicubic files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
