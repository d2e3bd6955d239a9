"""int8 through the family interface: SPAN (inputs on [0, 1]) and custom networks (generic
defaults) -- PTQ, the declared fp32 layers, quant.pt reload, QAT, deploy mode int8, QDQ ONNX."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("torchao", reason="int8 needs torchao (pip install workbench[int8])")

from conftest import make_smooth_images  # noqa: E402
from workbench.core.errors import WorkbenchError  # noqa: E402
from workbench.measure.quantize import (QUANT_FILE, GraphRunner, QuantConfig, calibrate,  # noqa: E402
                                        default_skip, export_min_side, int8_from_model,
                                        prepare_model, quant_state, quantize_ptq, resolve_config,
                                        save_int8_artifact, skipped_modules)
from workbench.models import FAMILIES, create_model, register_family  # noqa: E402
from workbench.models.artifacts import load_artifact  # noqa: E402
from workbench.models.family import model_input, run_model  # noqa: E402
from workbench.models.generic import module_family  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth(n: int, side: int, seed: int) -> list[torch.Tensor]:
    """Smooth 0..255 images (bilinear blow-ups of noise), like natural LR content."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, max(side // 4, 2), max(side // 4, 2), generator=gen) * 255
    big = torch.nn.functional.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)
    return [big[i:i + 1].contiguous() for i in range(n)]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 255).round() - b.clamp(0, 255).round()) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def _span():
    """span_tiny x2 with an image-like output: the upsampler reproduces the (de-meaned) input."""
    torch.manual_seed(0)
    model = create_model("span_tiny_x2").eval()
    with torch.no_grad():
        model.upsampler[0].weight.mul_(0.05)
    return model


def _custom(name: str):
    from test_custom_family import registered_custom_model

    return registered_custom_model(name)


def test_families_declare_their_fp32_layers_and_export_bound() -> None:
    span = _span()
    assert default_skip(span) == ("conv_1", "upsampler.0", "conv_cat", "block_1.c1_r",
                                  "block_1.c2_r", "block_2.c1_r", "block_3.c2_r")
    assert {"conv_1", "conv_cat", "upsampler.0"} <= set(skipped_modules(span, QuantConfig()))
    assert export_min_side(span) == 2
    rlfn = create_model("rlfn_s_x4")
    assert resolve_config(rlfn).skip == ("conv_1", "conv_2", "upsampler.0", "block_*.c5",
                                         "block_*.esa.*", "block_1.c*_r")
    assert export_min_side(rlfn) == 24
    # generic: the first conv, the convs feeding a PixelShuffle and the last conv
    assert default_skip(_custom("tiny_edsr_x4")) == ("head", "up.0", "up.2", "tail")
    assert default_skip(_custom("tiny_imdn_x2")) == ("head", "up.0")
    # a wrapped family may declare its own
    fam = module_family("q8_edsr", build=lambda cfg: __import__("test_custom_family").TinyEDSR(**cfg),
                        presets={"q8_edsr": {"channels": 4, "blocks": 1}}, scales=(4,),
                        int8_fp32=("head",), int8_min_side=8)
    model = fam.build(fam.presets["q8_edsr"].spec(4))
    register_family(fam)
    try:
        assert default_skip(model) == ("head",) and export_min_side(model) == 8
    finally:
        FAMILIES.pop("q8_edsr", None)
    # an explicit choice is kept as given
    assert resolve_config(span, QuantConfig(skip=("conv_cat",))).skip == ("conv_cat",)


def test_span_ptq_calibrates_in_its_input_range() -> None:
    """SPAN works on [0, 1]: calibration crops (0..255) go through its input range, and so does
    the converted graph (it carries the spec). Calibrated on 0..255 instead, the ranges after the
    stem would be 255x too wide and the int8 model far from fp32."""
    model = _span()
    calib, x = _smooth(6, 32, seed=1), _smooth(1, 40, seed=2)[0]
    converted, state = quantize_ptq(model, calib)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    with torch.no_grad():
        ref, out = run_model(model, x), run_model(converted, x)
    good = _psnr(out, ref)
    assert out.shape == ref.shape and 30.0 < good < 200 and not torch.equal(out, ref)
    # the wrong scale: the same graph calibrated on raw 0..255 tensors
    prepared = prepare_model(model, resolve_config(model), model_input(model, calib[0]))
    delattr(prepared, "spec")  # no carried range: calibrate passes the crops as they are
    calibrate(prepared, calib)
    from workbench.measure.quantize import convert

    wrong = convert(prepared)
    with torch.no_grad():
        bad = _psnr(model_output_255(model, wrong(model_input(model, x))), ref)
    assert bad < good - 10


