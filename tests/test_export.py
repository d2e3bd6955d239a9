"""ONNX export (workbench.prune.export and `workbench export`) of pruned and unpruned models."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from workbench.models.artifacts import save_artifact
from workbench.cli import main
from workbench.data.benchmark import load_set
from workbench.prune.export import check_onnx, export_onnx
from workbench.prune.surgery import prune_to_widths


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real_crops() -> list[np.ndarray]:
    """Two crops of different sizes from a real Set5 image (x2 LR)."""
    lr = np.asarray(load_set("Set5", 2)[0].lr)
    return [lr[:40, :48], lr[60:93, 10:31]]


def test_pruned_model_exports_with_dynamic_axes(tiny_model, tmp_path, real_crops):
    pruned = prune_to_widths(tiny_model, {"trunk": 6, "block1.mid1": 5, "block2.esa.inner": 3})
    path = export_onnx(pruned, tmp_path / "m.onnx", opset=17)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims][2:] == ["height", "width"]
    result = check_onnx(pruned, path, real_crops)
    assert result["ok"] and result["max_abs_diff"] < 1e-3
    assert [r["shape"][2:] for r in result["images"]] == [[40, 48], [33, 21]]


def test_check_detects_a_different_model(tiny_model, tmp_path, real_crops):
    path = export_onnx(tiny_model, tmp_path / "m.onnx")
    other = prune_to_widths(tiny_model, {"trunk.1": 7})  # one live channel fewer: other outputs
    assert not check_onnx(other, path, real_crops[:1])["ok"]


def test_export_cli(tiny_model, tmp_path, capsys):
    art = save_artifact(tmp_path / "tiny", prune_to_widths(tiny_model, {"trunk": 7}))
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--model", str(art), "--out", str(out), "--check", "--images", "1"]) == 0
    text = capsys.readouterr().out
    assert "check OK" in text and out.is_file()
    assert main(["export", "--model", str(art), "--out", str(out), "--opset", "13"]) == 2
    assert "opset must be >= 17" in capsys.readouterr().err


def test_check_size_limit_is_the_family_s(tiny_model, tmp_path):
    """RLFN's ESA needs 15x15 LR inputs; SPAN has no pooling, so a 10x10 check image is fine."""
    import torch

    from workbench.models import SPABSpec, SPANSpec, build_model
    from workbench.core.errors import WorkbenchError

    small = [np.random.default_rng(0).integers(0, 256, (10, 10, 3), dtype=np.uint8)]
    path = export_onnx(tiny_model, tmp_path / "rlfn.onnx")
    with pytest.raises(WorkbenchError, match=r"rlfn needs LR images of at least 15x15"):
        check_onnx(tiny_model, path, small)
    torch.manual_seed(0)
    span = build_model(SPANSpec(scale=2, feature=8, blocks=(SPABSpec(6, 5),), tail=5, fuse=6)).eval()
    path = export_onnx(span, tmp_path / "span.onnx")
    assert check_onnx(span, path, small)["ok"]
