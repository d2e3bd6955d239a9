"""Channel groups and physical removal (workbench.prune.surgery) on tiny and release-shaped RLFNs."""
from __future__ import annotations

import pytest
import torch

from workbench.models.artifacts import load_artifact, save_artifact
from workbench.core.errors import WorkbenchError
from workbench.models import RLFN, BlockSpec, RLFNSpec, group_widths
from workbench.prune.groups import expand_widths, expected_groups
from workbench.prune.surgery import (channel_groups, drop_blocks, group_importance, prune_to_spec,
                                     prune_to_widths)


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_channel(model: RLFN, name: str, channel: int) -> None:
    """Zero every producer filter (weights and bias) of one channel of a group."""
    group = expected_groups(model.spec)[name]
    with torch.no_grad():
        for conv in group.producers:
            module = model.get_submodule(conv)
            module.weight[channel].zero_()
            module.bias[channel].zero_()


@pytest.fixture
def odd_spec() -> RLFNSpec:
    """A non-uniform spec: every group has its own width, so a mix-up shows as a shape error."""
    return RLFNSpec(scale=3, trunk=7, blocks=(BlockSpec(5, 6, 9, 3, 4, 5), BlockSpec(6, 5, 8, 4, 3, 2),
                                              BlockSpec(4, 7, 10, 2, 5, 3)))


@pytest.mark.parametrize("which", ["tiny", "odd"])
def test_torch_pruning_groups_equal_spec_groups(which, tiny_model, odd_spec):
    model = tiny_model if which == "tiny" else RLFN(odd_spec)
    groups = channel_groups(model)  # verify=True: raises if torch-pruning's grouping differs
    assert list(groups) == list(group_widths(model.spec))
    assert {n: g.width for n, g in groups.items()} == group_widths(model.spec)
    assert all("upsampler.0" not in g.producers for g in groups.values())
    assert groups["trunk.0"].producers == ("conv_1", "block_1.c3_r", "conv_2")
    assert "upsampler.0" in groups["trunk.0"].consumers


class NoLongSkip(RLFN):
    """An RLFN whose forward drops the long skip: conv_1 and conv_2 no longer share channels."""

    def forward(self, x):
        out = self.conv_1(x)
        for block in self.blocks():
            out = block(out)
        return self.upsampler(self.conv_2(out))


def test_groups_mismatch_is_detected(tiny_spec):
    with pytest.raises(WorkbenchError, match="do not match the model spec"):
        channel_groups(NoLongSkip(tiny_spec))
    assert "trunk.0" in channel_groups(NoLongSkip(tiny_spec), verify=False)


def test_rlfn_s_trunk_46_gives_challenge_param_count():
    torch.manual_seed(0)
    model = RLFN(RLFNSpec.uniform(scale=4, feature=48, mid=48, esa=16, blocks=4))
    pruned = prune_to_widths(model, {"trunk": 46})
    assert n_params(pruned) == 317_218
    assert pruned.spec == RLFNSpec(scale=4, trunk=46, blocks=tuple(
        BlockSpec(48, 48, 46, 16, 16, 16) for _ in range(4)))
    assert pruned.upsampler[0].out_channels == 48  # 3 * 4^2: never pruned
    assert n_params(model) > 317_218  # the original is untouched


def test_prune_to_spec_drops_blocks_and_matches_target():
    torch.manual_seed(0)
    model = RLFN(RLFNSpec.uniform(scale=4, feature=48, mid=48, esa=16, blocks=6)).eval()
    target = RLFNSpec(scale=4, trunk=46, blocks=tuple(BlockSpec(48, 48, 46) for _ in range(4)))
    pruned = prune_to_spec(model, target)
    assert pruned.spec == target and n_params(pruned) == 317_218
    # kept blocks inherit their weights exactly (block 2's mid convs were not pruned)
    assert torch.equal(pruned.block_2.c2_r.weight, model.block_2.c2_r.weight)
    with pytest.raises(WorkbenchError, match="cannot add blocks"):
        prune_to_spec(pruned, model.spec)
    with pytest.raises(WorkbenchError, match="x4"):
        prune_to_spec(model, RLFNSpec.uniform(scale=2, feature=8, blocks=2))


def test_drop_blocks_keeps_prefix(tiny_model):
    x = torch.rand(1, 3, 16, 16) * 255
    one = drop_blocks(tiny_model, 1)
    assert one.spec.num_blocks == 1
    with torch.no_grad():
        expected = tiny_model.upsampler(tiny_model.conv_2(tiny_model.block_1(tiny_model.conv_1(x)))
                                         + tiny_model.conv_1(x))
        assert torch.allclose(one(x), expected, atol=1e-4)