def model_output_255(model, y):
    from workbench.models.family import model_output

    return model_output(model, y)


def _named(name: str):
    if name == "span":
        return _span()
    if name == "dipnet_tiny_x2":  # RLFN-shaped, inputs on [0, 1], bias-free convs outside ESA
        torch.manual_seed(0)
        return create_model(name).eval()
    return _custom(name)


@pytest.mark.parametrize("name", ["span", "dipnet_tiny_x2", "tiny_edsr_x4", "tiny_imdn_x2"])
def test_int8_artifact_reloads_weights_only_and_evaluates(name, tmp_path: Path) -> None:
    from workbench.data.benchmark import load_set
    from workbench.measure.evaluate import evaluate_set

    model = _named(name)
    calib = _smooth(4, 24, seed=1)
    cfg = resolve_config(model)
    prepared = prepare_model(model, cfg, model_input(model, calib[0]))
    calibrate(prepared, calib)
    art_dir = save_int8_artifact(tmp_path / "a", model, quant_state(prepared), cfg)
    meta = json.loads((art_dir / "artifact.json").read_text())
    assert meta["config"]["quantization"]["skip"] == list(default_skip(model))
    torch.load(art_dir / QUANT_FILE, weights_only=True)
    art = load_artifact(art_dir)
    converted, info = int8_from_model(art.model)
    assert info["source"] == "stored"
    x = _smooth(1, 32, seed=3)[0]
    from workbench.measure.quantize import convert

    with torch.no_grad():
        assert torch.equal(run_model(converted, x), run_model(convert(prepared), x))
    # evaluation through the family's input range (GraphRunner carries the spec)
    scale = int(model.scale)
    pset = load_set("Set5", scale)
    pset.pairs = pset.pairs[:1]
    q = evaluate_set(GraphRunner(converted), pset, progress=False)
    f = evaluate_set(art.model, pset, progress=False)
    assert abs(q.mean["psnr_y"] - f.mean["psnr_y"]) < 3.0


def test_int8_refuses_a_module_without_family_in_one_line() -> None:
    from workbench.measure.deploy import prepare

    bare = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    with pytest.raises(WorkbenchError, match="int8 needs a family model"):
        prepare(bare, mode="int8", example_shape=None)


def _recipe(tmp_path: Path, model: str, scale: int, method: str = "qat") -> Path:
    images = make_smooth_images(tmp_path / "images", n=4, size=64, small=8, seed=1, prefix="im")
    val = tmp_path / "val" / "Tiny"
    make_smooth_images(val / "HR", n=1, size=64, small=8, seed=5, prefix="v")
    from workbench.data.images import read_image, write_image
    from workbench.data.imresize import downscale

    (val / "LR_bicubic" / f"X{scale}").mkdir(parents=True)
    for hr in (val / "HR").glob("*.png"):
        write_image(val / "LR_bicubic" / f"X{scale}" / f"{hr.stem}x{scale}.png",
                    downscale(read_image(hr), scale))
    recipe = {
        "model": model, "scale": scale, "seed": 3, "device": "cpu",
        "data": {"train": [{"root": str(images), "layout": "folder"}],
                 "val": {"sets": ["Tiny"], "root": str(tmp_path / "val")}},
        "stages": [{"id": "int8", "stage": "quantize", "method": method, "iterations": 3,
                    "batch_size": 2, "patch_size": 16 * scale, "log_every": 1,
                    "calibration_images": 3, "calibration_lr_size": 24}],
    }
    path = tmp_path / "int8.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("model,scale", [("span_tiny_x2", 2), ("tiny_edsr_x4", 4)])
