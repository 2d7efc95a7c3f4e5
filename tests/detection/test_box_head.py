import math

import pytest
import torch
from torch import nn

from detection.box_coder import BoxCoder
from detection.box_head import ConvFCHead, FastRCNNPredictor, Res5Head, fast_rcnn_inference, fast_rcnn_losses


def test_heads_shapes():
    x = torch.randn(5, 8, 7, 7)
    head = ConvFCHead(8, 7, fc_dim=32, num_convs=2, conv_dim=16, norm="GN")
    assert head(x).shape == (5, 32) and head.out_dim == 32
    res5 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
    r = Res5Head(res5, 12)
    assert r(torch.randn(3, 8, 14, 14)).shape == (3, 12)
    assert r.features(torch.randn(3, 8, 14, 14)).shape == (3, 12, 7, 7)
    logits, deltas = FastRCNNPredictor(32, 3)(head(x))
    assert logits.shape == (5, 4) and deltas.shape == (5, 12)
    with pytest.raises(ValueError, match="head norm must be"):
        ConvFCHead(8, 7, num_convs=1, norm="LN")


def test_losses_values():
    logits = torch.zeros(2, 3, requires_grad=True)       # K = 2
    deltas = torch.zeros(2, 8, requires_grad=True)
    deltas.data[0, 4:8] = torch.tensor([1.0, 0, 0, 0])   # class-1 deltas of RoI 0
    gt = torch.tensor([1, 2])                             # RoI 1 is background
    target = torch.tensor([[0.0, 0, 0, 0], [5, 5, 5, 5]])
    losses = fast_rcnn_losses(logits, deltas, gt, target, smooth_l1_beta=1.0)
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(math.log(3.0)))
    torch.testing.assert_close(losses["loss_box"], torch.tensor(0.5 / 2))  # smooth-L1(1) = 0.5, over 2 RoIs
    empty = fast_rcnn_losses(logits[:0], deltas[:0], gt[:0], target[:0])
    assert empty["loss_cls"].item() == 0.0 and empty["loss_box"].item() == 0.0
    (empty["loss_cls"] + empty["loss_box"]).backward()
    assert logits.grad is not None


def test_inference_threshold_nms_and_cap():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    props = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30]]), torch.zeros(0, 4)]
    # K = 2; RoI 0, 1 overlap (class 0), RoI 2 is class 1
    logits = torch.tensor([[5.0, 0, 0], [4.0, 0, 0], [0, 5.0, 0]]).log_softmax(1)
    deltas = torch.zeros(3, 8)
    out = fast_rcnn_inference(logits, deltas, props, [(40, 40), (40, 40)], coder, 0.3, 0.5, 100)
    assert out[0]["pred_classes"].tolist() == [0, 1]
    assert out[0]["pred_boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    assert out[0]["scores"][0] > 0.9
    assert len(out[1]["pred_boxes"]) == 0 and out[1]["pred_classes"].dtype == torch.int64
    out = fast_rcnn_inference(logits, deltas, props, [(40, 40), (40, 40)], coder, 0.3, 0.5, 1)
    assert len(out[0]["scores"]) == 1
