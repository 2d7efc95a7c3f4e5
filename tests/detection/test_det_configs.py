"""Every YAML in configs/detection loads into ModelConfig, holds only non-default values, and builds."""
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from common.config import ConfigError, load_config, merge
from detection.build import build_model
from detection.config import DetConfig, ModelConfig
from common.image_list import ImageList

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "detection"
YAMLS = sorted(CONFIG_DIR.glob("*.yaml"))


def load_model_cfg(path: Path) -> ModelConfig:
    return load_config(DetConfig, path).model


def base_model_cfg(path: Path) -> ModelConfig:
    """What the YAML's model section is applied to: its ``_base_``'s model, or the defaults."""
    base = yaml.safe_load(path.read_text()).get("_base_")
    return load_model_cfg(path.parent / base) if base else ModelConfig()


def _non_defaults(data: dict, default, prefix=""):
    """Keys of ``data`` whose value equals the dataclass default (should not be in a YAML)."""
    same = []
    for key, value in data.items():
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):
            same += _non_defaults(value, current, f"{prefix}{key}.")
        elif merge(default, {key: value}, "yaml") == default:
            same.append(prefix + key)
    return same


def test_expected_recipes_exist():
    names = {p.name for p in YAMLS}
    assert {"faster_rcnn_R50_FPN.yaml", "mask_rcnn_R50_FPN.yaml", "mask_rcnn_R50_C4.yaml",
            "keypoint_rcnn_R50_FPN.yaml", "faster_rcnn_VGG16.yaml", "mask_rcnn_R18_FPN.yaml",
            "shapes_R18_FPN.yaml", "shapes_R18_FPN_wide.yaml", "rcnn_R18.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_yaml_builds(path):
    cfg = load_model_cfg(path)
    data = yaml.safe_load(path.read_text())["model"]
    assert _non_defaults(data, base_model_cfg(path)) == [], "a YAML holds only what differs from its base"
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, weights=None))  # offline
    num_kp = 5 if cfg.keypoint_on else 0
    model = build_model(cfg, num_classes=3, num_keypoints=num_kp)
    if cfg.meta_architecture == "rcnn":  # R-CNN (2014): no RoI heads; its own test runs it
        assert model.cls_score.out_features == 4 and model.svm_weight.shape[0] == 3
        return
    assert model.roi_heads.mask_on == cfg.mask_on and model.roi_heads.keypoint_on == cfg.keypoint_on
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    if path.stem in ("shapes_R18_FPN", "mask_rcnn_R50_C4", "faster_rcnn_VGG16"):
        model.eval()
        with torch.no_grad():
            preds, losses = model(ImageList(torch.rand(1, 3, 64, 64), [(64, 64)]))
        assert losses == {} and set(preds[0]) >= {"pred_boxes", "scores", "pred_classes"}


def test_shapes_recipe_is_lean():
    cfg = load_model_cfg(CONFIG_DIR / "shapes_R18_FPN.yaml")
    assert cfg.mask_on and cfg.keypoint_on and cfg.backbone.name == "resnet18"
    assert cfg.roi_heads.batch_size_per_image == 64
    assert (cfg.rpn.post_nms_topk_train, cfg.rpn.post_nms_topk_test) == (300, 100)
    assert cfg.box_head.fc_dim <= 512 and cfg.mask_head.num_convs <= 4 and cfg.keypoint_head.num_convs <= 4


def test_wide_shapes_recipe_widens_the_box_and_mask_branches_only():
    lean, wide = load_model_cfg(CONFIG_DIR / "shapes_R18_FPN.yaml"), load_model_cfg(CONFIG_DIR / "shapes_R18_FPN_wide.yaml")
    assert (wide.roi_heads.batch_size_per_image, wide.roi_heads.mask_rois_per_image, wide.box_head.fc_dim) == (256, 0, 1024)
    assert (wide.mask_head.num_convs, wide.mask_head.conv_dim) == (4, 256)  # torchvision's MaskRCNNHeads
    restored = dataclasses.replace(wide, roi_heads=lean.roi_heads, box_head=lean.box_head, mask_head=lean.mask_head)
    assert restored == lean


