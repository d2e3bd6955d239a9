"""Deploy modes (fused, bf16, compile) for every family, through the family interface."""
from __future__ import annotations

import pytest
import torch

from workbench.measure.deploy import Deployed, max_gray_diff, prepare
from workbench.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _custom(name: str):
    from test_custom_family import registered_custom_model

    return registered_custom_model(name)


def _tiny_dipnet():
    from workbench.models.rlfn import RLFNSpec

    from workbench.models import build_model

    spec = RLFNSpec.uniform(scale=2, feature=8, mid=6, esa=4, blocks=2)
    from dataclasses import replace

    torch.manual_seed(0)
    return build_model(replace(spec, bias=False, input_range=1.0)).eval()


def _model(name: str):
    if name == "span_tiny_x4":
        torch.manual_seed(0)
        model = create_model("span_tiny_x4").eval()
        with torch.no_grad():  # random weights blow up through 3 blocks of x255 features: tame them
            for p in model.parameters():
                p.mul_(0.3)
        return model
    if name == "dipnet_tiny":
        return _tiny_dipnet()
    return _custom(name)


MODELS = ["span_tiny_x4", "dipnet_tiny", "tiny_edsr_x4", "tiny_imdn_x2"]


@pytest.mark.parametrize("name", MODELS)
def test_fused_within_one_gray_level_and_declared_form(name, images):
    model = _model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dep = prepare(model, mode="fused", example_shape=(1, 3, 20, 24))
    assert isinstance(dep, Deployed) and dep.channels_last
    expected = {"span_tiny_x4": "FusedSPAN", "dipnet_tiny": "FusedRLFN"}.get(name)
    if expected:  # the family's declared form, not the generic one
        assert type(dep.runner).__name__ == expected
    else:  # generic: every conv became one oneDNN primitive
        from workbench.measure.deploy import _PackedConvModule

        packed = [m for m in dep.runner.modules() if isinstance(m, _PackedConvModule)]
        assert len(packed) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        assert any(p.attr == "relu" for p in packed)  # the ReLU after a conv is fused
    diff = max_gray_diff(model, dep, images)
    assert diff["max"] <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", MODELS)
def test_bf16_runs_in_bfloat16_and_stays_close(name, images):
    model = _model(name)
    dep = prepare(model, mode="bf16", example_shape=(1, 3, 20, 24))
    assert any(p.dtype == torch.bfloat16 for p in dep.module.parameters())
    assert any(p.dtype == torch.float32 for p in dep.module.parameters())  # fp32 islands
    diff = max_gray_diff(model, dep, images)
    assert diff["max"] <= 64 and diff["frac_differing"] < 0.5


def test_span_fused_folds_the_x255_into_conv_1():
    model = _model("span_tiny_x4")
    dep = prepare(model, mode="fused", example_shape=None)
    folded = dep.runner.conv_1.weight
    assert torch.allclose(folded, model.conv_1.eval_conv.weight * 255.0)


def test_generic_fused_without_fx_falls_back_to_packed_convs(images):
    """A forward fx cannot trace (data-dependent branch) keeps its code; its convs are packed."""
    from workbench.measure.deploy import _PackedConvModule, generic_fused

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(4, 3, 3, padding=1)

        def forward(self, x):
            y = self.a(x)
            if y.mean() > 1e9:  # never true; fx cannot trace it
                y = y * 2
            return self.b(torch.relu(y))

    m = Branchy().eval()
    fused = generic_fused(Branchy().eval().to(memory_format=torch.channels_last), None)
    assert isinstance(fused.a, _PackedConvModule) and fused.a.attr == "none"
    m2 = Branchy().eval()
    m2.load_state_dict(m.state_dict())
    fused = generic_fused(m2, (8, 8))
    x = torch.rand(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(fused(x), m(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["span_tiny_x4", "tiny_edsr_x4", "tiny_imdn_x2"])
def test_compile_within_one_gray_level(name, images):
    model = _model(name)
    dep = prepare(model, mode="compile", example_shape=None)
    assert max_gray_diff(model, dep, images[:1])["max"] <= 1


def test_span_released_fused_and_bf16_judged_on_set5():
    """The released span_ch28_x4: fused within one gray level on real images; bf16 judged by
    PSNR (its drop is reported; the verdict is judge_precision's)."""
    from workbench.data.benchmark import load_set
    from workbench.measure.deploy import judge_precision

    model = create_model("span_ch28_x4", pretrained=True).eval()
    pset = load_set("Set5", 4)
    crops = [p.lr[:48, :48].copy() for p in pset.pairs[:2]]
    assert max_gray_diff(model, prepare(model, mode="fused", example_shape=None), crops)["max"] <= 1
    small = [type(p)(name=p.name, lr=p.lr[:32, :32].copy(), hr=p.hr[:128, :128].copy())
             for p in pset.pairs[:2]]
    verdict = judge_precision(model, "bf16", small, scale=4)
    assert abs(verdict["drop"]) < 0.1 and verdict["psnr_mode"] > 20


def test_span_bf16_keeps_its_first_block_fp32(images):
    """SPAN's bf16 form: block 1's convs stay fp32 (every block in bf16 cost span_ch28_x4 0.0127 dB
    on Set5, rejected at 0.01; block 1 fp32 0.0097), the other blocks run in bfloat16."""
    model = _model("span_tiny_x4")
    dep = prepare(model, mode="bf16", example_shape=None)
    body = dep.module.body
    assert body[0].c1_r.eval_conv.weight.dtype == torch.float32
    assert all(b.c2_r.eval_conv.weight.dtype == torch.bfloat16 for b in body[1:])
    assert max_gray_diff(model, dep, images[:1])["max"] <= 10
