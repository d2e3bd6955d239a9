"""int8: the PTQ deploy mode runs and stays close to fp32; the QAT stage writes an artifact that
reloads with weights_only and runs in deploy mode int8 (tiny models, real compile)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_smooth_images
from workbench.models.artifacts import load_artifact
from workbench.measure.deploy import prepare
from workbench.core.errors import ArtifactError, WorkbenchError
from workbench.models import RLFN, RLFNSpec
from workbench.measure.quantize import QUANT_FILE, QuantConfig, calibration_crops, quantize_ptq

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(scale: int = 2) -> RLFN:
    torch.manual_seed(0)
    return RLFN(RLFNSpec.uniform(scale=scale, feature=8, mid=8, esa=4, blocks=2)).eval()


def _smooth_lr(n: int, side: int, seed: int) -> list[torch.Tensor]:
    """Smooth 0..255 images (bilinear blow-ups of noise), like natural LR content."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, side // 4, side // 4, generator=gen) * 255
    big = torch.nn.functional.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)
    return [big[i:i + 1].contiguous() for i in range(n)]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 255).round() - b.clamp(0, 255).round()) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def test_ptq_converted_graph_is_close_to_fp32() -> None:
    """The fast check (no inductor compile): PTQ's converted q/dq graph against fp32."""
    model = _model()
    converted, state = quantize_ptq(model, _smooth_lr(6, 32, seed=1), QuantConfig())
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    x = _smooth_lr(1, 40, seed=2)[0]
    with torch.no_grad():
        ref, out = model(x), converted(x)
    assert out.shape == ref.shape and 30.0 < _psnr(out, ref) < 200
    assert not torch.equal(out, ref)