def test_unknown_key_and_bad_build_arguments(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rpn:\n  anchor_size: [[32]]\n")
    with pytest.raises(ConfigError, match="unknown config key 'rpn.anchor_size'"):
        load_config(ModelConfig, bad)
    cfg = load_model_cfg(CONFIG_DIR / "shapes_R18_FPN.yaml")
    with pytest.raises(ValueError, match="keypoint_on is true but the dataset has no keypoints"):
        build_model(cfg, num_classes=3, num_keypoints=0)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        build_model(cfg, num_classes=0, num_keypoints=5)
    wrong = dataclasses.replace(cfg, rpn=dataclasses.replace(cfg.rpn, in_features=("p2", "p9")))
    with pytest.raises(ValueError, match=r"model.rpn.in_features = \['p2', 'p9'\] but the backbone outputs"):
        build_model(wrong, num_classes=3, num_keypoints=5)
    wrong = dataclasses.replace(cfg, rpn=dataclasses.replace(cfg.rpn, anchor_sizes=((16,), (32,))))
    with pytest.raises(ValueError, match="anchor_sizes has 2 levels but model.rpn.in_features has 4"):
        build_model(wrong, num_classes=3, num_keypoints=5)
    wrong = dataclasses.replace(cfg, mask_head=dataclasses.replace(cfg.mask_head, loss_weight=-1.0))
    with pytest.raises(ValueError, match=r"model.mask_head.loss_weight must be >= 0, got -1.0"):
        build_model(wrong, num_classes=3, num_keypoints=5)
    wrong = dataclasses.replace(cfg, rpn=dataclasses.replace(cfg.rpn, loss_weight=float("nan")))
    with pytest.raises(ValueError, match=r"model.rpn.loss_weight must be >= 0, got nan"):
        build_model(wrong, num_classes=3, num_keypoints=5)
    wrong = dataclasses.replace(cfg, roi_heads=dataclasses.replace(cfg.roi_heads, mask_rois_per_image=-1))
    with pytest.raises(ValueError, match=r"model.roi_heads.mask_rois_per_image must be >= 0 \(0: no cap\), got -1"):
        build_model(wrong, num_classes=3, num_keypoints=5)


@pytest.mark.parametrize("name", ["faster_rcnn_R50_FPN", "mask_rcnn_R50_FPN", "keypoint_rcnn_R50_FPN"])
def test_coco_recipes_train_the_1x_schedule(name):
    """detectron2's 1x: 16 images per step (2 per process on 8), LR 0.02, 90k iterations, steps
    60k/80k, short side 640-800, test at 800; other batch sizes rescale (solver.reference_batch)."""
    cfg = load_config(DetConfig, CONFIG_DIR / f"{name}.yaml")
    s = cfg.solver
    assert (s.optimizer, s.base_lr, s.ims_per_batch, s.reference_batch) == ("sgd", 0.02, 2, 16)
    assert (s.max_iters, tuple(s.steps), s.warmup_iters) == (90000, (60000, 80000), 1000)
    assert cfg.data.min_size == (640, 672, 704, 736, 768, 800) and cfg.data.test_min_size == 800
    assert cfg.data.max_size == 1333 and cfg.model.backbone.weights == "imagenet"
    assert cfg.model.box_head.smooth_l1_beta == 0.0  # detectron2's L1 box loss
    assert "AP" in (CONFIG_DIR / f"{name}.yaml").read_text()  # the published numbers are stated


def test_cpu_recipe_keeps_its_smooth_l1_box_loss():
    assert load_model_cfg(CONFIG_DIR / "shapes_R18_FPN.yaml").box_head.smooth_l1_beta == 1.0
    assert load_model_cfg(CONFIG_DIR / "faster_rcnn_VGG16.yaml").box_head.smooth_l1_beta == 1.0
    assert ModelConfig().box_head.smooth_l1_beta == 0.0
