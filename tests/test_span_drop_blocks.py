"""Dropping SPAN blocks through the family interface (surgery.drop_blocks, the prune stage's
keep_blocks): the kept blocks' weights, conv_cat's tapped slice rewired, strict rebuild."""
from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F

from workbench.core.errors import WorkbenchError
from workbench.models import create_model
from workbench.prune.surgery import drop_blocks, prune_to_widths

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(model, keep, x):
    """SPAN's forward by hand over blocks ``keep`` of ``model`` (tap = the last kept block)."""
    feature = model.conv_1((x - model.mean) * 255.0)
    out, first, tapped = feature, None, None
    for j, k in enumerate(keep):
        block = getattr(model, f"block_{k}")
        o1 = F.silu(block.c1_r(out))
        o3 = block.c3_r(F.silu(block.c2_r(o1)))
        out = (o3 + out) * (torch.sigmoid(o3) - 0.5)
        if j == 0:
            first = out
        tapped = o1
    tail = model.conv_2(out)
    return model.upsampler(model.conv_cat(torch.cat([feature, tail, first, tapped], 1)))


def test_released_span_keeps_five_blocks_and_rewires_the_tap():
    model = create_model("span_ch28_x4", pretrained=True).eval()
    five = drop_blocks(model, 5).eval()
    assert five.spec.num_blocks == 5 and five.spec.tap == 5  # block 6 (the tap) is gone
    assert sum(p.numel() for p in five.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(five(x), _reference(model, [1, 2, 3, 4, 5], x), atol=1e-4)
        gap = drop_blocks(model, keep=[1, 3, 6]).eval()
        assert gap.spec.tap == 3
        assert torch.allclose(gap(x), _reference(model, [1, 3, 6], x), atol=1e-4)
        assert torch.equal(drop_blocks(model, 6)(x), model(x))


def test_tap_width_must_match_and_keep_is_checked():
    torch.manual_seed(0)
    model = create_model("span_tiny_x4").eval()  # three blocks, tap 3
    narrower = prune_to_widths(model, {"block2.mid1": 4}, criterion="l1")
    with pytest.raises(WorkbenchError, match="conv_cat's tapped slice with 4 channels"):
        drop_blocks(narrower, keep=[1, 2])
    assert drop_blocks(narrower, keep=[2, 3]).spec.tap == 2  # the tap block kept: renumbered
    with pytest.raises(WorkbenchError, match="increasing numbers"):
        drop_blocks(model, keep=[3, 1])


def test_prune_stage_keep_blocks_on_span(tmp_path):
    from workbench.models.artifacts import load_artifact
    from workbench.cli import main

    recipe = tmp_path / "drop.yaml"
    recipe.write_text(textwrap.dedent("""
        model: span_ch28_x4
        seed: 0
        device: cpu
        data:
          val: {sets: [Set5], root: null}
        stages:
          - id: drop
            stage: prune
            keep_blocks: [1, 2, 3, 4, 6]
            targets: {"block*.mid2": 24}
            criterion: l1
    """))
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 0
    stage = next(p for p in run_dir.iterdir() if p.is_dir() and "drop" in p.name)
    art = load_artifact(stage / "artifact")  # reloads from its own record
    assert art.spec.num_blocks == 5 and art.spec.tap == 5
    assert all(b.mid2 == 24 and b.mid1 == 28 for b in art.spec.blocks)
