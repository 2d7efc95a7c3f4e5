"""One train step and one eval step per model variant (ResNet-18 at 64-96 px), empty and
half-empty targets, bad inputs at the boundary."""
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from common.config import merge
from detection.build import build_model
from detection.config import ModelConfig
from common.image_list import ImageList
from detection.fields import rescale_predictions

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "detection"
K, P = 3, 5


def shapes_cfg(**changes) -> ModelConfig:
    data = yaml.safe_load((CONFIG_DIR / "shapes_R18_FPN.yaml").read_text())["model"]
    cfg = merge(ModelConfig(), data, source="shapes_R18_FPN.yaml")
    return dataclasses.replace(cfg, **changes)


def c4_cfg(**changes) -> ModelConfig:
    data = yaml.safe_load((CONFIG_DIR / "mask_rcnn_R50_C4.yaml").read_text())["model"]
    cfg = merge(ModelConfig(), data, source="mask_rcnn_R50_C4.yaml")
    small = dict(name="resnet18", weights=None, norm="BN", freeze_at=0)
    rpn = dataclasses.replace(cfg.rpn, anchor_sizes=((16, 32, 64),), pre_nms_topk_train=200,
                              pre_nms_topk_test=100, post_nms_topk_train=50, post_nms_topk_test=20)
    roi = dataclasses.replace(cfg.roi_heads, batch_size_per_image=32)
    return dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, **small), rpn=rpn,
                               roi_heads=roi, **changes)


def batch():
    images = ImageList.from_tensors([torch.rand(3, 96, 96), torch.rand(3, 80, 64)], 32, 0.45)
    masks = torch.zeros(2, 96, 96, dtype=torch.uint8)
    masks[0, 10:50, 12:40] = 1
    masks[1, 40:90, 50:90] = 1
    kps = torch.zeros(2, P, 3)
    kps[1] = torch.tensor([[70.0, 45, 2], [55, 60, 2], [85, 60, 2], [60, 85, 1], [80, 85, 2]])
    targets = [
        {"image_id": 11, "gt_boxes": torch.tensor([[12.0, 10, 40, 50], [50, 40, 90, 90]]),
         "gt_classes": torch.tensor([0, 2]), "gt_masks": masks, "gt_keypoints": kps},
        {"image_id": 12, "gt_boxes": torch.zeros(0, 4), "gt_classes": torch.zeros(0, dtype=torch.int64),
         "gt_masks": torch.zeros(0, 80, 64, dtype=torch.uint8), "gt_keypoints": torch.zeros(0, P, 3)},
    ]
    return images, targets


def train_and_eval(model, expected_losses):
    torch.manual_seed(0)
    images, targets = batch()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    preds, losses = model(images, targets)
    assert preds == [] and set(losses) == expected_losses
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # every trainable parameter is reached (DDP without find_unused_parameters)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    opt.step()
    model.eval()
    with torch.no_grad():
        preds, val_losses = model(images, targets)
        assert set(val_losses) == expected_losses and all(torch.isfinite(v) for v in val_losses.values())
        preds2, none = model(images)
    assert none == {} and len(preds) == len(preds2) == 2
    for p, (h, w) in zip(preds, images.image_sizes):
        r = len(p["pred_boxes"])
        assert p["scores"].shape == (r,) and p["pred_classes"].dtype == torch.int64
        if r:
            assert p["pred_boxes"][:, 2].max() <= w and p["pred_boxes"][:, 3].max() <= h
        if "pred_mask_probs" in p:
            assert p["pred_mask_probs"].shape[0] == r and p["pred_mask_probs"].dtype == torch.float32
            masks = rescale_predictions(p, (h, w), (h, w))["pred_masks"]
            assert masks.shape == (r, h, w) and masks.dtype == torch.uint8
        if "pred_keypoints" in p:
            assert p["pred_keypoints"].shape == (r, P, 3)
    return preds


def test_mask_keypoint_rcnn_fpn():
    torch.manual_seed(0)
    model = build_model(shapes_cfg(), K, P, keypoint_flip_indices=[0, 2, 1, 4, 3])
    assert model.keypoint_flip_indices == [0, 2, 1, 4, 3]
    preds = train_and_eval(model, {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask",
                                   "loss_keypoint"})
    assert "pred_mask_probs" in preds[0] and "pred_keypoints" in preds[0]


def test_faster_rcnn_fpn_all_empty_targets():
    torch.manual_seed(0)
    model = build_model(shapes_cfg(mask_on=False, keypoint_on=False), K)
    images, targets = batch()
    empty = [dict(t, gt_boxes=torch.zeros(0, 4), gt_classes=torch.zeros(0, dtype=torch.int64)) for t in targets]
    _, losses = model(images, empty)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert losses["loss_box"].item() == 0.0 and losses["loss_rpn_box"].item() == 0.0
    assert losses["loss_cls"] > 0 and all(torch.isfinite(v) for v in losses.values())


