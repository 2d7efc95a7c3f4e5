"""Settings derived from the training set at start-up: anchors, keypoint flips, repeat-factor
sampling, class-weighted classification."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.config import load_config
from detection.anchors import anchors_for_boxes
from detection.box_head import fast_rcnn_losses, inverse_sqrt_frequency_weights
from detection.build import DataPaths, adapt_to_dataset, build_datasets, repeat_factor_indices
from detection.config import DetConfig
from detection.data import DatasetError, build_train_loader

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "datasets"))
from make_variants import kp3_noflip  # noqa: E402


def test_anchor_sizes_follow_the_boxes():
    sides = torch.linspace(15, 75, 200)
    sizes, ratios = anchors_for_boxes(sides, torch.ones(200), [4, 8, 16, 32])
    assert sizes == ((16.0,), (32.0,), (64.0,), (128.0,)) and ratios == (0.5, 1.0, 2.0)
    sizes, _ = anchors_for_boxes(torch.linspace(6, 60, 200), torch.ones(200), [4, 8, 16, 32])
    assert sizes[0] == (8.0,)                                  # small objects: smaller anchors
    sizes, _ = anchors_for_boxes(torch.linspace(2, 400, 200), torch.ones(200), [4, 8, 16, 32])
    assert sizes[-1][0] * 2 ** 0.5 >= torch.quantile(torch.linspace(2, 400, 200), 0.99)  # the top is covered
    sizes, _ = anchors_for_boxes(torch.full((10,), 1.0), torch.ones(10), [4, 8, 16, 32])
    assert sizes[0] == (4.0,)                                  # never below the finest stride
    elongated = torch.cat((torch.full((30,), 0.25), torch.ones(40), torch.full((30,), 4.0)))
    _, ratios = anchors_for_boxes(torch.full((100,), 30.0), elongated, [4, 8])
    assert ratios[0] < 0.5 and ratios[2] > 2.0                 # elongated boxes widen the ratios


def _variant(shapes_dir, tmp_path, make):
    for split in ("train", "val"):
        coco = json.loads((shapes_dir / f"{split}.json").read_text())
        (tmp_path / f"{split}.json").write_text(json.dumps(make(coco, split)))
    return DataPaths(tmp_path / "train.json", shapes_dir / "train", tmp_path / "val.json", shapes_dir / "val")


def test_start_up_choices_are_printed_and_recorded(shapes_dir, tmp_path):
    paths = _variant(shapes_dir, tmp_path, lambda coco, split: kp3_noflip(coco))
    cfg = load_config(DetConfig, ROOT / "configs" / "detection" / "shapes_R18_FPN.yaml")
    cfg = replace(cfg, model=replace(cfg.model, rpn=replace(cfg.model.rpn, anchor_sizes=((8,), (9,), (10,), (11,)))))
    train, val = build_datasets(cfg, paths)
    adapted, notes = adapt_to_dataset(cfg, train, val)
    assert train.meta.keypoint_flip_map == [("left", "right")]   # found from the names
    assert "keypoint flip pairs: left<->right" in notes
    assert adapted.model.rpn.anchor_sizes != cfg.model.rpn.anchor_sizes  # what config.yaml records
    assert any(n.startswith("anchors from ") for n in notes)


def test_image_size_note_and_tiny_box_warning(shapes_dir):
    paths = DataPaths(shapes_dir / "train.json", shapes_dir / "train", shapes_dir / "val.json", shapes_dir / "val")
    cfg = load_config(DetConfig, ROOT / "configs" / "detection" / "shapes_R18_FPN.yaml")
    train, val = build_datasets(cfg, paths)
    notes = adapt_to_dataset(cfg, train, val)[1]
    assert any(n.startswith("image size: short side 160 px (data.min_size; long side at most 214)") for n in notes)
    assert not any("px at this size" in n for n in notes)     # the shapes' boxes are large enough at 160 px
    small = replace(cfg, data=replace(cfg.data, min_size=(24,), max_size=32))
    warning = [n for n in adapt_to_dataset(small, train, val)[1] if n.startswith("warning:")]
    assert len(warning) == 1 and "of the training boxes are under 8 px at this size" in warning[0]
    assert "data.min_size" in warning[0]


def test_size_from_images_does_not_enlarge_small_images(shapes_dir):
    paths = DataPaths(shapes_dir / "train.json", shapes_dir / "train", shapes_dir / "val.json", shapes_dir / "val")
    cfg = load_config(DetConfig, ROOT / "configs" / "detection" / "shapes_R18_FPN.yaml",
                      ["data.size_from_images=true", "data.min_size=[150, 200]", "data.max_size=300",
                       "data.test_min_size=200"])
    train, val = build_datasets(cfg, paths)
    native = sorted(min(im["height"], im["width"]) for im in train.coco.imgs.values())
    native = (native[(len(native) - 1) // 2] + native[len(native) // 2]) / 2  # the median short side
    assert native < 150
    adapted, notes = adapt_to_dataset(cfg, train, val)
    f = native / 200
    assert adapted.data.min_size == (round(150 * f), round(200 * f))   # recorded in config.yaml
    assert (adapted.data.max_size, adapted.data.test_min_size) == (round(300 * f), round(native))
    assert any(n.startswith(f"image size: short side {(150 + 200) * f / 2:.0f} px (the training images' median "
                            f"short side, below data.min_size=200") for n in notes)
    image, target = val[0]                                             # the val resize follows
    assert min(image.shape[-2:]) == round(native)
    larger = replace(cfg, data=replace(cfg.data, min_size=(48,), max_size=64, test_min_size=48))
    assert adapt_to_dataset(larger, train, val)[0].data == larger.data  # smaller sizes stay as they are


def test_explicit_flip_map_is_checked(shapes_dir, tmp_path):
    paths = _variant(shapes_dir, tmp_path, lambda coco, split: kp3_noflip(coco))
    cfg = load_config(DetConfig, ROOT / "configs" / "detection" / "shapes_R18_FPN.yaml",
                      ["data.keypoint_flip_map=[[left, apex]]"])
    assert build_datasets(cfg, paths)[0].meta.keypoint_flip_map == [("left", "apex")]
    bad = load_config(DetConfig, None, ["model.keypoint_on=true", "data.keypoint_flip_map=[[left, wing]]"])
    with pytest.raises(DatasetError, match=r"data.keypoint_flip_map pair \('left', 'wing'\) does not name two "
                                           r"keypoints of .*train.json \(its keypoints: \['apex', 'left', 'right'\]\)"):
        build_datasets(bad, paths)


def test_repeat_factor_sampling_draws_rare_class_images_more_often(shapes_dir, tmp_path):
    cfg = load_config(DetConfig, None, ["data.repeat_threshold=0.9"])
    paths = DataPaths(shapes_dir / "train.json", shapes_dir / "train", shapes_dir / "val.json", shapes_dir / "val")
    train, _ = build_datasets(cfg, paths)
    indices, note = repeat_factor_indices(cfg.data, train, seed=0)
    assert note.startswith("repeat-factor sampling (t=0.9): an epoch is ")
    present = train.classes_per_image()
    rare = min(range(train.meta.num_classes), key=lambda c: sum(c in p for p in present))
    share_before = sum(rare in p for p in present) / len(present)
    share_after = sum(rare in present[i] for i in indices) / len(indices)
    assert share_after > share_before
    assert repeat_factor_indices(replace(cfg.data, repeat_threshold=0.0), train, 0) == (None, "")
    # the loader draws from the repeated list: every batch item is one of its images
    loader = build_train_loader(train, batch_size=4, num_workers=0, size_divisibility=32, pad_value=0.5,
                                indices=[indices[0]] * 3, aspect_ratio_grouping=False)
    _, targets = next(loader)
    assert [t["image_id"] for t in targets] == [train.ids[indices[0]]] * 4


def test_class_weights_favour_rare_classes_and_keep_the_loss_scale():
    w = inverse_sqrt_frequency_weights([100, 400, 0, 25])
    assert w[-1] == 1.0 and w[2] == 0.0                        # background 1, unseen class 0
    assert w[3] > w[0] > w[1]
    assert float(w[:-1][torch.tensor([100, 400, 0, 25]) > 0].mean()) == pytest.approx(1.0)
    logits = torch.randn(6, 5)
    gt = torch.tensor([0, 1, 3, 4, 4, 4])
    deltas = torch.zeros(6, 16)
    even = fast_rcnn_losses(logits, deltas, gt, torch.zeros(6, 4))["loss_cls"]
    ones = fast_rcnn_losses(logits, deltas, gt, torch.zeros(6, 4), class_weights=torch.ones(5))["loss_cls"]
    assert torch.allclose(even, ones)
