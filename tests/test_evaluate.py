"""Evaluation: reproduction of the release's figures and outputs, the pipeline and the eval CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workbench.models.artifacts import load_artifact
from workbench.cli import main
from workbench.data.benchmark import ImagePair, PairedSet, load_set
from workbench.data.images import read_image
from workbench.core.errors import WorkbenchError
from workbench.measure.evaluate import (SetResult, evaluate, evaluate_set, format_table, results_to_json,
                                super_resolve)

CHECKPOINTS = ["rlfn_x4", "rlfn_s_x4", "rlfn_ntire_x4", "ntire22_team04_rlfn", "rlfn_x2", "rlfn_s_x2"]
# The challenge copy holds the same weights as rlfn_ntire_x4 under other key names.
REFERENCE_OF = {"ntire22_team04_rlfn": "rlfn_ntire_x4"}
PSNR_TOL = 0.005
SSIM_TOL = 0.0005


class Affine(nn.Module):
    """Nearest-neighbour x2 upscaling followed by a*x + b: outputs that need clamping and rounding."""

    scale = 2

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest") * self.a + self.b


def test_super_resolve_clamps_and_rounds():
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    sr = super_resolve(Affine(1.3, -20.2), lr)
    assert sr.dtype == np.uint8 and sr.shape == (32, 40, 3)
    up = lr.repeat(2, axis=0).repeat(2, axis=1).astype(np.float32)
    want = np.clip(np.round(up * np.float32(1.3) + np.float32(-20.2)), 0, 255).astype(np.uint8)
    assert np.abs(sr.astype(int) - want.astype(int)).max() <= 1  # float32 rounding ties
    assert (sr == 0).any() and (sr == 255).any()


def _pair_set(name: str, lr_size: tuple[int, int], scale: int = 2) -> PairedSet:
    rng = np.random.default_rng(1)
    h, w = lr_size
    lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hr = lr.repeat(scale, axis=0).repeat(scale, axis=1)
    return PairedSet(name=name, scale=scale, root=None, pairs=[ImagePair("img0", hr, lr)])


def test_evaluate_set_scores_per_image_and_mean(tmp_path, tiny_model):
    pset = _pair_set("mini", (16, 16))
    pset.pairs.append(ImagePair("img1", pset.pairs[0].hr, pset.pairs[0].lr))
    res = evaluate_set(tiny_model, pset, save_dir=tmp_path, progress=False)
    assert isinstance(res, SetResult) and res.name == "mini" and res.scale == 2
    assert [im["name"] for im in res.images] == ["img0", "img1"]
    for key in ("psnr_y", "ssim_y", "psnr_rgb"):
        assert res.mean[key] == pytest.approx(np.mean([im[key] for im in res.images]))
    saved = read_image(tmp_path / "mini" / "x2" / "img0.png")
    np.testing.assert_array_equal(saved, super_resolve(tiny_model, pset.pairs[0].lr))
    # a perfect model gives inf PSNR, kept as 'inf' in JSON and the table
    perfect = evaluate_set(Affine(1.0, 0.0), pset, progress=False)
    assert perfect.mean["psnr_rgb"] == math.inf
    js = results_to_json({"mini": perfect})
    assert js["mini"]["mean"]["psnr_rgb"] == "inf"
    json.dumps(js, allow_nan=False)
    assert "inf" in format_table({"mini": perfect})


def test_small_lr_image_is_refused_with_its_name(tiny_model):
    with pytest.raises(WorkbenchError, match=r"tinyset/img0.*14x16"):
        evaluate_set(tiny_model, _pair_set("tinyset", (16, 14)), progress=False)


def test_scale_mismatch_is_refused(tiny_model):
    with pytest.raises(WorkbenchError, match="x3"):
        evaluate_set(tiny_model, _pair_set("s", (16, 16), scale=3), progress=False)


def test_evaluate_embedded_set5_without_data_root(tiny_model):
    results = evaluate(tiny_model, ["Set5"], scale=2, progress=False)
    assert list(results) == ["Set5"]
    assert [im["name"] for im in results["Set5"].images] == ["baby", "bird", "butterfly", "head",
                                                             "woman"]


# -- reproduction of the original release ------------------------------------------------------

@pytest.fixture(scope="module")
def expected(shared_dir: Path) -> dict:
    return json.loads((shared_dir / "reference" / "expected.json").read_text())


@pytest.fixture(scope="module")
def set5_runs(shared_dir: Path, repo_dir: Path, tmp_path_factory) -> dict:
    """Each checkpoint evaluated once on ../shared Set5 (SR images kept for the pixel check)."""
    out = {}
    root = tmp_path_factory.mktemp("sr")
    sets: dict[int, PairedSet] = {}
    for ck in CHECKPOINTS:
        art = load_artifact(repo_dir / "checkpoints" / f"{ck}.pth")
        scale = art.spec.scale
        if scale not in sets:
            sets[scale] = load_set("Set5", scale, data_root=shared_dir / "data")
        res = evaluate_set(art.model, sets[scale], save_dir=root / ck, progress=False)
        out[ck] = (res, root / ck / "Set5" / f"x{scale}")
    return out


def _check_against(res: SetResult, ref: dict) -> None:
    assert abs(res.mean["psnr_y"] - ref["psnr_y"]) <= PSNR_TOL, (res.mean, ref)
    assert abs(res.mean["psnr_rgb"] - ref["psnr_rgb"]) <= PSNR_TOL, (res.mean, ref)
    assert abs(res.mean["ssim_y"] - ref["ssim_y"]) <= SSIM_TOL, (res.mean, ref)


@pytest.mark.parametrize("ckpt", CHECKPOINTS)
def test_set5_reproduces_expected_json(ckpt, set5_runs, expected):
    res, _ = set5_runs[ckpt]
    _check_against(res, expected["quality"][REFERENCE_OF.get(ckpt, ckpt)]["Set5"])


@pytest.mark.parametrize("ckpt", ["rlfn_x4", "rlfn_s_x4", "rlfn_ntire_x4", "ntire22_team04_rlfn"])
def test_x4_set5_outputs_match_sr_official(ckpt, set5_runs, shared_dir):
    _, sr_dir = set5_runs[ckpt]
    ref_dir = shared_dir / "reference" / "sr_official" / REFERENCE_OF.get(ckpt, ckpt)
    names = sorted(p.stem for p in ref_dir.glob("*.png"))
    assert names == ["baby", "bird", "butterfly", "head", "woman"]
    for name in names:
        ours = read_image(sr_dir / f"{name}.png").astype(np.int16)
        theirs = read_image(ref_dir / f"{name}.png").astype(np.int16)
        assert ours.shape == theirs.shape, name
        assert np.abs(ours - theirs).max() <= 1, name


@pytest.mark.slow
@pytest.mark.parametrize("ckpt", ["rlfn_x4", "rlfn_s_x4", "rlfn_ntire_x4", "rlfn_x2", "rlfn_s_x2"])
def test_set14_reproduces_expected_json(ckpt, shared_dir, repo_dir, expected):
    art = load_artifact(repo_dir / "checkpoints" / f"{ckpt}.pth")
    pset = load_set("Set14", art.spec.scale, data_root=shared_dir / "data")
    _check_against(evaluate_set(art.model, pset, progress=False), expected["quality"][ckpt]["Set14"])


# -- the CLI ----------------------------------------------------------------------------------

def test_eval_cli_table_json_and_sr_images(tmp_path, capsys):
    out = tmp_path / "res" / "results.json"
    rc = main(["eval", "--model", "rlfn_tiny_x4", "rlfn_tiny_x4", "--out", str(out),
               "--save-sr", str(tmp_path / "sr"), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "PSNR-Y" in text and "SSIM-Y" in text and "PSNR-RGB" in text
    assert text.count("Set5 x4") == 2 * 6  # two models, five images and the mean each
    report = json.loads(out.read_text())
    assert report["data_root"] == "embedded" and report["device"] == "cpu"
    assert list(report["models"]) == ["rlfn_tiny_x4", "rlfn_tiny_x4#2"]
    first = report["models"]["rlfn_tiny_x4"]
    assert first["architecture"]["trunk"] == 8
    set5 = first["sets"]["Set5"]
    assert set5["scale"] == 4 and len(set5["images"]) == 5
    assert set(set5["mean"]) == {"psnr_y", "ssim_y", "psnr_rgb"}
    assert "torch" in report["environment"]
    assert len(list((tmp_path / "sr" / "rlfn_tiny_x4" / "Set5" / "x4").glob("*.png"))) == 5


def test_eval_cli_released_model_on_shared_sets(shared_dir, expected, capsys, tmp_path):
    out = tmp_path / "r.json"
    rc = main(["eval", "--model", "rlfn_ntire_x4", "--sets", "Set5", "--data-root",
               str(shared_dir / "data"), "--summary", "--no-progress", "--out", str(out)])
    assert rc == 0
    mean = json.loads(out.read_text())["models"]["rlfn_ntire_x4"]["sets"]["Set5"]["mean"]
    ref = expected["quality"]["rlfn_ntire_x4"]["Set5"]
    assert abs(mean["psnr_y"] - ref["psnr_y"]) <= PSNR_TOL
    assert "32.097" in capsys.readouterr().out


def test_eval_cli_unknown_set_is_one_line_error(capsys):
    rc = main(["eval", "--model", "rlfn_tiny_x4", "--sets", "NoSuchSet", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "NoSuchSet" in err and len(err.splitlines()) == 1


def test_eval_cli_deploy_mode_keeps_scores(tmp_path, capsys):
    means = {}
    for mode in ("eager", "fused"):
        out = tmp_path / f"{mode}.json"
        assert main(["eval", "--model", "rlfn_ntire_x4", "--deploy", mode, "--summary",
                     "--no-progress", "--out", str(out)]) == 0
        entry = json.loads(out.read_text())["models"]["rlfn_ntire_x4"]
        assert entry["deploy_mode"] == mode
        means[mode] = entry["sets"]["Set5"]["mean"]
    assert "deploy mode fused" in capsys.readouterr().out
    assert abs(means["fused"]["psnr_y"] - means["eager"]["psnr_y"]) < 0.002
    assert main(["eval", "--model", "rlfn_tiny_x4", "--deploy", "warp9"]) == 2
    assert "warp9" in capsys.readouterr().err
