"""Soft filter pruning: masking during training, exact removal at the end, resumable mask."""
from __future__ import annotations

import pytest
import torch

from workbench.models.artifacts import load_artifact, save_artifact
from workbench.models import group_widths
from workbench.prune.groups import expected_groups
from workbench.prune.sfp import SoftFilterPruning, zero_channels
from workbench.train.loop import TrainSettings, fit


pytestmark = pytest.mark.usefixtures("one_thread")


class RandomPairs:
    """Tiny in-memory SR pairs on the 0..255 scale (x2, 16x16 LR)."""

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.hr = torch.rand(n, 3, 32, 32, generator=g) * 255
        self.lr = torch.nn.functional.avg_pool2d(self.hr, 2)

    def __len__(self) -> int:
        return len(self.hr)

    def __getitem__(self, i: int):
        return self.lr[i], self.hr[i]


def producers_zero(model, name, channels) -> bool:
    group = expected_groups(model.spec)[name]
    for conv in group.producers:
        m = model.get_submodule(conv)
        if m.weight[channels].abs().sum() != 0 or m.bias[channels].abs().sum() != 0:
            return False
    return True


def test_sfp_masks_each_epoch_and_removal_is_exact(tiny_model, tmp_path):
    targets = {"trunk": 6, "block1.mid1": 5, "block2.esa.inner": 2, "block1.esa.fuse": 3}
    sfp = SoftFilterPruning(tiny_model, targets, criterion="l2")
    settings = TrainSettings(iterations=6, batch_size=4, patch_size=32, lr=1e-3,
                             epoch_iterations=2, checkpoint_every=0, log_every=1)
    fit(tiny_model, RandomPairs(), settings=settings, device="cpu", seed=1, callbacks=[sfp],
        progress=False)
    assert len(sfp.history) == 3  # one mask per epoch end
    for name, keep in sfp.keep.items():
        dropped = [i for i in range(group_widths(tiny_model.spec)[name]) if i not in keep]
        assert producers_zero(tiny_model, name, dropped), name
    # after the last epoch end the model is masked: removal must not change its output
    tiny_model.eval()
    pruned = sfp.finalize(tiny_model)
    widths = group_widths(pruned.spec)
    assert widths["trunk.0"] == widths["trunk.1"] == widths["trunk.2"] == 6
    assert widths["block1.mid1"] == 5 and widths["block2.esa.inner"] == 2
    assert widths["block1.esa.fuse"] == 3 and widths["block2.mid1"] == 8
    x = torch.rand(2, 3, 20, 24) * 255
    with torch.no_grad():
        masked_out, pruned_out = tiny_model(x), pruned(x)
    assert (masked_out - pruned_out).abs().max().item() < 1e-4
    assert masked_out.abs().max() > 1  # not a trivially zero network
    path = save_artifact(tmp_path / "sfp", pruned)
    again = load_artifact(path)
    assert again.spec == pruned.spec
    with torch.no_grad():
        assert torch.equal(again.model(x), pruned_out)


def test_partial_zeroing_of_a_residual_group_is_not_removal(tiny_model):
    """Why SFP zeroes every producer: zeroing only c5's filter of a trunk.1 channel leaves the
    channel alive (ESA's conv4 and block 2's c3_r still produce it), so removing it changes the
    output; zeroing the whole group's producers makes removal exact."""
    import copy

    from workbench.prune.surgery import prune_to_widths

    x = torch.rand(1, 3, 16, 16) * 255
    keep = {"trunk.1": [0, 1, 2, 4, 5, 6, 7]}
    partial = copy.deepcopy(tiny_model)
    with torch.no_grad():
        partial.block_1.c5.weight[3].zero_()
        partial.block_1.c5.bias[3].zero_()
        assert (prune_to_widths(partial, {}, keep=keep)(x) - partial(x)).abs().max() > 1e-2
    whole = copy.deepcopy(tiny_model)
    zero_channels(whole, expected_groups(whole.spec)["trunk.1"], [3])
    assert producers_zero(whole, "trunk.1", [3])
    with torch.no_grad():
        assert (prune_to_widths(whole, {}, keep=keep)(x) - whole(x)).abs().max() < 1e-4


def test_zero_channels_resets_adam_moments(tiny_model):
    group = expected_groups(tiny_model.spec)["block1.mid2"]
    opt = torch.optim.Adam(tiny_model.parameters(), lr=1e-3)
    tiny_model(torch.rand(1, 3, 16, 16) * 255).mean().backward()
    opt.step()
    zero_channels(tiny_model, group, [1, 4], optimizer=opt)
    st = opt.state[tiny_model.block_1.c2_r.weight]
    assert st["exp_avg"][[1, 4]].abs().sum() == 0 and st["exp_avg_sq"][[1, 4]].abs().sum() == 0
    assert st["exp_avg"][0].abs().sum() > 0


def test_mask_state_roundtrip(tiny_model):
    sfp = SoftFilterPruning(tiny_model, {"trunk": 6})
    sfp.apply(tiny_model, epoch=1)
    other = SoftFilterPruning(tiny_model, {"trunk": 6})
    other.load_state_dict(sfp.state_dict())
    assert other.keep == sfp.keep and other.history == sfp.history


def test_sfp_stage_refuses_a_weight_average():
    from workbench.stages.prune import SFPConfig

    assert SFPConfig(iterations=2, trunk=6).validate() == []
    problems = SFPConfig(iterations=2, trunk=6, ema=0.999).validate()
    assert len(problems) == 1 and problems[0].startswith("ema: not in sfp")
