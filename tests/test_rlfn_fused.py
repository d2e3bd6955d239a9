"""RLFN's ``fused`` deploy form (folded ESA convs, post-op fusion, 16-channel padding) equals
fp32 eager within one gray level, on tiny random RLFNs and on the released rlfn_ntire_x4."""
from __future__ import annotations

import resource
import sys
from dataclasses import replace

import pytest
import torch

from workbench.measure.deploy import keep_freed_memory, max_gray_diff, prepare
from workbench.models import build_model, create_model
from workbench.models.rlfn import BlockSpec, FusedRLFN, RLFNSpec, fused_width

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fused_width_pads_only_nearly_aligned_widths():
    assert [fused_width(w) for w in (46, 47, 31, 48, 16)] == [48, 48, 32, 48, 16]
    assert [fused_width(w) for w in (44, 40, 30, 15, 8)] == [44, 40, 30, 15, 8]


def _tiny(scale: int, *, bias: bool = True) -> torch.nn.Module:
    """Widths 31 (computed at 32) and 24/15/8 (kept): both code paths of the padding."""
    spec = RLFNSpec(scale=scale, trunk=31, blocks=(
        BlockSpec(mid1=31, mid2=24, out=31, esa=15, esa_inner=8, esa_fuse=15),
        BlockSpec(mid1=24, mid2=31, out=31, esa=8, esa_inner=8, esa_fuse=8)))
    if not bias:  # DIPNet's layout: no bias outside ESA, [0, 1] images
        spec = replace(spec, bias=False, input_range=1.0)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    with torch.no_grad():  # random weights on 0..255 inputs: keep the activations in range
        for p in model.parameters():
            p.mul_(0.5)
    return model


@pytest.mark.parametrize("scale,bias,example", [(4, True, (1, 3, 20, 24)), (3, True, None),
                                                (2, False, (1, 3, 20, 24))])
def test_tiny_fused_equals_eager(scale, bias, example, images):
    model = _tiny(scale, bias=bias)
    dep = prepare(model, mode="fused", example_shape=example)
    fused = dep.runner
    assert isinstance(fused, FusedRLFN)
    assert fused.conv_1.weight.shape[0] == 32            # trunk 31 computed at 32
    assert fused.blocks_[0]["c2"].weight.shape[0] == 24  # 24 is not padded
    assert fused.blocks_[0]["reduce"].weight.shape[:2] == (15, 32)  # conv1 folded into c5
    assert fused.up.weight.shape[:2] == (3 * scale * scale, 32)
    result = max_gray_diff(model, dep, images)
    assert result["max"] <= 1 and result["frac_differing"] < 0.01
    x = torch.rand(1, 3, 18, 21) * (255.0 if bias else 1.0)
    with torch.inference_mode():
        ref, got = model(x), dep(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-3 * float(ref.abs().max()))


def test_released_rlfn_ntire_fused_equals_eager_on_set5():
    from workbench.data.benchmark import load_set

    model = create_model("rlfn_ntire_x4", pretrained=True).eval()
    crops = [p.lr[:64, :64].copy() for p in load_set("Set5", 4).pairs[:3]]
    dep = prepare(model, mode="fused", example_shape=(1, 3, 64, 64))
    assert dep.runner.conv_1.weight.shape[0] == 48  # the 46-wide trunk at 48
    result = max_gray_diff(model, dep, crops)
    assert result["max"] <= 1 and result["frac_differing"] < 1e-3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_stops_page_faults_of_reallocated_activations():
    assert keep_freed_memory() is True
    with torch.inference_mode():
        for _ in range(3):  # warm: the heap grows to the peak once
            blocks = [torch.ones(2 << 20) for _ in range(4)]  # 4 x 8 MiB
            del blocks
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            blocks = [torch.ones(2 << 20) for _ in range(4)]
            del blocks
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # returned to the system on each free, it is 3 x 4 x 2,048 = 24,576 page faults (22,528
    # measured without keep_freed_memory); kept, none (the margin is for the kernel's own)
    assert faults < 6000, f"{faults} page faults"


@pytest.mark.slow  # one inductor compile: about 25 s here
def test_tiny_compile_compiles_the_folded_form(images):
    from workbench.models.rlfn import CompiledRLFN

    model = _tiny(4)
    dep = prepare(model, mode="compile", example_shape=None)
    compiled = dep.runner.module
    assert isinstance(compiled, CompiledRLFN) and compiled.conv_1.out_channels == 32
    assert max_gray_diff(model, dep, images[:1])["max"] <= 1
