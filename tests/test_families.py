"""Model families: SPAN and DIPNet load strictly, count exactly, run through their input range, and
artifacts record and reload their family."""
from __future__ import annotations

import json

import pytest
import torch

from workbench.models.artifacts import load_artifact, load_model, save_artifact
from workbench.core.errors import WorkbenchError
from workbench.measure.evaluate import run_model
from workbench.models import (FAMILIES, RLFNSpec, SPABSpec, SPANSpec, build_model, create_model,
                              family_of, get_family, input_range, list_models)
from workbench.models.span import spec_from_state_dict as span_spec_from_state_dict
from workbench.measure.profiling import ntire_counts

pytestmark = pytest.mark.usefixtures("one_thread")

# NTIRE counts at 3x256x256 from each release's results (also in ../shared/reference/expected.json)
COUNTS = {"span_ch28_x4": (150688, 9.83, 41.68, 22), "dipnet_x4": (243252, 14.90, 72.97, 39)}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_ntire_counts_are_exact(name):
    params, flops, acts, convs = COUNTS[name]
    counts = ntire_counts(create_model(name))  # shapes only: the meta device, no arithmetic
    assert counts["params"] == params
    assert round(counts["flops_g"], 2) == flops
    assert round(counts["acts_m"], 2) == acts
    assert counts["convs"] == convs


def test_span_counts_no_silu_and_every_conv_output():
    """41.68 M activations is the plain sum of the 22 conv outputs (SiLU/sigmoid not counted);
    9.83 G FLOPs are conv MACs alone (SPAN has no LeakyReLU)."""
    counts = ntire_counts(create_model("span_ch28_x4"))
    hw = 256 * 256
    assert counts["acts_m"] * 1e6 == 21 * 28 * hw + 48 * hw
    assert counts["flops_g"] * 1e9 == counts["conv_macs"]


@pytest.mark.parametrize("name,family,tensors", [("span_ch28_x4", "span", 44),
                                                  ("dipnet_x4", "rlfn", 59)])
def test_released_weights_load_strictly(name, family, tensors):
    art = load_model(name)
    assert family_of(art.model).name == family
    assert len(art.model.state_dict()) == tensors
    assert input_range(art.model) == 1.0
    assert art.path is not None and art.path.name == f"{name}.pth"


def test_dipnet_is_a_bias_free_rlfn_spec_on_unit_range():
    spec = load_model("dipnet_x4").spec
    assert isinstance(spec, RLFNSpec) and not spec.bias and spec.input_range == 1.0
    assert spec == RLFNSpec.uniform(scale=4, feature=44, mid=38, esa=16, blocks=4, bias=False,
                                    input_range=1.0)
    model = build_model(spec)
    assert model.conv_1.bias is None and model.block_1.c5.bias is None
    assert model.block_1.esa.conv1.bias is not None
    # a bare .pth file of bias-free RLFN weights is read as DIPNet's layout
    assert load_artifact(load_model("dipnet_x4").path).spec == spec
    assert RLFNSpec.from_dict(spec.to_dict()) == spec
    assert "bias" not in RLFNSpec.uniform(scale=4, feature=8).to_dict()  # RLFN records unchanged


def test_run_model_feeds_each_family_its_range():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16) * 255
    for name in ("span_tiny_x2", "dipnet_tiny_x2"):
        model = create_model(name).eval()
        with torch.no_grad():
            assert torch.allclose(run_model(model, x), model(x / 255) * 255, rtol=1e-4, atol=1e-3)
    rlfn = create_model("rlfn_tiny_x2").eval()
    with torch.no_grad():
        assert torch.equal(run_model(rlfn, x), rlfn(x))


def test_tiny_span_builds_infers_and_round_trips(tmp_path):
    spec = SPANSpec(scale=2, feature=8, blocks=(SPABSpec(6, 5), SPABSpec(4, 7)), tail=5, fuse=6)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    assert model.conv_cat.in_channels == 8 + 5 + 8 + 4  # feature, tail, block 1 out, tap's mid1
    with torch.no_grad():
        y = model(torch.rand(1, 3, 9, 11))
    assert y.shape == (1, 3, 18, 22)
    assert span_spec_from_state_dict(model.state_dict()) == spec
    assert SPANSpec.from_dict(spec.to_dict()) == spec
    assert spec.with_widths({"feature": 6, "block2.mid1": 3}).blocks[1] == SPABSpec(3, 7)
    save_artifact(tmp_path / "span", model)
    meta = json.loads((tmp_path / "span" / "artifact.json").read_text())
    assert meta["family"] == "span" and meta["architecture"]["arch"] == "span"
    art = load_artifact(tmp_path / "span")
    assert art.spec == spec
    for key, value in model.state_dict().items():
        assert torch.equal(art.model.state_dict()[key], value)


