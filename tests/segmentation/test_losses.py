"""Losses and class-imbalance tools on hand-made tensors."""
import math

import numpy as np
import pytest
import torch

from common.samplers import repeat_factors, repeat_indices
from segmentation.losses import (class_pixel_stats, class_prior_bias, class_weights, cross_entropy, dice_loss, focal_loss,
                                 segmentation_loss)


def _two_pixels():
    # pixel 0: true class 0 with logits (ln 3, 0) -> p = 0.75; pixel 1: ignored
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 5.0]]).T.reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    return logits, labels


def test_cross_entropy_ignores_and_weights():
    logits, labels = _two_pixels()
    assert cross_entropy(logits, labels).item() == pytest.approx(-math.log(0.75))
    # two valid pixels: CE_a = -ln .75 (class 0), CE_b = -ln(e^5/(1+e^5)) (class 1); weights 1 and 3
    labels2 = torch.tensor([[[0, 1]]])
    ce_a, ce_b = -math.log(0.75), -math.log(math.exp(5) / (1 + math.exp(5)))
    w = torch.tensor([1.0, 3.0])
    assert cross_entropy(logits, labels2, w).item() == pytest.approx((ce_a + 3 * ce_b) / 4, rel=1e-5)


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), 255)
    for fn in (cross_entropy, focal_loss, dice_loss):
        loss = fn(logits, labels)
        assert loss.item() == 0.0
        loss.backward()


def test_focal_loss_value_and_gamma_zero_is_ce():
    logits, labels = _two_pixels()
    assert focal_loss(logits, labels, gamma=2.0).item() == pytest.approx(0.25 ** 2 * -math.log(0.75), rel=1e-5)
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (2, 5, 5), generator=torch.Generator().manual_seed(1))
    y[0, 0] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 1.5])
    assert focal_loss(x, y, gamma=0.0, weight=w).item() == pytest.approx(cross_entropy(x, y, w).item(), rel=1e-5)


def test_dice_loss_perfect_and_hand_value():
    labels = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.zeros(1, 2, 2, 2)
    perfect[0, 0, 0, 0] = perfect[0, 1, 0, 1] = perfect[0, 1, 1, 0] = 50.0
    perfect[0, 0, 1, 1] = -50  # the ignored pixel predicts class 1 and must not count
    assert dice_loss(perfect, labels, eps=0.0).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere: class 0 dice = 2*.5/(1.5+1), class 1 = 2*1/(1.5+2)
    expected = 1 - (1.0 / 2.5 + 2.0 / 3.5) / 2
    assert dice_loss(uniform, labels, eps=0.0).item() == pytest.approx(expected, rel=1e-5)


def test_bad_labels_and_shapes_raise():
    with pytest.raises(ValueError, match="label 7 is outside 0..2 and is not the ignore index 255"):
        cross_entropy(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 7], [1, 2]]]))
    with pytest.raises(ValueError, match=r"got \(1, 3, 2, 2\) and \(1, 3, 3\)"):
        dice_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown segmentation loss 'l2'"):
        segmentation_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), kind="l2")


def test_class_weights_median_frequency_and_log():
    maps = [np.array([[0, 0, 0, 1]]), np.array([[0, 0, 2, 255]])]
    pixels, image_pixels = class_pixel_stats(maps, 4)
    assert pixels.tolist() == [5, 1, 1, 0]          # 255 not counted
    assert image_pixels.tolist() == [7, 4, 3, 0]    # valid pixels of the images containing each class
    w = class_weights(pixels, image_pixels, "median_freq")
    f = np.array([5 / 7, 1 / 4, 1 / 3])
    assert np.allclose(w[:3].numpy(), np.median(f) / f) and w[3] == 0
    w = class_weights(pixels, image_pixels, "log")
    assert np.allclose(w[:3].numpy(), 1 / np.log(1.02 + np.array([5, 1, 1]) / 7)) and w[3] == 0
    with pytest.raises(ValueError, match="unknown method 'inverse'"):
        class_weights(pixels, image_pixels, "inverse")


def test_class_prior_bias_is_log_share():
    b = class_prior_bias(np.array([6, 3, 1, 0]), min_share=1e-3)
    assert np.allclose(b[:3].numpy(), np.log([0.6, 0.3, 0.1])) and b[3].item() == pytest.approx(math.log(1e-3))
    assert torch.allclose(b[:3].softmax(0), torch.tensor([0.6, 0.3, 0.1]), atol=2e-3)  # softmax(bias) = prior
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_prior_bias(np.zeros(3))


def test_repeat_factors_and_indices():
    # class 1 in all 4 images, class 2 in one: f = 1 and 0.25; t = 0.5 -> r2 = sqrt(2)
    present = [{0, 1}, {0, 1}, {0, 1}, {0, 1, 2}]
    r = repeat_factors(present, threshold=0.5)
    assert r[:3] == [1.0, 1.0, 1.0] and r[3] == pytest.approx(math.sqrt(2))
    idx = repeat_indices([1.0, 3.0, 1.5], seed=0)
    assert idx.count(0) == 1 and idx.count(1) == 3 and idx.count(2) in (1, 2)
    assert repeat_indices([1.0, 3.0, 1.5], seed=0) == idx
