"""Data layouts (shapes dir, Pascal VOC, COCO-derived), joint transforms and bad-input messages."""
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from common.image_list import ImageList
from segmentation.build import build_train_indices
from segmentation.config import DataConfig
from segmentation.data import (VOC_CLASSES, SegDataError, build_transforms, load_coco_semantic, load_semantic_dir,
                               load_voc)


def test_shapes_layout(shapes_dir):
    ds = load_semantic_dir(shapes_dir, "train")
    assert len(ds) == 12 and ds.class_names == ["background", "circle", "square", "triangle", "star"]
    image, target = ds[0]
    lab = target["sem_seg"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert lab.dtype == torch.int64 and lab.shape == image.shape[1:]
    disk = cv2.imread(str(shapes_dir / "train_semantic" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert torch.equal(lab, torch.from_numpy(disk).long())
    assert target["orig_size"].tolist() == list(disk.shape)


def test_coco_derived_maps_equal_the_semantic_pngs(shapes_dir):
    coco = load_coco_semantic(shapes_dir / "val.json", shapes_dir / "val")
    png = load_semantic_dir(shapes_dir, "val")
    assert coco.class_names == png.class_names and len(coco) == len(png)
    for i in range(len(coco)):
        assert np.array_equal(coco.read_label(i), png.read_label(i)), coco.items[i].image_id


def _voc_tree(root, n=2):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253
    ids = []
    for k in range(n):
        image_id = f"2007_00000{k}"
        rgb = np.full((40, 48, 3), 90, np.uint8)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), rgb)
        lab = np.zeros((40, 48), np.uint8)
        lab[10:30, 10:20] = 1 + k
        lab[9, 10:20] = 255  # VOC's "void" border
        im = Image.fromarray(lab, mode="P")
        im.putpalette(palette)
        im.save(root / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc_layout_reads_palette_indices(tmp_path):
    ds = load_voc(_voc_tree(tmp_path), "train")
    assert len(ds) == 2 and ds.class_names == VOC_CLASSES
    _, t = ds[1]
    lab = t["sem_seg"]
    assert lab.shape == (40, 48)
    assert sorted(torch.unique(lab).tolist()) == [0, 2, 255]   # indices, not colours (0, 128, 0)
    assert int(lab[20, 15]) == 2 and t["image_id"] == "2007_000001"


def test_voc_missing_file_is_named(tmp_path):
    root = _voc_tree(tmp_path)
    (root / "SegmentationClass" / "2007_000001.png").unlink()
    with pytest.raises(SegDataError, match=r"label file .*SegmentationClass/2007_000001.png for image 2007_000001 does not exist"):
        load_voc(root, "train")


def test_rgb_label_png_rejected(tmp_path):
    root = _voc_tree(tmp_path)
    Image.new("RGB", (48, 40)).save(root / "SegmentationClass" / "2007_000000.png")
    ds = load_voc(root, "train")
    with pytest.raises(SegDataError, match=r"2007_000000.png for image 2007_000000 is a RGB image"):
        ds[0]


@pytest.fixture
def shapes_copy(shapes_dir, tmp_path):
    dst = tmp_path / "shapes"
    shutil.copytree(shapes_dir, dst)
    return dst


def test_label_size_mismatch_names_file_and_sizes(shapes_copy):
    path = shapes_copy / "train_semantic" / "000002.png"
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), lab[:-5])
    ds = load_semantic_dir(shapes_copy, "train")
    h, w = lab.shape
    with pytest.raises(SegDataError, match=rf"000002.png: label map of image 000002 is {h - 5}x{w} \(HxW\) "
                                           rf"but the image .*000002.jpg is {h}x{w}"):
        ds[1]


def test_label_class_out_of_range_names_file_and_value(shapes_copy):
    path = shapes_copy / "val_semantic" / "000003.png"
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 9
    cv2.imwrite(str(path), lab)
    ds = load_semantic_dir(shapes_copy, "val")
    with pytest.raises(SegDataError, match=r"000003.png: label map of image 000003 contains class id 9, "
                                           r"outside the 5 declared classes 0..4 \(ignore index 255\)"):
        ds[2]


def test_missing_label_and_meta_files_are_named(shapes_copy):
    (shapes_copy / "train_semantic" / "000004.png").unlink()
    with pytest.raises(SegDataError, match=r"label file .*train_semantic/000004.png for image 000004 does not exist"):
        load_semantic_dir(shapes_copy, "train")
    (shapes_copy / "semantic.json").unlink()
    with pytest.raises(SegDataError, match=r"semantic.json does not exist"):
        load_semantic_dir(shapes_copy, "val")


