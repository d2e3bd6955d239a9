"""QDQ ONNX export of an int8 artifact (workbench.measure.quantize_onnx, `workbench export --int8`),
checked with onnxruntime, on a tiny RLFN calibrated post-training on a few real crops."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchao", reason="int8 needs torchao (pip install workbench[int8])")
onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install workbench[export])")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
pytest.importorskip("onnxruntime", reason="the check needs onnxruntime (pip install workbench[export])")

from workbench.models.artifacts import load_artifact, save_artifact  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.data.benchmark import load_set  # noqa: E402
from workbench.models import RLFN, RLFNSpec  # noqa: E402
from workbench.measure.quantize import (QUANT_FILE, QuantConfig, calibrate, int8_from_model,  # noqa: E402
                                prepare_model, quant_state, save_int8_artifact)
from workbench.measure.quantize_onnx import OrtModule, _graph_qparams, export_int8_onnx  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _lr_crops() -> list[np.ndarray]:
    """Real x2 LR content of two sizes (Set5 baby, embedded)."""
    lr = np.asarray(load_set("Set5", 2)[0].lr)
    return [lr[:40, :48], lr[60:93, 10:40]]


@pytest.fixture(scope="module")
def int8_art(tmp_path_factory) -> Path:
    """A tiny RLFN (x2, 8 channels, 2 blocks) with its PTQ state as an artifact folder."""
    torch.manual_seed(0)
    model = RLFN(RLFNSpec.uniform(scale=2, feature=8, mid=8, esa=4, blocks=2)).eval()
    with torch.no_grad():  # an identity-ish upsampler so outputs look like images, not noise
        model.upsampler[0].weight.mul_(0.1)
    lr = np.asarray(load_set("Set5", 2)[1].lr)
    crops = [torch.from_numpy(np.ascontiguousarray(lr[y:y + 32, x:x + 32].transpose(2, 0, 1)))
             .float()[None] for y, x in ((0, 0), (40, 30), (80, 60))]
    # ESA and block 1 int8 too (the family's default keeps them out): more int8 convs to check
    cfg = QuantConfig(skip=("conv_1", "conv_2", "upsampler.0", "block_*.c5"))
    prepared = prepare_model(model, cfg, crops[0])
    calibrate(prepared, crops)
    path = tmp_path_factory.mktemp("int8") / "artifact"
    save_int8_artifact(path, model, quant_state(prepared), cfg)
    return path


@pytest.fixture(scope="module")
def exported(int8_art, tmp_path_factory):
    art = load_artifact(int8_art)
    out = tmp_path_factory.mktemp("onnx") / "int8.onnx"
    return art, export_int8_onnx(art.model, out)


def test_qdq_file_holds_int8_weights_and_the_learned_qparams(exported) -> None:
    art, info = exported
    proto = onnx.load(str(info["path"]))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10
    int8 = {i.name: i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8
            and len(i.dims) == 4}
    # 2 blocks x (3 body convs + 5 ESA convs) int8; stem, c5s, conv_2, upsampler stay fp32
    assert len(int8) == 16 and "block_1.c1_r.weight_int8" in int8
    assert len(info["fp32_convs"]) == 5 and info["int8_convs"] == 16
    names = {i.name for i in proto.graph.initializer}
    assert "conv_1.weight" in names and "upsampler.0.weight" in names
    # per-channel: the int8 weight's DequantizeLinear has one scale per output channel
    dq = next(n for n in proto.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] == "block_1.c1_r.weight_int8")
    scale = next(i for i in proto.graph.initializer if i.name == dq.input[1])
    assert list(scale.dims) == [8]
    # every activation QuantizeLinear carries a (scale, zero-point) of the torchao model
    converted, _ = int8_from_model(art.model)
    assert set(info["qparams"]) == set(_graph_qparams(converted)[0])


def test_onnxruntime_runs_it_close_to_torch_int8(exported) -> None:
    art, info = exported
    converted, _ = int8_from_model(art.model)
    session = OrtModule(info["path"], scale=2)
    for lr in _lr_crops():  # two sizes: the dynamic axes
        x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).float()[None]
        with torch.no_grad():
            ref = converted(x)
            fp32 = art.model(x)
        got = session(x)
        assert got.shape == ref.shape == (1, 3, 2 * lr.shape[0], 2 * lr.shape[1])
        gray = (got.clamp(0, 255).round() - ref.clamp(0, 255).round()).abs().max()
        assert gray <= 3
        # and it is the quantized model, not fp32
        assert not torch.allclose(got, fp32, atol=1e-3)


def test_export_int8_cli_checks_psnr(int8_art, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(int8_art), "--int8", "--out", str(out), "--check",
                 "--images", "2"]) == 0
    text = capsys.readouterr().out
    assert "QDQ: 16 int8 convs, 5 fp32" in text and "torch int8" in text and "check OK" in text
    # a gap beyond the limit fails in one line with exit 2 (the file above reused: no export)
    import workbench.measure.quantize_onnx as qo

    info = {"path": out, "size": out.stat().st_size, "int8_convs": 16, "fp32_convs": [""] * 5,
            "quantize": 1, "dequantize": 1}
    monkeypatch.setattr(qo, "export_int8_onnx", lambda model, path, opset: info)
    monkeypatch.setattr(qo, "MAX_PSNR_GAP_DB", -1.0)
    assert main(["export", "--model", str(int8_art), "--int8", "--out", str(out), "--check",
                 "--images", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "int8 ONNX check failed" in err and len(err.splitlines()) == 1


def test_export_int8_refuses_fp32_and_damaged_artifacts(int8_art, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    plain = save_artifact(tmp_path / "fp32", RLFN(RLFNSpec.uniform(scale=2, feature=8, mid=8,
                                                                  esa=4, blocks=2)))
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(plain), "--int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no quantization state" in err and len(err.splitlines()) == 1
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(int8_art, broken)
    (broken / QUANT_FILE).write_bytes(b"not a torch file")
    assert main(["export", "--model", str(broken), "--int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert QUANT_FILE in err and len(err.splitlines()) == 1
    assert not out.exists()
