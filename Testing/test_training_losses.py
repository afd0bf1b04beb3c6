"""Training losses as a specification: each architecture is trained with its paper's loss, on every head."""

from __future__ import annotations

import pytest
import torch

from UNetSegmentationLib.networks.registry import ARCHITECTURES


def test_each_architecture_is_trained_with_its_papers_loss():
    from UNetSegmentationLib.training.losses import loss_kind

    assert loss_kind("unetplusplus") == "unetplusplus"  # ½ CE + Dice per head
    assert loss_kind("unet3plus") == "unet3plus"  # focal + MS-SSIM + IoU per head, BCE on the classifier
    assert {loss_kind(name) for name in ARCHITECTURES if name not in ("unetplusplus", "unet3plus")} == {"dice-ce"}
    assert loss_kind("unet3plus", "dice-ce") == "dice-ce"  # --loss overrides


def logits_for(target: torch.Tensor, channels: int, confidence: float = 12.0) -> torch.Tensor:
    """Logits that are (almost) certain of ``target``."""
    if channels == 1:
        return (target[:, None].float() * 2 - 1) * confidence
    return torch.nn.functional.one_hot(target, channels).permute(0, 3, 1, 2).float() * 2 * confidence - confidence


@pytest.mark.parametrize("kind", ["unetplusplus", "unet3plus", "dice-ce"])
@pytest.mark.parametrize("channels", [1, 3])
def test_losses_vanish_for_perfect_heads_and_average_the_heads_equally(kind, channels):
    from UNetSegmentationLib.networks.blocks import TrainingOutput
    from UNetSegmentationLib.training.losses import SegmentationLoss

    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, channels if channels > 1 else 2, (2, 64, 64), generator=generator)
    target[:, :32] = 0  # some background-only area
    loss = SegmentationLoss(kind, channels, crop=(64, 64))
    perfect, _ = loss(TrainingOutput([logits_for(target, channels)] * 3), target)
    assert float(perfect) < 0.01
    a, b = (torch.randn(2, channels, 64, 64, generator=generator) for _ in range(2))
    both, _ = loss([a, b], target)
    assert float(both) == pytest.approx((float(loss([a], target)[0]) + float(loss([b], target)[0])) / 2, rel=1e-5)


@pytest.mark.slow
def test_unet3plus_loss_has_its_three_terms_and_trains_the_classification_head():
    from UNetSegmentationLib.networks.blocks import TrainingOutput
    from UNetSegmentationLib.training.losses import SegmentationLoss

    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[0, 20:40, 20:40] = 1  # slice 0 holds the structure, slice 1 does not
    heads = [torch.randn(2, 2, 64, 64, requires_grad=True) for _ in range(5)]
    classification = torch.zeros(2, 1, requires_grad=True)
    total, parts = SegmentationLoss("unet3plus", 2, crop=(64, 64))(TrainingOutput(heads, classification), target)
    assert set(parts) == {"focal", "ms_ssim", "iou", "classification"}
    assert parts["classification"] == pytest.approx(float(torch.log(torch.tensor(2.0))))  # BCE of logit 0
    total.backward()
    assert classification.grad[0, 0] < 0 < classification.grad[1, 0]  # pushed towards "present" for slice 0 only
    assert all(h.grad.abs().sum() > 0 for h in heads)


def test_ms_ssim_uses_as_many_scales_as_the_crop_allows():
    from UNetSegmentationLib.training.losses import ms_ssim_settings

    kernel, weights = ms_ssim_settings((96, 96))
    assert kernel == 7 and len(weights) == 4 and sum(weights) == pytest.approx(1.0)
    assert len(ms_ssim_settings((32, 32))[1]) == 3 and len(ms_ssim_settings((256, 256))[1]) == 5
