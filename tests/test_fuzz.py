"""Seeded fuzzing of everything a user hands the workbench: checkpoints, artifact.json files,
recipes and images, damaged in a few hundred ways, through the CLI (in-process, for speed).

Every case must end with exit status 0 (the damage was harmless) or 2 (one line on stderr), never
a traceback or any other status, and must change nothing outside the test's temporary folder.
The number of cases of each class is printed (``pytest -s``) and checked against a floor.
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from workbench.models.artifacts import save_artifact
from workbench.cli import main
from workbench.models import RLFN, RLFNSpec

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 20240610
REPO = Path(__file__).resolve().parents[1]
COUNTS = {"checkpoints": 120, "artifact_json": 100, "recipes": 90, "images": 70}


def _tiny() -> RLFN:
    torch.manual_seed(0)
    return RLFN(RLFNSpec.uniform(scale=2, feature=8, mid=8, esa=4, blocks=2)).eval()


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    img.save(buffer, format=fmt)
    return buffer.getvalue()


# -- mutators -------------------------------------------------------------------------------------

def _flip(rng: random.Random, data: bytes, n: int) -> bytes:
    out = bytearray(data)
    for _ in range(n):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


WEIRD_VALUES = [None, [], {}, "x", "", -1, 0, 1, 10 ** 12, -10 ** 12, 1.5, float("nan"), True,
                "1e5", [1, 2], {"a": 1}, [[[[[]]]]], "A" * 5000, 4096, 4097]


def _odd_tensor(rng: random.Random) -> torch.Tensor:
    choice = rng.randrange(9)
    if choice == 0:
        return torch.tensor(rng.random())
    if choice == 1:
        return torch.zeros(rng.randrange(0, 9))
    if choice == 2:
        return torch.zeros([rng.randrange(0, 5) for _ in range(rng.randrange(2, 7))])
    if choice == 3:
        return torch.zeros(rng.randrange(1, 20), rng.randrange(1, 20), 3, 3)
    if choice == 4:
        return torch.ones(8, 8, 3, 3, dtype=rng.choice([torch.int64, torch.bool, torch.float16,
                                                         torch.bfloat16, torch.complex64]))
    if choice == 5:
        return torch.full((8, 8, 3, 3), float(rng.choice(["nan", "inf", "-inf"])))
    if choice == 6:
        return torch.zeros(1, 100_000, 1, 1)
    if choice == 7:
        return torch.zeros(8, 8, 3, 3)[:, :, :2]   # non-contiguous, wrong kernel
    return torch.zeros(0, 8, 3, 3)


def checkpoint_cases(rng: random.Random, n: int) -> list[bytes]:
    state = _tiny().state_dict()
    good = _torch_bytes(state)
    keys = list(state)
    cases: list[bytes] = []
    for i in range(n):
        kind = i % 12
        if kind == 0:
            cases.append(good[: rng.randrange(0, len(good))])
        elif kind == 1:
            cases.append(_flip(rng, good, rng.randrange(1, 40)))
        elif kind == 2:
            cases.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
        elif kind == 3:
            d = dict(state)
            d[rng.choice(keys)] = _odd_tensor(rng)
            cases.append(_torch_bytes(d))
        elif kind == 4:
            d = dict(state)
            for key in rng.sample(keys, rng.randrange(1, 5)):
                del d[key]
            cases.append(_torch_bytes(d))
        elif kind == 5:
            d = dict(state)
            d[rng.choice(keys)] = rng.choice([v for v in WEIRD_VALUES if not isinstance(v, float)])
            cases.append(_torch_bytes(d))
        elif kind == 6:
            wrapper = rng.choice(["params", "params_ema", "state_dict", "model", "module"])
            inner = rng.choice([state, {"x": 1}, "text", [1], {f"module.{k}": v for k, v in state.items()}])
            cases.append(_torch_bytes({wrapper: inner}))
        elif kind == 7:
            cases.append(_torch_bytes(rng.choice([[1, 2], 3, "s", None, (torch.zeros(2),),
                                                  {1: torch.zeros(1)}, {(1, 2): 3}, {}])))
        elif kind == 8:
            arr = np.full((rng.randrange(1, 40), rng.randrange(1, 40), 3), rng.randrange(256), np.uint8)
            cases.append(_png(arr, fmt=rng.choice(["PNG", "GIF", "BMP", "JPEG"])))
        elif kind == 9:
            cases.append(rng.choice([b"", b"hello\n", "caf\u00e9 \u2603\n".encode(), b"PK\x03\x04",
                                     b"\x80\x02", b"\x80\x02}q\x00.", b"PK" + bytes(100)]))
        elif kind == 10:
            d = dict(state)
            key = rng.choice(keys)
            d[key.replace("block_1", "block_9").replace("conv", "kconv")] = d.pop(key)
            cases.append(_torch_bytes(d))
        else:
            d = {k: v.clone() for k, v in state.items()}
            grow = RLFN(RLFNSpec.uniform(scale=rng.choice([2, 3, 4]), feature=rng.randrange(1, 12),
                                         mid=rng.randrange(1, 12), esa=rng.randrange(1, 6),
                                         blocks=rng.randrange(1, 4))).state_dict()
            cases.append(_torch_bytes(rng.choice([grow, {**d, **{k: v for k, v in grow.items()
                                                                 if rng.random() < 0.3}}])))
    return cases


def _mutate_json(rng: random.Random, obj, depth: int = 0):
    """One random edit somewhere inside a JSON value (a copy)."""
    if isinstance(obj, dict) and obj and depth < 6 and rng.random() < 0.7:
        obj = dict(obj)
        key = rng.choice(list(obj))
        action = rng.randrange(4)
        if action == 0:
            del obj[key]
        elif action == 1:
            obj[key] = rng.choice(WEIRD_VALUES)
        elif action == 2:
            obj[key + rng.choice(["", "_x"])] = rng.choice(WEIRD_VALUES)
        else:
            obj[key] = _mutate_json(rng, obj[key], depth + 1)
        return obj
    if isinstance(obj, list) and obj and depth < 6 and rng.random() < 0.7:
        obj = list(obj)
        i = rng.randrange(len(obj))
        action = rng.randrange(3)
        if action == 0:
            del obj[i]
        elif action == 1:
            obj[i] = rng.choice(WEIRD_VALUES)
        else:
            obj[i] = _mutate_json(rng, obj[i], depth + 1)
        return obj
    if isinstance(obj, bool):
        return not obj
    if isinstance(obj, int):
        return rng.choice([obj + 1, obj - 1, -obj, obj * 1000, 0, 10 ** 12, str(obj)])
    return rng.choice(WEIRD_VALUES)


def artifact_json_texts(rng: random.Random, meta: dict, n: int) -> list[str]:
    texts = []
    good = json.dumps(meta)
    for i in range(n):
        kind = i % 10
        if kind == 0:
            texts.append(good[: rng.randrange(0, len(good))])
        elif kind == 1:
            texts.append(rng.choice(["[]", "null", '"artifact"', "3", "{}", "[" * 100_000,
                                     '{"a": ' * 50_000, "\ufeff{}", "\x00\x01"]))
        elif kind == 2:
            texts.append(json.dumps({**meta, "architecture": _mutate_json(rng, meta["architecture"])}))
        else:
            edited = meta
            for _ in range(rng.randrange(1, 4)):
                edited = _mutate_json(rng, edited)
            texts.append(json.dumps(edited, allow_nan=True))
    return texts


BASE_RECIPE = {
    "name": "fuzz", "model": "rlfn_tiny_x2", "scale": 2, "seed": 0, "device": "cpu",
    "data": {"train": [{"layout": "samples"}], "val": {"sets": ["Set5"], "root": None}},
    "stages": [
        {"id": "train", "stage": "train", "iterations": 2, "batch_size": 2, "patch_size": 32,
         "lr": 1e-4, "losses": [{"type": "l1", "weight": 1.0}], "checkpoint_every": 1},
        {"id": "sfp", "stage": "sfp", "trunk": 6, "iterations": 2, "patch_size": 32},
        {"id": "eval", "stage": "evaluate"},
    ],
}


def recipe_texts(rng: random.Random, n: int) -> list[str]:
    good = yaml.safe_dump(BASE_RECIPE, sort_keys=False)
    texts = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            texts.append(good[: rng.randrange(0, len(good))])
        elif kind == 1:
            lines = good.splitlines()
            j = rng.randrange(len(lines))
            lines[j] = rng.choice(["", "  " + lines[j], lines[j] + ": x", "- " + lines[j], "\t" + lines[j],
                                   "!!python/object:os.system x", "&a [*a]", "? [a]", "%TAG ! x"])
            texts.append("\n".join(lines))
        elif kind == 2:
            texts.append(rng.choice(["", "[]", "3", "null", "a: [", "{{{", "- 1\n- 2", "\x00",
                                     "name: x\n" * 3, "name: " + "A" * 10000]))
        else:
            edited = BASE_RECIPE
            for _ in range(rng.randrange(1, 4)):
                edited = _mutate_json(rng, edited)
            texts.append(yaml.safe_dump(edited, sort_keys=False, allow_unicode=True))
    return texts


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (valid CRC) over a tiny compressed body."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def image_cases(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    base = np.asarray(Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))
                      .resize((32, 32), Image.BICUBIC))
    good = _png(base)
    cases = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            cases.append(("png", good[: rng.randrange(0, len(good))]))
        elif kind == 1:
            cases.append(("png", _flip(rng, good, rng.randrange(1, 10))))
        elif kind == 2:
            mode = rng.choice(["L", "P", "RGBA", "LA", "1", "CMYK", "I", "F", "I;16"])
            fmt = {"CMYK": "JPEG", "F": "TIFF", "I": "TIFF", "I;16": "PNG"}.get(mode, "PNG")
            cases.append((fmt.lower(), _png(base, mode, fmt)))
        elif kind == 3:
            h, w = rng.randrange(1, 40), rng.randrange(1, 40)
            cases.append(("png", _png(np.asarray(Image.fromarray(base).resize((w, h))))))
        elif kind == 4:
            cases.append(("png", _png_with_size(rng.choice([0, 1, 20000, 100_000, 2 ** 31 - 1]),
                                                rng.choice([1, 9000, 20000, 2 ** 31 - 1]))))
        elif kind == 5:
            fmt = rng.choice(["GIF", "BMP", "JPEG", "WEBP", "TIFF", "PPM"])
            cases.append((fmt.lower(), _png(base, None, fmt)))
        elif kind == 6:
            cases.append(("png", rng.choice([b"", b"not an image", bytes(rng.randrange(256) for _ in range(300))])))
        else:
            cases.append(("jpg", _flip(rng, _png(base, None, "JPEG"), rng.randrange(1, 30))))
    return cases


# -- the harness ----------------------------------------------------------------------------------

def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git", ".pytest_cache")]
        for name in filenames:
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


class Harness:
    def __init__(self, capsys) -> None:
        self.capsys = capsys
        self.results: dict[str, dict[int, int]] = {}

    def __call__(self, klass: str, argv: list[str], case: str) -> None:
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException as exc:  # noqa: BLE001 - the point of the test
            self.capsys.readouterr()
            pytest.fail(f"{klass} case {case}: {type(exc).__name__} escaped: {str(exc)[:300]}")
        captured = self.capsys.readouterr()
        err = captured.err.strip()
        assert rc in (0, 2), f"{klass} case {case}: exit {rc}: {err[-500:]}"
        assert "Traceback" not in err + captured.out, f"{klass} case {case}: {err[-800:]}"
        if rc == 2:
            # one line; a recipe's problems are listed all at once, one indented line each
            lines = err.splitlines()
            assert lines[0].startswith("workbench") and all(l.startswith("  ") for l in lines[1:]), \
                f"{klass} case {case}: {err[:800]}"
            assert len(err) < 2000, f"{klass} case {case}: a {len(err)}-character message"
        self.results.setdefault(klass, {}).setdefault(rc, 0)
        self.results[klass][rc] += 1


def test_fuzz_inputs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_LATENCY_CACHE", str(tmp_path / "latency.sqlite"))
    rng = random.Random(SEED)
    before_repo = _snapshot(REPO)
    before_siblings = sorted(os.listdir(tmp_path.parent))
    run = Harness(capsys)
    profile = ["--no-latency", "--input", "1x3x16x16"]

    for i, data in enumerate(checkpoint_cases(rng, COUNTS["checkpoints"])):
        path = tmp_path / "ckpt" / f"c{i}.pth"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        run("checkpoints", ["profile", "--model", str(path), *profile], str(i))

    art = save_artifact(tmp_path / "art", _tiny())
    meta = json.loads((art / "artifact.json").read_text())
    for i, text in enumerate(artifact_json_texts(rng, meta, COUNTS["artifact_json"])):
        (art / "artifact.json").write_text(text)
        run("artifact_json", ["profile", "--model", str(art), *profile], str(i))

    for i, text in enumerate(recipe_texts(rng, COUNTS["recipes"])):
        path = tmp_path / "recipes" / f"r{i}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        run("recipes", ["validate", str(path)], str(i))

    for i, (suffix, data) in enumerate(image_cases(rng, COUNTS["images"])):
        folder = tmp_path / "images" / f"set{i}"
        folder.mkdir(parents=True)
        (folder / f"img.{suffix}").write_bytes(data)
        run("images", ["eval", "--model", "rlfn_tiny_x2", "--sets", str(folder), "--summary",
                       "--no-progress"], str(i))

    summary = {k: {"cases": sum(v.values()), "exit 0": v.get(0, 0), "exit 2": v.get(2, 0)}
               for k, v in run.results.items()}
    print("fuzz cases:", json.dumps(summary))
    assert {k: v["cases"] for k, v in summary.items()} == COUNTS
    for klass, v in summary.items():   # the damage must actually be caught, not all harmless
        assert v["exit 2"] >= v["cases"] // 3, (klass, v)
    assert _snapshot(REPO) == before_repo, "the fuzz run changed files in the repository"
    assert sorted(os.listdir(tmp_path.parent)) == before_siblings
