"""Fast R-CNN parts: the sampling bands, the SVM classifier, truncated SVD, and proposals that
reach the model through the dataset (resized and flipped with the image)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from detection.box_head import (ConvFCHead, class_scores, compress_fc_layers, fast_rcnn_losses, svm_hinge_loss,
                                truncated_svd)
from detection.box_ops import pairwise_iou
from detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match
from detection.roi_heads import sample_proposals


def test_matcher_background_floor():
    iou = torch.tensor([[0.05, 0.1, 0.3, 0.49, 0.5, 0.9]])
    m = match(iou, high=0.5, low=0.5, bg_floor=0.1)
    assert m.tolist() == [BETWEEN_THRESHOLDS] + [BELOW_LOW_THRESHOLD] * 3 + [0, 0]
    assert match(torch.zeros(0, 2), 0.5, 0.5, bg_floor=0.1).tolist() == [BETWEEN_THRESHOLDS] * 2
    with pytest.raises(ValueError, match="bg_floor <= low <= high, got bg_floor=0.6, low=0.5, high=0.5"):
        match(iou, 0.5, 0.5, bg_floor=0.6)


def boxes_with_iou(iou: float, n: int) -> torch.Tensor:
    """n copies of a box with the given IoU to [0, 0, 100, 100] (same height, shifted right)."""
    shift = 100 * (1 - iou) / (1 + iou)  # IoU of [s, 0, 100 + s, 100] with the gt is (100 - s) / (100 + s)
    return torch.tensor([[shift, 0.0, 100 + shift, 100.0]]).repeat(n, 1)


def test_fast_rcnn_sampling_bands():
    gt_boxes, gt_classes = torch.tensor([[0.0, 0, 100, 100]]), torch.tensor([2])
    props = torch.cat((boxes_with_iou(0.05, 200), boxes_with_iou(0.3, 200), boxes_with_iou(0.7, 200)))
    for seed in range(5):
        torch.manual_seed(seed)
        s = sample_proposals(props, gt_boxes, gt_classes, num_classes=3, iou_thresholds=(0.5, 0.5),
                             batch_size=64, positive_fraction=0.25, add_gt_as_proposals=True, bg_iou_floor=0.1)
        iou = pairwise_iou(gt_boxes, s["proposal_boxes"])[0]
        fg, bg = s["gt_classes"] == 2, s["gt_classes"] == 3
        assert len(s["gt_classes"]) == 64 and fg.sum() == 16 and bg.sum() == 48  # 25% foreground
        assert (iou[fg] >= 0.5).all()
        assert ((iou[bg] >= 0.1) & (iou[bg] < 0.5)).all()  # background only from [0.1, 0.5)
    # without the floor, the 0.05 RoIs are background too
    torch.manual_seed(0)
    s = sample_proposals(props, gt_boxes, gt_classes, 3, (0.5, 0.5), 400, 0.25, False, 0.0)
    assert (s["gt_classes"] == 3).sum() == 300


def test_image_without_gt_samples_nothing_under_a_floor():
    s = sample_proposals(boxes_with_iou(0.3, 5), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 3,
                         (0.5, 0.5), 64, 0.25, True, 0.1)
    assert len(s["gt_classes"]) == 0
    zero = fast_rcnn_losses(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 12), s["gt_classes"],
                            torch.zeros(0, 4))
    assert zero["loss_cls"].item() == 0.0


def test_svm_hinge_loss_and_scores():
    scores = torch.tensor([[2.0, -0.5, 0.0, 9.0],    # class 0: margins 0, 0.5, 1 -> 1.5
                           [0.5, -2.0, -1.0, 9.0]])  # background: 1.5, 0, 0 -> 1.5
    gt = torch.tensor([0, 3])
    assert svm_hinge_loss(scores, gt).item() == pytest.approx(1.5)
    losses = fast_rcnn_losses(scores, torch.zeros(2, 12), gt, torch.zeros(2, 4), classifier="svm")
    assert losses["loss_cls"].item() == pytest.approx(1.5)
    np.testing.assert_allclose(class_scores(scores, "svm"), torch.sigmoid(scores[:, :3]))
    np.testing.assert_allclose(class_scores(scores), torch.softmax(scores, 1)[:, :3], rtol=1e-6)


def test_truncated_svd_shapes_and_accuracy():
    torch.manual_seed(0)
    fc = nn.Linear(64, 32)
    x = torch.randn(10, 64)
    full = truncated_svd(fc, 32)  # full rank: the same map
    assert full[0].weight.shape == (32, 64) and full[1].weight.shape == (32, 32) and full[0].bias is None
    torch.testing.assert_close(full(x), fc(x), atol=1e-5, rtol=1e-5)
    low = truncated_svd(fc, 8)
    assert low[0].weight.shape == (8, 64) and low[1].weight.shape == (32, 8)
    # the error is exactly the best rank-8 approximation's (Eckart-Young): the dropped singular values
    sv = torch.linalg.svdvals(fc.weight.detach())
    w_low = low[1].weight @ low[0].weight
    assert torch.linalg.matrix_norm(w_low - fc.weight.detach()).item() == pytest.approx(sv[8:].norm().item(), rel=1e-4)
    head = ConvFCHead(16, 7, fc_dim=128, num_fcs=2)
    y = head(torch.randn(3, 16, 7, 7))
    assert compress_fc_layers(head, 32) == ["fcs.0", "fcs.2"]  # 784 -> 128 and 128 -> 128 both shrink
    assert head(torch.randn(3, 16, 7, 7)).shape == y.shape
    assert compress_fc_layers(ConvFCHead(16, 7, fc_dim=128, num_fcs=2), 100) == ["fcs.0"]  # 100*256 > 128*128
    with pytest.raises(ValueError, match="truncated SVD rank must be >= 1, got 0"):
        compress_fc_layers(head, 0)


def test_proposals_reach_the_model_through_the_dataset(shapes_dir, tmp_path):
    from common.config import load_config
    from detection.build import build_datasets, resolve_data_paths
    from detection.config import DetConfig
    from detection.proposals import save_proposals

    val = json.loads((shapes_dir / "val.json").read_text())
    train = json.loads((shapes_dir / "train.json").read_text())
    files = {}
    for split, coco in (("train", train), ("val", val)):
        files[split] = tmp_path / f"{split}.json"
        save_proposals(files[split], {im["id"]: {"boxes": [[0, 0, im["width"], im["height"]], [10, 20, 30, 40],
                                                           [-5, 0, 5, 200]]} for im in coco["images"]})
    cfg = load_config(DetConfig, "configs/detection/fast_rcnn_R18.yaml",
                      [f"data.train_proposals={files['train']}", f"data.val_proposals={files['val']}",
                       "data.min_size=[192]", "data.test_min_size=192", "data.max_size=400", "data.hflip_prob=1.0"])
    train_set, val_set = build_datasets(cfg, resolve_data_paths(cfg.data, str(shapes_dir)))
    image, target = val_set[0]  # resized by 192 / short side; the third box is clipped to the image first
    h, w = image.shape[1:]
    info = next(im for im in val["images"] if im["id"] == target["image_id"])
    sx, sy = w / info["width"], h / info["height"]
    assert target["proposal_boxes"].dtype == torch.float32
    torch.testing.assert_close(target["proposal_boxes"], torch.tensor(
        [[0.0, 0, w, h], [10 * sx, 20 * sy, 30 * sx, 40 * sy], [0, 0, 5 * sx, h]]))
    train_set.transforms.set_random_seed(0)
    image, target = train_set[0]  # flipped: x -> W - x
    w = image.shape[2]
    info = next(im for im in train["images"] if im["id"] == target["image_id"])
    sx, sy = w / info["width"], image.shape[1] / info["height"]
    torch.testing.assert_close(target["proposal_boxes"][1], torch.tensor([w - 30 * sx, 20 * sy, w - 10 * sx, 40 * sy]))

    missing = tmp_path / "missing.json"
    save_proposals(missing, {val["images"][0]["id"]: {"boxes": [[0, 0, 1, 1]]}})
    bad = load_config(DetConfig, "configs/detection/fast_rcnn_R18.yaml",
                      [f"data.train_proposals={files['train']}", f"data.val_proposals={missing}"])
    with pytest.raises(ValueError, match=f"proposal file {missing} has no entry for image id {val['images'][1]['id']}"):
        build_datasets(bad, resolve_data_paths(bad.data, str(shapes_dir)))
    none = load_config(DetConfig, "configs/detection/fast_rcnn_R18.yaml", ["data.train_proposals="])
    with pytest.raises(ValueError, match="model.proposal_generator is 'precomputed' .Fast R-CNN. but "
                                         "data.train_proposals is empty; make the file with tools/compute_proposals.py"):
        build_datasets(none, resolve_data_paths(none.data, str(shapes_dir)))