def test_qat_stage_for_other_families(model, scale, tmp_path: Path) -> None:
    """QAT a few iterations: student and teacher through the family's range (a SPAN student fed
    0..255 would have a loss in the thousands), then an artifact that reloads."""
    from workbench.recipes.engine import run_recipe
    from workbench.recipes.loader import load_recipe

    if model.startswith("tiny_"):
        _custom(model)
    run = tmp_path / "run"
    run_recipe(load_recipe(_recipe(tmp_path, model, scale)), run_dir=run, progress=False)
    art_dir = run / "00-int8" / "artifact"
    meta = json.loads((art_dir / "artifact.json").read_text())
    q = meta["config"]["quantization"]
    assert q["qat"] is True and q["skip"]
    assert meta["metrics"]["iterations"] == 3 and "val_psnr_y_int8" in meta["metrics"]
    assert meta["metrics"]["loss"] < 100  # L1 on 0..255 of a random tiny model
    assert abs(meta["metrics"]["val_psnr_y_delta"]) < 3.0  # int8 near its fp32 parent
    art = load_artifact(art_dir)
    converted, info = int8_from_model(art.model)
    assert info["source"] == "stored" and info["qat"] is True
    x = _smooth(1, 24, seed=4)[0]
    with torch.no_grad():
        assert run_model(converted, x).shape == (1, 3, 24 * scale, 24 * scale)


def test_ptq_stage_for_span(tmp_path: Path) -> None:
    from workbench.recipes.engine import run_recipe
    from workbench.recipes.loader import load_recipe

    run = tmp_path / "run"
    run_recipe(load_recipe(_recipe(tmp_path, "span_tiny_x2", 2, "ptq")), run_dir=run, progress=False)
    meta = json.loads((run / "00-int8" / "artifact" / "artifact.json").read_text())
    assert meta["metrics"]["calibration_images"] == 3
    assert meta["config"]["quantization"]["skip"][:3] == ["conv_1", "upsampler.0", "conv_cat"]
    # the int8 graph scored through SPAN's [0, 1] range stays near its fp32 parent
    assert abs(meta["metrics"]["val_psnr_y_delta"]) < 3.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["span", "tiny_edsr_x4"])
def test_int8_deploy_mode_compiled(name) -> None:
    """Deploy mode int8 end to end (inductor compile of the int8 graph: tens of seconds)."""
    from workbench.measure.deploy import prepare

    model = _span() if name == "span" else _custom(name)
    dep = prepare(model, mode="int8", example_shape=(1, 3, 24, 24), calibration=_smooth(4, 24, 1))
    assert dep.mode == "int8" and dep.module.quantization["source"] == "ptq"
    x = _smooth(1, 24, seed=2)[0]
    with torch.no_grad():
        ref = run_model(model, x)
    out = run_model(dep, x)
    assert out.shape == ref.shape and _psnr(out, ref) > 25.0 and not torch.equal(out, ref)


@pytest.mark.parametrize("name", ["span", "dipnet_tiny_x2", "tiny_edsr_x4"])
def test_qdq_onnx_export_and_onnxruntime(name, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="ONNX export needs onnx")
    pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    pytest.importorskip("onnxruntime", reason="the check needs onnxruntime")
    from workbench.measure.quantize_onnx import OrtModule, export_int8_onnx

    model = _named(name)
    calib = _smooth(4, 24, seed=1)
    cfg = resolve_config(model)
    prepared = prepare_model(model, cfg, model_input(model, calib[0]))
    calibrate(prepared, calib)
    art = load_artifact(save_int8_artifact(tmp_path / "a", model, quant_state(prepared), cfg))
    info = export_int8_onnx(art.model, tmp_path / "m.onnx")
    assert info["int8_weights"] and info["int8_convs"] >= 2
    assert len(info["fp32_convs"]) == len(skipped_convs(art.model, cfg))
    converted, _ = int8_from_model(art.model)
    session = OrtModule(info["path"], scale=int(model.scale))
    for side in (24, 30):  # dynamic axes; the file takes and returns 0..255
        x = _smooth(1, side, seed=side)[0]
        with torch.no_grad():
            ref = run_model(converted, x)
        got = session(x)
        assert got.shape == ref.shape
        assert (got.clamp(0, 255).round() - ref.clamp(0, 255).round()).abs().max() <= 3


def skipped_convs(model, cfg) -> list[str]:
    names = set(skipped_modules(model, cfg))
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
            and (n in names or any(n.startswith(p + ".") for p in names))]
