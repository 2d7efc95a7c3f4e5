"""detection/torchvision_ref.py: torchvision's Mask R-CNN behind our contract, and its builders."""
import pytest
import torch
from torch import nn

from detection import torchvision_ref as tv
from common.image_list import ImageList

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_targets_and_predictions_convert_labels_and_masks():
    masks = torch.zeros(2, 8, 10, dtype=torch.uint8)
    masks[1, 2:4, 3:5] = 1
    ours = [{"gt_boxes": torch.tensor([[0.0, 0, 4, 4], [3, 2, 5, 4]]), "gt_classes": torch.tensor([0, 2]),
             "gt_masks": masks, "image_id": 7}]
    (theirs,) = tv.to_torchvision_targets(ours)
    assert theirs["labels"].tolist() == [1, 3]  # torchvision's 0 is background
    assert torch.equal(theirs["boxes"], ours[0]["gt_boxes"]) and theirs["masks"] is masks
    assert set(theirs) == {"boxes", "labels", "masks"}

    probs = torch.rand(2, 1, 8, 10)
    pred = tv.from_torchvision_prediction({"boxes": torch.ones(2, 4), "scores": torch.tensor([0.9, 0.2]),
                                              "labels": torch.tensor([1, 3]), "masks": probs})
    assert pred["pred_classes"].tolist() == [0, 2]
    assert pred["pred_masks"].shape == (2, 8, 10) and torch.equal(pred["pred_masks"], probs[:, 0])
    assert pred["scores"].tolist() == pytest.approx([0.9, 0.2])


def test_wrapped_torchvision_model_crops_padding_and_renames_losses():
    seen = {}

    class Fake(torch.nn.Module):
        def forward(self, images, targets=None):
            seen["shapes"] = [tuple(im.shape) for im in images]
            if targets is not None:
                seen["labels"] = [t["labels"].tolist() for t in targets]
                return {"loss_objectness": torch.tensor(1.0), "loss_classifier": torch.tensor(2.0)}
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                    for _ in images]

    model = tv.TorchvisionDetector(Fake())
    images = ImageList(torch.zeros(2, 3, 64, 64), [(40, 64), (64, 50)])
    targets = [{"gt_boxes": torch.tensor([[1.0, 1, 9, 9]]), "gt_classes": torch.tensor([1])}] * 2
    preds, losses = model.train()(images, targets)
    assert preds == [] and losses == {"loss_rpn_cls": 1.0, "loss_cls": 2.0}
    assert seen["shapes"] == [(3, 40, 64), (3, 64, 50)] and seen["labels"] == [[2], [2]]
    weighted = tv.TorchvisionDetector(Fake(), {"loss_cls": 0.5})  # loss weights, by our loss names
    assert weighted.train()(images, targets)[1] == {"loss_rpn_cls": 1.0, "loss_cls": 1.0}
    preds, losses = model.eval()(images)
    assert losses == {} and len(preds) == 2 and preds[0]["pred_classes"].shape == (0,)


def shapes_wide_model_cfg():
    from common.config import load_config
    from detection.config import DetConfig

    path = tv.__file__.replace("detection/torchvision_ref.py", "configs/detection/shapes_R18_FPN_wide.yaml")
    return load_config(DetConfig, path, ["model.keypoint_on=false"]).model


def test_torchvision_r18_copies_our_recipe():
    c = shapes_wide_model_cfg()
    wrapped = tv.torchvision_r18_fpn(c, 3, 128, 171, MEAN, STD)
    assert wrapped.loss_weights == {"loss_rpn_cls": 1.0, "loss_rpn_box": 1.0, "loss_mask": 1.0}
    m = wrapped.model
    assert m.transform.min_size == (128,) and m.transform.max_size == 171
    assert m.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))  # + the pooled level
    assert m.rpn._pre_nms_top_n == {"training": 600, "testing": 300}
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == c.roi_heads.batch_size_per_image == 256
    assert m.roi_heads.detections_per_img == 50
    assert m.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert m.roi_heads.box_head.fc7.out_features == c.box_head.fc_dim
    convs = [x for x in m.roi_heads.mask_head.modules() if isinstance(x, nn.Conv2d)]
    assert [x.out_channels for x in convs] == [c.mask_head.conv_dim] * c.mask_head.num_convs == [256] * 4
    assert m.backbone.out_channels == c.backbone.fpn_channels  # the FPN as wide as ours
    assert all(p.requires_grad for p in m.parameters())  # from scratch, nothing frozen


def test_stock_torchvision_keeps_its_own_defaults():
    m = tv.torchvision_r18_fpn_stock(3, 128, 171, MEAN, STD).model
    assert m.transform.min_size == (128,) and m.transform.max_size == 171
    assert m.backbone.out_channels == 256
    assert m.rpn._post_nms_top_n == {"training": 2000, "testing": 1000}
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert m.roi_heads.box_head.fc7.out_features == 1024
    assert all(p.requires_grad for p in m.parameters())


def test_lean_recipe_is_the_one_the_issue_names():
    m = tv.torchvision_r18_lean(5, 160, MEAN, STD).model
    assert m.transform.min_size == (160,) and m.transform.max_size == 160
    assert m.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert m.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert m.rpn._pre_nms_top_n == {"training": 600, "testing": 300}
    assert m.rpn._post_nms_top_n == {"training": 300, "testing": 100}
    assert m.rpn.fg_bg_sampler.batch_size_per_image == 128
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == 64 and m.roi_heads.detections_per_img == 50
    norms = [x for x in m.backbone.body.modules() if isinstance(x, nn.GroupNorm)]
    assert norms and all(x.num_groups == 32 for x in norms)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert all(p.requires_grad for p in m.parameters())  # trainable_layers=5
    assert m.roi_heads.box_predictor.cls_score.out_features == 6


def test_backbone_features_are_torchvision_fpn_levels():
    wrapped = tv.torchvision_r18_lean(2, 64, MEAN, STD).eval()
    with torch.no_grad():
        feats = wrapped.backbone_features(ImageList(torch.rand(1, 3, 64, 64), [(64, 48)]))
    assert list(feats) == ["0", "1", "2", "3", "pool"] and feats["0"].shape[1] == 256