def test_mask_rcnn_c4():
    torch.manual_seed(0)
    model = build_model(c4_cfg(), K)
    assert "c5" not in model.backbone.out_features
    assert any(n.startswith("roi_heads.box_head.res5.") for n, _ in model.named_parameters())
    preds = train_and_eval(model, {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"})
    assert "pred_mask_probs" in preds[0]


def test_fast_rcnn_precomputed_proposals():
    torch.manual_seed(0)
    model = build_model(shapes_cfg(proposal_generator="precomputed", mask_on=False, keypoint_on=False), K)
    assert model.proposal_generator is None
    images, targets = batch()
    props = [torch.tensor([[10.0, 10, 40, 48], [0, 0, 30, 30]]), torch.tensor([[5.0, 5, 40, 40]])]
    targets = [dict(t, proposal_boxes=p) for t, p in zip(targets, props)]
    _, losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box"} and losses["loss_box"] > 0
    model.eval()
    preds, losses = model(images, [{"proposal_boxes": p} for p in props])
    assert losses == {} and len(preds) == 2
    with pytest.raises(ValueError, match="no RPN: pass precomputed proposals"):
        model(images)


@pytest.mark.parametrize("field,value,message", [
    ("gt_boxes", torch.tensor([[1.0, 2, float("nan"), 4]]), r"image id 12: gt box \[1.0, 2.0, nan, 4.0\] is not finite"),
    ("gt_boxes", torch.tensor([[10.0, 2, 5, 4]]), r"image id 12: gt box \[10.0, 2.0, 5.0, 4.0\] is empty"),
    ("gt_classes", torch.tensor([3]), r"image id 12: gt class 3 is outside 0..2"),
    ("gt_classes", torch.tensor([0, 1]), r"image id 12: gt_classes must have shape \(1,\)"),
    ("gt_masks", None, r"image id 12: the mask head needs gt_masks of shape \(1, H, W\), got none"),
    ("gt_keypoints", torch.zeros(1, 4, 3), r"image id 12: the keypoint head needs gt_keypoints of shape \(1, 5, 3\)"),
])
def test_bad_targets_name_the_image_and_value(field, value, message):
    model = build_model(shapes_cfg(), K, P)
    images, targets = batch()
    t = dict(gt_boxes=torch.tensor([[1.0, 2, 30, 40]]), gt_classes=torch.tensor([1]),
             gt_masks=torch.zeros(1, 80, 64, dtype=torch.uint8), gt_keypoints=torch.zeros(1, P, 3))
    t["image_id"] = torch.tensor(12)
    if value is None:
        del t[field]
    else:
        t[field] = value
    with pytest.raises(ValueError, match=message):
        model(images, [targets[0], t])
    with pytest.raises(ValueError, match="needs targets"):
        model(images)


def test_channels_last_model_trains_and_predicts_like_the_nchw_one():
    torch.manual_seed(0)
    nchw = build_model(shapes_cfg(), K, P)
    torch.manual_seed(0)
    nhwc = build_model(shapes_cfg(channels_last=True), K, P)
    convs = [p for p in nhwc.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    images, targets = batch()
    for m in (nchw, nhwc):
        m.train()
    torch.manual_seed(1)
    _, a = nchw(images, targets)
    torch.manual_seed(1)
    _, b = nhwc(images, targets)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    sum(b.values()).backward()
    assert_same_predictions(nchw, nhwc, images)


def assert_same_predictions(a, b, images) -> None:
    """Two models predict the same boxes and masks up to float rounding (eval mode)."""
    a.eval(), b.eval()
    with torch.no_grad():
        pa, _ = a(images)
        pb, _ = b(images)
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p["pred_boxes"], q["pred_boxes"], rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(p["pred_mask_probs"], q["pred_mask_probs"], rtol=1e-3, atol=1e-3)


def test_eval_only_channels_last_switches_layout_in_place_and_predicts_alike():
    torch.manual_seed(0)
    nchw = build_model(shapes_cfg(), K, P)
    torch.manual_seed(0)
    model = build_model(shapes_cfg(channels_last="eval"), K, P)
    params = list(model.parameters())
    convs = [p for p in params if p.ndim == 4 and p.shape[-1] > 1]  # 1x1 kernels look alike in both

    def nhwc() -> bool:
        return all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)

    model.train()
    assert all(p.is_contiguous() for p in convs) and not nhwc()
    model.eval()
    assert nhwc()
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]  # an optimizer keeps its parameters
    assert_same_predictions(nchw, model, batch()[0])
    model.train()
    assert all(p.is_contiguous() for p in convs)
    with pytest.raises(ValueError, match="channels_last must be"):
        build_model(shapes_cfg(channels_last="yes"), K, P)