@pytest.mark.slow
def test_ptq_int8_mode_runs_and_is_close_to_fp32() -> None:
    """Deploy mode int8 end to end (inductor compile of the int8 graph: ~40 s here)."""
    model = _model()
    calib = _smooth_lr(6, 32, seed=1)
    dep = prepare(model, mode="int8", example_shape=(1, 3, 32, 32), calibration=calib)
    assert dep.mode == "int8" and dep.module.quantization["source"] == "ptq"
    x = _smooth_lr(1, 32, seed=2)[0]
    with torch.no_grad():
        ref = model(x)
    out = dep(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # int8 is not exact, but an 8-channel model on smooth content stays well above 30 dB of fp32
    assert _psnr(out, ref) > 30.0
    # and it is really quantized: not bit-equal to fp32
    assert not torch.equal(out, ref)


@pytest.mark.slow
def test_int8_bf16_mode_runs_the_same_int8_graph_with_a_bf16_rest() -> None:
    """int8_bf16: the same calibrated graph as int8, the non-int8 ops in bf16: float32 out, close
    to both fp32 and int8, and not bit-equal to int8 (the rest really ran in bf16)."""
    model = _model()
    calib = _smooth_lr(6, 32, seed=1)
    x = _smooth_lr(1, 32, seed=2)[0]
    int8 = prepare(model, mode="int8", example_shape=None, calibration=calib)
    mixed = prepare(model, mode="int8_bf16", example_shape=None, calibration=calib)
    assert mixed.mode == "int8_bf16" and mixed.module.quantization["source"] == "ptq"
    with torch.no_grad():
        ref = model(x)
    a, b = int8(x), mixed(x)
    assert b.shape == ref.shape and b.dtype == torch.float32
    assert _psnr(b, ref) > 30.0 and _psnr(b, a) > 35.0
    assert not torch.equal(a, b)


@pytest.mark.slow
def test_ptq_int8_mode_takes_other_input_sizes() -> None:
    dep = prepare(_model(), mode="int8", example_shape=None, calibration=_smooth_lr(3, 32, seed=1))
    # each size compiles once (dynamic export, LR side >= 24)
    assert dep(_smooth_lr(1, 40, seed=3)[0]).shape == (1, 3, 80, 80)
    assert dep(_smooth_lr(1, 24, seed=3)[0]).shape == (1, 3, 48, 48)


def test_ptq_rejects_crops_below_the_export_bound() -> None:
    with pytest.raises(WorkbenchError, match="at least 24"):
        quantize_ptq(_model(), _smooth_lr(2, 16, seed=0), QuantConfig())


def test_calibration_crops_skip_small_images(tmp_path: Path) -> None:
    make_smooth_images(tmp_path / "small", n=2, size=40, small=8, seed=0, prefix="s")
    make_smooth_images(tmp_path / "big", n=3, size=64, small=8, seed=0, prefix="b")
    files = sorted((tmp_path / "small").glob("*.png")) + sorted((tmp_path / "big").glob("*.png"))
    crops = calibration_crops(files, scale=2, count=3, lr_size=24)
    assert len(crops) == 3 and all(c.shape == (1, 3, 24, 24) for c in crops)
    with pytest.raises(WorkbenchError, match="calibration patch"):
        calibration_crops(files[:2], scale=2, count=2, lr_size=24)


def _qat_recipe(tmp_path: Path, method: str = "qat", **stage) -> Path:
    images = make_smooth_images(tmp_path / "images", n=4, size=64, small=8, seed=1, prefix="im")
    val = tmp_path / "val" / "Tiny"
    make_smooth_images(val / "HR", n=1, size=64, small=8, seed=5, prefix="v")
    from workbench.data.images import read_image, write_image
    from workbench.data.imresize import downscale

    (val / "LR_bicubic" / "X2").mkdir(parents=True)
    for hr in (val / "HR").glob("*.png"):
        write_image(val / "LR_bicubic" / "X2" / f"{hr.stem}x2.png", downscale(read_image(hr), 2))
    recipe = {
        "model": {"trunk": 8, "mid": 8, "esa": 4, "blocks": 2}, "scale": 2, "seed": 3, "device": "cpu",
        "data": {"train": [{"root": str(images), "layout": "folder"}],
                 "val": {"sets": ["Tiny"], "root": str(tmp_path / "val")}},
        "stages": [{"id": "int8", "stage": "quantize", "method": method, "iterations": 4,
                    "batch_size": 2, "patch_size": 32, "calibration_images": 3,
                    "calibration_lr_size": 24, "log_every": 2, **stage}],
    }
    path = tmp_path / "int8.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_quantize_stage_scores_the_deployed_modes(tmp_path: Path) -> None:
    """val_deploy: the stage also scores the int8 model compiled in each named mode, beside the
    eager q/dq graph; a mode that is not an int8 one is refused before anything runs."""
    from workbench.recipes.engine import run_recipe
    from workbench.recipes.loader import load_recipe

    with pytest.raises(WorkbenchError, match="val_deploy"):
        load_recipe(_qat_recipe(tmp_path / "bad", "ptq", val_deploy=["fused"]))
    run = tmp_path / "run"
    run_recipe(load_recipe(_qat_recipe(tmp_path, "ptq", val_deploy=["int8", "int8_bf16"])),
               run_dir=run, progress=False)
    m = json.loads((run / "00-int8" / "artifact" / "artifact.json").read_text())["metrics"]["Tiny"]
    assert {"psnr_y_int8", "psnr_y_parent", "psnr_y_compiled_int8", "psnr_y_compiled_int8_bf16"} <= set(m)
    for mode in ("int8", "int8_bf16"):
        # compiled int8 arithmetic is close to the q/dq graph's
        assert abs(m[f"psnr_y_compiled_{mode}"] - m["psnr_y_int8"]) < 1.0
        assert m[f"psnr_y_delta_compiled_{mode}"] == pytest.approx(
            m[f"psnr_y_compiled_{mode}"] - m["psnr_y_parent"])
    assert m["psnr_y_compiled_int8_bf16"] != m["psnr_y_compiled_int8"]


def test_qat_stage_artifact_reloads_weights_only(tmp_path: Path, request) -> None:
    """QAT stage -> artifact (model.pt + quant.pt, tensors only) -> reload -> int8 graph close to
    the fine-tuned fp32 weights; with --runslow / -m slow also deploy mode int8 (compiled)."""
    from workbench.recipes.engine import run_recipe
    from workbench.recipes.loader import load_recipe

    run = tmp_path / "run"
    run_recipe(load_recipe(_qat_recipe(tmp_path)), run_dir=run, progress=False)
    art_dir = run / "00-int8" / "artifact"
    meta = json.loads((art_dir / "artifact.json").read_text())
    q = meta["config"]["quantization"]
    assert q["qat"] is True and q["per_channel"] is True and "block_*.c5" in q["skip"]
    assert meta["metrics"]["iterations"] == 4 and "val_psnr_y_int8" in meta["metrics"]
    # both files hold tensors only
    torch.load(art_dir / "model.pt", weights_only=True)
    torch.load(art_dir / QUANT_FILE, weights_only=True)
    art = load_artifact(art_dir)
    assert set(art.model.quantization) == {"config", "state"}
    from workbench.measure.quantize import int8_from_model

    converted, info = int8_from_model(art.model)
    assert info["source"] == "stored" and info["qat"] is True
    x = _smooth_lr(1, 24, seed=4)[0]
    with torch.no_grad():
        ref = art.model(x)
        assert _psnr(converted(x), ref) > 30.0
    if request.config.getoption("-m", default="") == "slow":
        dep = prepare(art.model, mode="int8", example_shape=(1, 3, 24, 24))
        assert dep.module.quantization["source"] == "stored"
        assert _psnr(dep(x), ref) > 30.0
    # a changed state file is refused by its hash, in one line
    (art_dir / QUANT_FILE).write_bytes((art_dir / QUANT_FILE).read_bytes()[:-7] + b"garbage")
    with pytest.raises(ArtifactError, match="hash"):
        load_artifact(art_dir)


def test_restored_state_gives_the_calibrated_graph() -> None:
    """restore_prepared + convert reproduces the converted graph of the calibration exactly,
    including the observer that max-pool's input and output share (one module, two names)."""
    from workbench.measure.quantize import calibrate, convert, prepare_model, quant_state, restore_prepared

    model, cfg = _model(), QuantConfig()
    calib = _smooth_lr(3, 32, seed=1)
    prepared = prepare_model(model, cfg, calib[0])
    calibrate(prepared, calib)
    state = quant_state(prepared)
    restored = convert(restore_prepared(model, cfg, state))
    original = convert(prepared)
    x = _smooth_lr(1, 40, seed=2)[0]
    with torch.no_grad():
        assert torch.equal(restored(x), original(x))