def test_artifact_without_family_field_loads_as_rlfn(tmp_path, tiny_model):
    save_artifact(tmp_path / "old", tiny_model)
    meta_path = tmp_path / "old" / "artifact.json"
    meta = json.loads(meta_path.read_text())
    assert meta.pop("family") == "rlfn"
    meta_path.write_text(json.dumps(meta))
    assert load_artifact(tmp_path / "old").spec == tiny_model.spec
    meta["family"] = "nosuch"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(WorkbenchError, match="unknown model family"):
        load_artifact(tmp_path / "old")


def test_registry_lists_every_family():
    assert {"rlfn", "span"} <= set(FAMILIES)
    assert {"span_ch28_x4", "dipnet_x4", "rlfn_s_x4"} <= set(list_models())
    with pytest.raises(WorkbenchError, match="unknown model family"):
        get_family("edsr_from_nowhere")


@pytest.mark.slow
def test_eval_reproduces_expected_figures(shared_dir):
    from workbench.measure.evaluate import evaluate

    expected = json.loads((shared_dir / "reference" / "expected.json").read_text())["quality"]
    for name in ("span_ch28_x4", "dipnet_x4"):
        results = evaluate(load_model(name).model, ["Set5", "Set14"], scale=4,
                           data_root=shared_dir / "data", device="cpu", progress=False)
        for set_name in ("Set5", "Set14"):
            ref, got = expected[name][set_name], results[set_name].mean
            assert abs(got["psnr_y"] - ref["psnr_y"]) <= 0.005, (name, set_name, got)
            assert abs(got["ssim_y"] - ref["ssim_y"]) <= 0.0005, (name, set_name, got)


# -- channel groups from the graph, pruning -----------------------------------------------------

def _silence(model, group, channel):
    with torch.no_grad():
        for name in group.producers:
            conv = model.get_submodule(name)
            conv.weight[channel] = 0
            if conv.bias is not None:
                conv.bias[channel] = 0


def test_derived_groups_reproduce_the_rlfn_table():
    from workbench.models import BlockSpec, RLFN
    from workbench.prune.groups import derive_groups, rlfn_reference_groups

    odd = RLFNSpec(scale=3, trunk=7, blocks=(BlockSpec(5, 6, 9, 3, 4, 5), BlockSpec(6, 5, 8, 4, 3, 2)))
    for model in (create_model("rlfn_tiny_x2"), RLFN(odd), create_model("dipnet_tiny_x4")):
        derived, table = derive_groups(model), rlfn_reference_groups(model.spec)
        assert derived == table and list(derived) == list(table)


def test_span_groups_cover_concat_and_attention():
    from workbench.prune.groups import channel_groups

    model = create_model("span_tiny_x2")
    groups = channel_groups(model)
    assert list(groups) == list(model.spec.group_widths())
    feature = groups["feature"]
    assert feature.producers == ("conv_1.eval_conv", "block_1.c3_r.eval_conv",
                                 "block_2.c3_r.eval_conv", "block_3.c3_r.eval_conv")
    assert "conv_cat" in feature.consumers and "conv_2.eval_conv" in feature.consumers
    # conv_cat reads [feature 0:8, tail 8:16, block 1 out 16:24, block 3's mid1 24:30]
    assert sorted(feature.input_indices("conv_cat")) == list(range(8)) + list(range(16, 24))
    assert groups["tail"].input_indices("conv_cat") == list(range(8, 16))
    assert groups["block3.mid1"].input_indices("conv_cat") == list(range(24, 30))
    assert groups["fuse"].consumers == ("upsampler.0",)
    assert all("upsampler.0" not in g.producers for g in groups.values())


