"""Losses: the registry, weighted combination, and the contrastive loss's definition."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.core.errors import WorkbenchError
from workbench.train.losses import LOSSES, ContrastiveLoss, build_loss, register_loss


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(2, 3, 16, 16, generator=g) * 255
    lr = F.avg_pool2d(hr, 2)
    sr = (hr + torch.randn(2, 3, 16, 16, generator=g) * 10).clamp(0, 255)
    return sr, hr, lr


def test_pixel_losses_and_weights() -> None:
    sr, hr, lr = _batch()
    l1 = build_loss([{"type": "l1"}])(sr, hr, lr)
    assert torch.allclose(l1, (sr - hr).abs().mean())
    mixed = build_loss([{"type": "l1", "weight": 2.0}, {"type": "l2", "weight": 0.5}])
    value = mixed(sr, hr, lr)
    assert torch.allclose(value, 2 * (sr - hr).abs().mean() + 0.5 * ((sr - hr) ** 2).mean())
    assert set(mixed.last_terms) == {"l1", "l2"}
    assert build_loss({"type": "l2"})(sr, hr, lr).item() == pytest.approx(F.mse_loss(sr, hr).item())


def test_unknown_loss_and_bad_arguments() -> None:
    with pytest.raises(WorkbenchError, match=r"unknown loss 'l11' \(did you mean 'l1'\?\)"):
        build_loss([{"type": "l11"}])
    with pytest.raises(WorkbenchError, match="unexpected keyword"):
        build_loss([{"type": "contrastive", "chanels": 8}])


def test_register_loss_rejects_a_second_factory() -> None:
    @register_loss("test_zero")
    def _zero():
        return torch.nn.Identity()

    try:
        with pytest.raises(ValueError, match="registered twice"):
            register_loss("test_zero")(lambda: torch.nn.Identity())
    finally:
        LOSSES.pop("test_zero")


def test_contrastive_loss_definition() -> None:
    """CL = sum over phi's layers of L1(phi(SR), phi(HR)) / L1(phi(SR), phi(bicubic-up LR))."""
    sr, hr, lr = _batch(1)
    loss = ContrastiveLoss(channels=8, extractor_seed=3)
    up = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 255)
    f_sr, f_hr, f_up = loss.features(sr), loss.features(hr), loss.features(up)
    expected = sum(F.l1_loss(a, b) / (F.l1_loss(a, c) + 1e-6) for a, b, c in zip(f_sr, f_hr, f_up))
    assert len(f_sr) == 2
    assert torch.allclose(loss(sr, hr, lr), expected)
    # reproducible: same seed -> same extractor, without touching the global RNG
    state = torch.get_rng_state()
    again = ContrastiveLoss(channels=8, extractor_seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again.conv1.weight, loss.conv1.weight)
    assert not torch.equal(ContrastiveLoss(channels=8, extractor_seed=4).conv1.weight, loss.conv1.weight)
    # SR == HR gives zero; the extractor is frozen, SR gets a gradient
    assert loss(hr, hr, lr).item() == pytest.approx(0.0, abs=1e-6)
    sr.requires_grad_(True)
    loss(sr, hr, lr).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_contrastive_in_combination_uses_lr() -> None:
    sr, hr, lr = _batch(2)
    combo = build_loss([{"type": "l1", "weight": 1.0}, {"type": "contrastive", "weight": 255}])
    value = combo(sr, hr, lr)
    assert value.item() == pytest.approx(combo.last_terms["l1"] + 255 * combo.last_terms["contrastive"], rel=1e-5)
    with pytest.raises(ValueError, match="needs the LR batch"):
        combo(sr, hr, None)
