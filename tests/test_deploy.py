"""Deploy modes: outputs within one gray level of fp32 eager (tiny model and real weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.models.artifacts import load_model
from workbench.data.benchmark import load_set
from workbench.measure.deploy import (CPU_MODES, Deployed, available_modes, check_deploy, max_gray_diff,
                              prepare)
from workbench.core.errors import WorkbenchError
from workbench.measure.evaluate import super_resolve

FAST_FP32_MODES = ["eager", "channels_last", "fused"]


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
            rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)]


@pytest.mark.parametrize("mode", FAST_FP32_MODES)
def test_fp32_modes_match_eager_on_tiny_model(mode, tiny_model, images):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    dep = prepare(tiny_model, mode=mode, example_shape=(1, 3, 20, 24))
    assert isinstance(dep, Deployed) and dep.mode == mode
    out = dep(torch.rand(1, 3, 20, 24) * 255)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 40, 48)
    result = check_deploy(tiny_model, dep, images, tolerance=1)
    assert result["max"] <= 1 and len(result["per_image"]) == 2
    # the caller's model is left as it was (fp32, contiguous, same weights)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert tiny_model.conv_1.weight.is_contiguous()


@pytest.mark.parametrize("mode", ["bf16", "bf16_autocast"])
def test_bf16_modes_run_and_are_measured(mode, tiny_model, images):
    dep = prepare(tiny_model, mode=mode, example_shape=None)
    out = dep(torch.rand(1, 3, 16, 16) * 255)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 32, 32)
    diff = max_gray_diff(tiny_model, dep, images)
    assert 0 <= diff["max"] <= 255 and 0.0 <= diff["frac_differing"] <= 1.0


def test_mode_errors(tiny_model):
    with pytest.raises(WorkbenchError, match="unknown deploy mode"):
        prepare(tiny_model, mode="turbo")
    with pytest.raises(WorkbenchError, match="RLFN"):
        prepare(torch.nn.Conv2d(3, 3, 3), mode="fused")
    if not torch.cuda.is_available():
        for mode in ("fp16", "cuda_graph"):
            with pytest.raises(WorkbenchError, match="GPU"):
                prepare(tiny_model, mode=mode)
        assert available_modes("cpu") == CPU_MODES


@pytest.fixture(scope="module")
def ntire_and_set5():
    return load_model("rlfn_ntire_x4").model.eval(), load_set("Set5", 4)


@pytest.mark.parametrize("mode", ["channels_last", "fused"])
def test_real_weights_within_one_gray_level(mode, ntire_and_set5):
    model, set5 = ntire_and_set5
    dep = prepare(model, mode=mode, example_shape=(1, 3, 64, 64))
    result = check_deploy(model, dep, set5, tolerance=1)
    assert result["max"] <= 1
    assert result["frac_differing"] < 1e-3
    # and it is usable wherever a model is: super_resolve takes the deployed module as is
    sr = super_resolve(dep, set5.pairs[0].lr)
    assert sr.shape == set5.pairs[0].hr.shape


def test_check_deploy_catches_bf16_autocast_on_real_image(ntire_and_set5):
    """bfloat16 everywhere cannot hold 0..255 outputs to one gray level: the check must say so."""
    model, set5 = ntire_and_set5
    dep = prepare(model, mode="bf16_autocast", example_shape=None)
    with pytest.raises(WorkbenchError, match="gray levels"):
        check_deploy(model, dep, [set5.pairs[0].lr], tolerance=1)


@pytest.mark.slow
def test_compile_matches_eager(tiny_model, images):
    dep = prepare(tiny_model, mode="compile", example_shape=(1, 3, 16, 16))
    assert check_deploy(tiny_model, dep, [images[1]], tolerance=1)["max"] <= 1


def test_runner_always_gets_an_inference_tensor():
    """A compiled runner guards on its input's dispatch keys: tensors made inside and outside
    inference mode must reach it alike, or the first timed call after the warm-up recompiles."""
    seen = []

    def runner(x):
        seen.append((x.is_inference(), x.is_contiguous(memory_format=torch.channels_last)))
        return x

    dep = Deployed(runner, torch.nn.Identity(), mode="compile", device=torch.device("cpu"),
                   channels_last=True)
    outside = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        inside = torch.rand(1, 3, 8, 8)
    dep(outside)
    dep(inside)
    with torch.inference_mode():
        dep(outside)
    assert seen == [(True, True)] * 3
    assert not outside.is_inference()  # the caller's tensor is left as it was


@pytest.mark.slow
def test_compile_warmup_serves_inference_mode_calls(tiny_model):
    import torch._dynamo.utils as dynamo_utils

    dep = prepare(tiny_model, mode="compile", example_shape=(1, 3, 16, 16))
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        dep(torch.rand(1, 3, 16, 16) * 255)
    dep(torch.rand(1, 3, 16, 16) * 255)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == before


@pytest.mark.slow
def test_compile_real_weights_within_one_gray_level(ntire_and_set5):
    model, set5 = ntire_and_set5
    dep = prepare(model, mode="compile", example_shape=None)
    assert check_deploy(model, dep, set5, tolerance=1)["max"] <= 1


def test_deployed_module_is_timed_as_prepared(tiny_model):
    from workbench.measure.profiling import measure_latency

    dep = prepare(tiny_model, mode="fused", example_shape=(1, 3, 16, 16))
    r = measure_latency(dep, input_shape=(1, 3, 16, 16), warmup=1, repeats=3, prepared=True)
    assert r["repeats"] == 3 and r["median_ms"] > 0