@pytest.mark.parametrize("name", ["span_tiny_x2", "dipnet_tiny_x2"])
def test_pruning_a_silenced_channel_keeps_the_output(name, tmp_path):
    """Every group: silence one channel, prune exactly it; the function must not change."""
    from workbench.prune.groups import channel_groups
    from workbench.prune.surgery import prune_to_widths

    torch.manual_seed(0)
    model = create_model(name).eval()
    groups = channel_groups(model)
    for group in groups.values():
        _silence(model, group, 1)
    x = torch.rand(1, 3, 16, 16)
    keep = {n: [i for i in range(g.width) if i != 1] for n, g in groups.items()}
    pruned = prune_to_widths(model, {}, keep=keep).eval()
    assert pruned.spec == model.spec.with_widths({n: g.width - 1 for n, g in groups.items()})
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5)
    save_artifact(tmp_path / "p", pruned)
    assert load_artifact(tmp_path / "p").spec == pruned.spec


def test_prune_cli_on_span(tmp_path, capsys):
    from workbench.cli import main

    assert main(["prune", "groups", "--model", "span_tiny_x2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["group"] == "feature" and rows[-1]["group"] == "fuse"
    out = tmp_path / "pruned"
    assert main(["prune", "apply", "--model", "span_tiny_x2", "--widths", "feature=6",
                 "block*.mid2=4", "--out", str(out)]) == 0
    art = load_artifact(out)
    assert art.spec.feature == 6 and all(b.mid2 == 4 for b in art.spec.blocks)


def test_span_and_dipnet_through_sensitivity_export_and_deploy(tmp_path):
    from workbench.data.benchmark import load_set
    from workbench.measure.deploy import prepare
    from workbench.measure.evaluate import super_resolve
    from workbench.prune.export import check_onnx, export_onnx
    from workbench.prune.sensitivity import analyze

    from workbench.data.benchmark import ImagePair, PairedSet

    pair = load_set("Set5", 2).pairs[0]
    small = PairedSet("crop", 2, None, [ImagePair(pair.name, pair.hr[:48, :48].copy(),
                                                  pair.lr[:24, :24].copy())])
    for name in ("span_tiny_x2", "dipnet_tiny_x2"):
        torch.manual_seed(0)
        model = create_model(name).eval()
        result = analyze(model, small, ratios=[0.5], latency=False, progress=False)
        assert len(result.rows) == len(model.spec.group_widths())
        onnx_path = export_onnx(model, tmp_path / f"{name}.onnx")
        lr = small.pairs[0].lr
        # 0..255 in, 0..255 out; random weights give outputs in the thousands: relative check
        with torch.no_grad():
            peak = float(run_model(model, torch.from_numpy(lr.transpose(2, 0, 1).copy())
                                   .float()[None]).abs().max())
        assert check_onnx(model, onnx_path, [lr], tolerance=1e-5 * peak)["ok"]
        deployed = prepare(model, mode="channels_last")
        diff = super_resolve(deployed, lr).astype(int) - super_resolve(model, lr).astype(int)
        assert abs(diff).max() <= 1


@pytest.mark.parametrize("name,targets", [("span_tiny_x2", {"feature": 6, "fuse": 5}),
                                          ("dipnet_tiny_x2", {"trunk": 6})])
def test_soft_filter_pruning_finalizes_to_the_masked_function(name, targets):
    from workbench.prune.sfp import SoftFilterPruning

    torch.manual_seed(0)
    model = create_model(name).eval()
    sfp = SoftFilterPruning(model, targets)
    sfp.apply(model)
    pruned = sfp.finalize(model).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5)
    widths = pruned.spec.group_widths() if hasattr(pruned.spec, "group_widths") else {}
    assert all(widths[n] == w for n, w in sfp.targets.items())


def test_the_family_of_a_ref_is_known_before_loading(tmp_path):
    from workbench.models import family_of_ref, min_lr_side
    from workbench.models.artifacts import save_artifact

    span = build_model(SPANSpec(scale=2, feature=8, blocks=(SPABSpec(6, 5),), tail=5, fuse=6))
    folder = save_artifact(tmp_path / "span", span)
    assert family_of_ref(folder).name == "span" and family_of_ref("rlfn_s_x4").name == "rlfn"
    assert min_lr_side("span_ch28_x4") == (1, "span") and min_lr_side("rlfn_ntire_x4") == (15, "rlfn")
    assert family_of_ref(tmp_path / "weights.pth") is None
    assert min_lr_side(tmp_path / "weights.pth") == (15, "rlfn")  # unknown: the strictest family