def test_missing_image_is_named(shapes_copy):
    ds = load_semantic_dir(shapes_copy, "val")
    (shapes_copy / "val" / "000001.jpg").unlink()
    with pytest.raises(SegDataError, match=r"image file .*val/000001.jpg \(image id 000001\) does not exist"):
        ds[0]


def test_train_transforms_keep_labels_aligned_and_nearest(shapes_dir):
    ds = load_semantic_dir(shapes_dir, "train", build_transforms(True, crop_size=64, scale_range=(0.6, 1.4)))
    torch.manual_seed(0)
    np.random.seed(0)
    allowed = set(range(5)) | {255}
    for i in range(4):
        image, t = ds[i]
        assert image.shape == (3, 64, 64) and t["sem_seg"].shape == (64, 64)
        assert set(torch.unique(t["sem_seg"]).tolist()) <= allowed  # nearest: no blended ids
    assert build_transforms(False) is None


def test_flip_moves_image_and_mask_together():
    import albumentations as A

    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :2] = 200
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :2] = 3
    out = A.Compose([A.HorizontalFlip(p=1.0)])(image=img, mask=mask)
    assert (out["mask"][:, -2:] == 3).all() and (out["image"][:, -2:] == 200).all()


def test_image_list_padding_and_repeat_indices(shapes_dir):
    il = ImageList.from_tensors([torch.full((3, 40, 50), 255, dtype=torch.uint8)], 32, (0.5, 0.25, 0.0))
    assert il.tensor.shape == (1, 3, 64, 64) and il.image_sizes == [(40, 50)]
    assert il.tensor[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and il.tensor[0, :, 63, 63].tolist() == [0.5, 0.25, 0.0]
    ds = load_semantic_dir(shapes_dir, "train")
    assert build_train_indices(DataConfig(), ds) == list(range(12))
    idx = build_train_indices(DataConfig(repeat_threshold=1.0), ds)
    assert len(idx) >= 12 and set(idx) == set(range(12))


def test_train_batches_line_up_with_their_label_maps(shapes_dir):
    # paint each image from its own label map, then run the real training pipeline (scale, crop,
    # flip, padding, collate): decoding the batch's colours must give back the batch's labels
    from segmentation.data import build_train_loader

    palette = np.array([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], np.uint8)
    ds = load_semantic_dir(shapes_dir, "train", build_transforms(True, crop_size=64, scale_range=(0.75, 1.25),
                                                                 color_jitter=0))
    ds.read_image = lambda i: palette[np.minimum(ds.read_label(i), 4)]
    batches = build_train_loader(ds, batch_size=4, size_divisibility=16, pad_value=(0.0, 0.0, 0.0))
    for _ in range(3):
        images, targets = next(batches)
        for img, t in zip(images.tensor, targets):
            rgb = (img.permute(1, 2, 0) * 255).round().numpy()                 # (H, W, 3)
            decoded = np.argmin(((rgb[:, :, None] - palette[None, None]) ** 2).sum(-1), -1)
            lab = t["sem_seg"].numpy()
            # pixels next to a label edge may differ (bilinear image vs nearest mask resampling)
            kernel = np.ones((3, 3), np.uint8)
            inside = cv2.dilate(lab.astype(np.uint8), kernel) == cv2.erode(lab.astype(np.uint8), kernel)
            valid = inside & (lab != 255)
            assert valid.mean() > 0.5 and (decoded[valid] != lab[valid]).mean() < 0.005


def test_voc_layout_gets_the_start_up_check(tmp_path, capsys):
    from common.coco import DatasetError
    from segmentation.build import build_dataset, check_data
    from segmentation.config import DataConfig

    root = _voc_tree(tmp_path / "voc", 3)
    lab = np.array(Image.open(root / "SegmentationClass" / "2007_000001.png"))
    lab[0, 0] = 21  # VOC has classes 0..20
    im = Image.fromarray(lab, mode="P")
    im.putpalette([0, 0, 0] * 256)
    im.save(root / "SegmentationClass" / "2007_000001.png")
    cfg = DataConfig(format="voc", root=str(root))
    list_file = root / "ImageSets" / "Segmentation" / "train.txt"
    with pytest.raises(DatasetError, match=rf"^1 problem in {list_file} \(listed above"):
        check_data(cfg, root, None, splits=("train",), cache_dir=tmp_path / "cache")
    assert capsys.readouterr().err == (f"problem: label file {root}/SegmentationClass/2007_000001.png (image id "
                                       "2007_000001) holds class id 21, outside the 21 classes 0..20 (ignore "
                                       "index 255)\n")
    skipping = DataConfig(format="voc", root=str(root), skip_bad_images=True)
    checked = check_data(skipping, root, None, splits=("train",), cache_dir=tmp_path / "cache")
    ds = build_dataset(skipping, "train", train=False, root=root, checked=checked)
    assert [it.image_id for it in ds.items] == ["2007_000000", "2007_000002"]
