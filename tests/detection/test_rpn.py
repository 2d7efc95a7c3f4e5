import torch

from detection.anchors import AnchorGenerator
from detection.box_coder import BoxCoder
from detection.rpn import RPN, RPNHead, find_top_proposals, flatten_level, label_anchors, rpn_losses, subsample_labels
from common.image_list import ImageList


def test_flatten_matches_anchor_order():
    n, a, h, w = 2, 3, 2, 4
    logits = torch.arange(n * a * h * w, dtype=torch.float32).view(n, a, h, w)
    deltas = torch.arange(n * 4 * a * h * w, dtype=torch.float32).view(n, 4 * a, h, w)
    fl, fd = flatten_level(logits, deltas)
    assert fl.shape == (2, h * w * a) and fd.shape == (2, h * w * a, 4)
    # flat index (y * W + x) * A + a
    assert fl[1, (1 * w + 2) * a + 1] == logits[1, 1, 1, 2]
    assert fd[1, (1 * w + 2) * a + 1].tolist() == deltas[1, 4:8, 1, 2].tolist()


def test_label_anchors():
    anchors = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 20, 20]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    labels, matched = label_anchors(anchors, gt, (0.3, 0.7))
    # IoU: 1.0, 0.68 (between), 0 (background), 0.25 (background)
    assert labels.tolist() == [1.0, -1.0, 0.0, 0.0]
    assert matched[0].tolist() == [0.0, 0.0, 10.0, 10.0]
    labels, matched = label_anchors(anchors, gt[:0], (0.3, 0.7))
    assert labels.tolist() == [0.0] * 4 and matched.abs().sum() == 0


def test_subsample_labels_caps_counts():
    torch.manual_seed(0)
    labels = torch.tensor([1.0] * 10 + [0.0] * 50 + [-1.0] * 5)
    out = subsample_labels(labels, 16, 0.5)
    assert (out == 1).sum() == 8 and (out == 0).sum() == 8
    assert (out[labels == -1] == -1).all()


def test_rpn_losses_values_and_empty():
    logits = torch.tensor([[0.0, 0.0, 5.0]], requires_grad=True)
    deltas = torch.zeros(1, 3, 4, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, -1.0]])
    target = torch.tensor([[[1.0, 0, 0, -2], [0, 0, 0, 0], [9, 9, 9, 9]]])
    losses = rpn_losses(logits, deltas, labels, target, smooth_l1_beta=0.0)
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(0.6931472))  # log 2, 2 sampled
    torch.testing.assert_close(losses["loss_rpn_box"], torch.tensor(3.0 / 2))      # L1 = 3 over 2 sampled
    # nothing sampled: finite zeros, still connected to the head's outputs
    empty = rpn_losses(logits, deltas, torch.full((1, 3), -1.0), target)
    total = empty["loss_rpn_cls"] + empty["loss_rpn_box"]
    assert total.item() == 0.0
    total.backward()
    assert logits.grad is not None and deltas.grad is not None


def test_find_top_proposals_nms_and_topk():
    anchors = [torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40], [0, 0, 0.5, 0.5]])]
    logits = [torch.tensor([[3.0, 2.0, 1.0, 4.0]])]
    deltas = [torch.zeros(1, 4, 4)]
    out = find_top_proposals(anchors, logits, deltas, [(20, 20)], BoxCoder(), 10, 10, 0.7, min_size=1.0)
    # the tiny box is dropped, anchor 1 is suppressed by anchor 0, anchor 2 is clipped to the image
    assert out[0]["proposal_boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]]
    out = find_top_proposals(anchors, logits, deltas, [(50, 50)], BoxCoder(), 10, 1, 0.7, min_size=1.0)
    assert len(out[0]["proposal_boxes"]) == 1
    out = find_top_proposals(anchors, logits, deltas, [(50, 50)], BoxCoder(), 10, 10, 0.7, min_size=1.0)
    assert out[0]["objectness_logits"].tolist() == [3.0, 1.0]


def test_rpn_module_train_step_and_empty_targets():
    torch.manual_seed(0)
    gen = AnchorGenerator(((16.0,), (32.0,)), ((0.5, 1.0, 2.0),), strides=(4, 8))
    rpn = RPN(["p2", "p3"], gen, RPNHead(8, 3), batch_size_per_image=32, pre_nms_topk=(50, 20),
              post_nms_topk=(30, 10))
    feats = {"p2": torch.randn(2, 8, 16, 16), "p3": torch.randn(2, 8, 8, 8)}
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (60, 50)])
    gt = [torch.tensor([[4.0, 4, 30, 30]]), torch.zeros(0, 4)]
    proposals, losses = rpn(images, feats, gt)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box"] > 0
    assert len(proposals[0]["proposal_boxes"]) == 30
    assert proposals[1]["proposal_boxes"][:, 2].max() <= 50 and proposals[1]["proposal_boxes"][:, 3].max() <= 60
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in rpn.parameters())
    rpn.eval()
    proposals, losses = rpn(images, feats)
    assert losses == {} and len(proposals[0]["proposal_boxes"]) == 10