@pytest.mark.parametrize("name", ["trunk.0", "trunk.1", "trunk.2", "block1.mid1", "block2.mid2",
                                  "block1.esa.reduce", "block2.esa.inner", "block1.esa.fuse"])
def test_removing_a_dead_channel_keeps_the_output(tiny_model, name):
    """A channel whose every producer (weights and bias) is zero contributes nothing: removing
    it must not change the output, and the l1 criterion must pick exactly that channel."""
    zero_channel(tiny_model, name, 2)
    scores = group_importance(tiny_model, name, criterion="l1")
    assert int(torch.argmin(scores)) == 2 and scores[2] == 0
    pruned = prune_to_widths(tiny_model, {name: group_widths(tiny_model.spec)[name] - 1})
    assert group_widths(pruned.spec)[name] == group_widths(tiny_model.spec)[name] - 1
    x = torch.rand(2, 3, 17, 19) * 255
    with torch.no_grad():
        diff = (pruned(x) - tiny_model(x)).abs().max().item()
    assert diff < 1e-4
    # a live channel does matter: removing channel 0 instead changes the output
    other = prune_to_widths(tiny_model, {}, keep={name: [i for i in range(
        group_widths(tiny_model.spec)[name]) if i != 0]})
    with torch.no_grad():
        assert (other(x) - tiny_model(x)).abs().max().item() > 1e-3


def test_keep_indices_select_exact_channels(tiny_model):
    pruned = prune_to_widths(tiny_model, {"block1.mid1": 3}, keep={"block1.mid1": [6, 1, 4]})
    assert torch.equal(pruned.block_1.c1_r.weight, tiny_model.block_1.c1_r.weight[[1, 4, 6]])
    assert torch.equal(pruned.block_1.c2_r.weight, tiny_model.block_1.c2_r.weight[:, [1, 4, 6]])
    with pytest.raises(WorkbenchError, match="keeps 3 channels"):
        prune_to_widths(tiny_model, {"block1.mid1": 2}, keep={"block1.mid1": [6, 1, 4]})


def test_l1_and_l2_rank_by_filter_norms(tiny_model):
    w = tiny_model.block_1.c1_r.weight.detach().double().reshape(8, -1)
    assert torch.allclose(group_importance(tiny_model, "block1.mid1", criterion="l1"), w.abs().sum(1))
    assert torch.allclose(group_importance(tiny_model, "block1.mid1", criterion="l2"), w.norm(dim=1))
    with pytest.raises(WorkbenchError, match="unknown importance"):
        group_importance(tiny_model, "block1.mid1", criterion="taylor")


def test_width_errors(tiny_model):
    with pytest.raises(WorkbenchError, match="cannot prune it to 9"):
        prune_to_widths(tiny_model, {"trunk.0": 9})
    with pytest.raises(WorkbenchError, match="no channel group matches"):
        prune_to_widths(tiny_model, {"block9.mid1": 2})
    with pytest.raises(WorkbenchError, match="positive integer"):
        expand_widths(tiny_model.spec, {"trunk": 0})
    assert expand_widths(tiny_model.spec, {"trunk": 6, "trunk.1": 5}) == {
        "trunk.0": 6, "trunk.1": 5, "trunk.2": 6}


def test_inplace_and_artifact_roundtrip(tiny_model, tmp_path):
    x = torch.rand(1, 3, 16, 16) * 255
    copy = prune_to_widths(tiny_model, {"trunk": 5, "block*.esa.inner": 2, "block2.mid2": 3})
    same = prune_to_widths(tiny_model, {"trunk": 5, "block*.esa.inner": 2, "block2.mid2": 3},
                           inplace=True)
    assert same is tiny_model and same.spec == copy.spec
    path = save_artifact(tmp_path / "pruned", copy)
    loaded = load_artifact(path)
    assert loaded.spec == copy.spec
    with torch.no_grad():
        assert torch.equal(loaded.model(x), copy(x))
        assert torch.allclose(same(x), copy(x))


def test_output_criterion_equals_brute_force_silencing(tiny_model):
    """'output' scores = mean squared output change on the calibration crops when a channel's
    producers are zeroed (computed from the group's cache point; checked by brute force)."""
    import copy

    from workbench.prune.importance import calibration_batch

    x = calibration_batch(2)
    with torch.no_grad():
        base = tiny_model(x)
        for name in ("trunk.0", "trunk.1", "block2.mid2", "block1.esa.fuse"):
            scores = group_importance(tiny_model, name, criterion="output")
            brute = []
            for c in range(len(scores)):
                other = copy.deepcopy(tiny_model)
                zero_channel(other, name, c)
                brute.append(float((other(x) - base).double().pow(2).mean()))
            assert torch.allclose(scores, torch.tensor(brute, dtype=torch.float64), rtol=1e-4,
                                  atol=1e-9), name
            assert scores.min() >= 0 and scores.max() > 0
