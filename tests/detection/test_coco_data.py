"""CocoDetection and DatasetMeta on hand-made COCO JSONs (and the shapes dataset), checked
against pycocotools, plus every bad-input case with its message."""
import copy
import json
import warnings

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from detection.data import CocoDetection, DatasetError, DatasetWarning, meta_from_coco

PERSON_KPS = ["nose", "left_eye", "right_eye"]


def _rle_compressed(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": rle["counts"].decode()}


def _rle_uncompressed(h, w, y0, y1, x0, x1):
    """Column-major run lengths starting with a zero run (COCO's uncompressed RLE)."""
    flat = np.zeros((h, w), np.uint8)
    flat[y0:y1, x0:x1] = 1
    flat = flat.T.reshape(-1)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [h, w], "counts": counts}


def make_coco_dict():
    """Three images (landscape 64x96, portrait 80x48, one without annotations), non-contiguous
    category ids, polygon + compressed RLE + uncompressed RLE masks, keypoints, one crowd."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 64, "width": 96},
            {"id": 2, "file_name": "sub/b.png", "height": 80, "width": 48},
            {"id": 5, "file_name": "c.png", "height": 64, "width": 64},
        ],
        "categories": [
            {"id": 10, "name": "square"},
            {"id": 3, "name": "circle"},
            {"id": 7, "name": "person", "keypoints": PERSON_KPS, "skeleton": [[1, 2], [1, 3]]},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10, 8, 20, 16], "area": 200, "iscrowd": 0,
             "segmentation": [[10, 8, 30, 8, 30, 24, 10, 24]]},
            {"id": 12, "image_id": 1, "category_id": 10, "bbox": [40, 20, 30, 30], "area": 900, "iscrowd": 0,
             "segmentation": _rle_compressed(64, 96, 20, 50, 40, 70)},
            {"id": 13, "image_id": 1, "category_id": 10, "bbox": [0, 0, 96, 64], "area": 100, "iscrowd": 1,
             "segmentation": _rle_compressed(64, 96, 0, 10, 0, 10)},
            {"id": 21, "image_id": 2, "category_id": 10, "bbox": [5, 10, 20, 30], "area": 600, "iscrowd": 0,
             "segmentation": _rle_uncompressed(80, 48, 10, 40, 5, 25)},
            {"id": 22, "image_id": 2, "category_id": 7, "bbox": [20, 40, 20, 30], "area": 600, "iscrowd": 0,
             "segmentation": [[20, 40, 40, 40, 40, 70, 20, 70], [21, 41, 23, 41, 22, 43]],
             "keypoints": [30, 45, 2, 25, 44, 1, 35, 44, 2], "num_keypoints": 3},
        ],
    }


def write_coco(root, data=None, images=None):
    """Write ``data`` as root/ann.json and a seeded random PNG for every image; return the paths."""
    data = make_coco_dict() if data is None else data
    rng = np.random.default_rng(0)
    for im in data["images"]:
        path = root / "images" / im["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        img = (images or {}).get(im["id"])
        if img is None:
            img = rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)
        cv2.imwrite(str(path), img)
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json", root / "images"


@pytest.fixture
def coco_files(tmp_path):
    return write_coco(tmp_path)


def _quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)  # a clean dataset must not warn
        return CocoDetection(*args, **kwargs)


# ---- metadata ---------------------------------------------------------------------------------
def test_meta_from_hand_made_json():
    meta = meta_from_coco(make_coco_dict(), "hand.json")
    assert meta.class_names == ["circle", "person", "square"]  # ordered by COCO id 3, 7, 10
    assert meta.category_ids == [3, 7, 10]
    assert meta.num_classes == 3
    assert meta.keypoint_names == PERSON_KPS and meta.num_keypoints == 3
    assert meta.keypoint_flip_map == [("left_eye", "right_eye")]  # inferred from the names
    assert meta.flip_indices == [0, 2, 1]
    assert meta.skeleton == [(0, 1), (0, 2)]  # 1-based in COCO, 0-based here
    assert type(meta).from_dict(meta.to_dict()) == meta


def test_meta_explicit_flip_map_and_no_keypoints():
    data = make_coco_dict()
    data["categories"][2]["keypoints"] = ["a", "b", "c", "d"]
    data["categories"][2]["flip_map"] = [["a", "c"]]
    meta = meta_from_coco(data, "x.json")
    assert meta.flip_indices == [2, 1, 0, 3]
    data["categories"][2].pop("keypoints")
    meta = meta_from_coco(data, "x.json")
    assert meta.keypoint_names == [] and meta.flip_indices == [] and meta.num_keypoints == 0


def test_meta_rejects_mixed_keypoint_names():
    data = make_coco_dict()
    data["categories"][0]["keypoints"] = ["nose", "tail"]
    with pytest.raises(DatasetError, match=r"x\.json: categories 7 and 10 have different keypoint names"):
        meta_from_coco(data, "x.json")


def test_meta_rejects_bad_flip_map_and_skeleton():
    data = make_coco_dict()
    data["categories"][2]["flip_map"] = [["left_eye", "right_ear"]]
    with pytest.raises(DatasetError, match=r"flip_map pair \('left_eye', 'right_ear'\).*unknown keypoint"):
        meta_from_coco(data, "x.json")
    data = make_coco_dict()
    data["categories"][2]["skeleton"] = [[1, 4]]
    with pytest.raises(DatasetError, match=r"skeleton edge \[1, 4\] of category 7 is out of range"):
        meta_from_coco(data, "x.json")


# ---- reading ----------------------------------------------------------------------------------
def test_dataset_items(coco_files):
    ann, root = coco_files
    ds = _quiet(ann, root)
    assert len(ds) == 3 and ds.ids == [1, 2, 5]
    assert ds.aspect_ratios() == [96 / 64, 48 / 80, 1.0]
    assert ds.stats["crowd"] == 1

    image, t = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
    assert t["image_id"] == 1 and t["orig_size"].tolist() == [64, 96]
    assert t["gt_boxes"].dtype == torch.float32
    assert t["gt_boxes"].tolist() == [[10, 8, 30, 24], [40, 20, 70, 50]]  # xywh -> xyxy, crowd excluded
    assert t["gt_classes"].tolist() == [0, 2]  # circle (id 3) -> 0, square (id 10) -> 2
    assert t["gt_masks"].dtype == torch.uint8 and t["gt_masks"].shape == (2, 64, 96)
    assert t["gt_masks"][1].sum() == 900
    assert t["gt_keypoints"].shape == (2, 3, 3) and t["gt_keypoints"].abs().sum() == 0  # no person here

    _, t = ds[1]
    assert t["gt_classes"].tolist() == [2, 1]
    assert t["gt_masks"][0].sum() == 600  # uncompressed RLE 20 x 30
    assert t["gt_keypoints"][1].tolist() == [[30.5, 45.5, 2], [25.5, 44.5, 1], [35.5, 44.5, 2]]  # COCO index + 0.5
    assert t["gt_keypoints"][0].abs().sum() == 0  # square has no keypoints: zeros

    _, t = ds[2]  # image without annotations is kept, with empty fields
    assert t["gt_boxes"].shape == (0, 4) and t["gt_classes"].shape == (0,)
    assert t["gt_masks"].shape == (0, 64, 64) and t["gt_keypoints"].shape == (0, 3, 3)


def test_image_is_rgb_from_disk(tmp_path):
    bgr = np.zeros((64, 96, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    ann, root = write_coco(tmp_path, images={1: bgr})
    image, _ = _quiet(ann, root)[0]
    assert image[2].float().mean() == 200 and image[0].float().mean() == 0  # (3, H, W): R, G, B


def test_filter_empty_and_options(coco_files):
    ann, root = coco_files
    ds = _quiet(ann, root, filter_empty=True)
    assert ds.ids == [1, 2] and ds.stats["images_dropped_empty"] == 1
    _, t = _quiet(ann, root, use_masks=False, use_keypoints=False)[1]
    assert "gt_masks" not in t and "gt_keypoints" not in t
    data = make_coco_dict()
    data["categories"][2].pop("keypoints")
    ann2, root2 = write_coco(ann.parent / "nokp", data)
    _, t = _quiet(ann2, root2)[1]
    assert "gt_keypoints" not in t and "gt_masks" in t


def test_transforms_get_numpy_before_tensors(coco_files):
    ann, root = coco_files
    seen = {}

    def flip_vertical(image, target):
        seen["types"] = (type(image), type(target["gt_boxes"]), image.shape)
        h = image.shape[0]
        target = dict(target, gt_boxes=target["gt_boxes"][:, [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, h, 0, h])
        return image[::-1], target

    ds = _quiet(ann, root, transforms=flip_vertical)
    image, t = ds[0]
    raw, _ = ds.load_numpy(0)
    assert seen["types"] == (np.ndarray, np.ndarray, (64, 96, 3))
    assert torch.equal(image, torch.from_numpy(raw[::-1].transpose(2, 0, 1).copy()))
    assert t["gt_boxes"].tolist() == [[10, 40, 30, 56], [40, 14, 70, 44]]


def _assert_matches_pycocotools(ds):
    """Boxes, masks, keypoints and labels of every item equal pycocotools' reading of the JSON."""
    coco = ds.coco
    for i, image_id in enumerate(ds.ids):
        _, t = ds[i]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
        assert len(anns) == len(t["gt_boxes"])
        for j, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            assert t["gt_boxes"][j].tolist() == pytest.approx([x, y, x + w, y + h])
            assert ds.meta.category_ids[int(t["gt_classes"][j])] == a["category_id"]
            if "gt_masks" in t:
                assert np.array_equal(t["gt_masks"][j].numpy(), coco.annToMask(a))
            if "gt_keypoints" in t and "keypoints" in a:
                expected = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
                expected[expected[:, 2] > 0, :2] += 0.5  # COCO pixel indices -> continuous
                np.testing.assert_allclose(t["gt_keypoints"][j].numpy(), expected, rtol=0, atol=1e-4)
    return True


def test_matches_pycocotools_hand_made(coco_files):
    assert _assert_matches_pycocotools(_quiet(*coco_files))


def test_matches_pycocotools_shapes(shapes_dir):
    """On the synthetic shapes dataset (root/train.json with images in root/train/, same for val)."""
    for split in ("train", "val"):
        ds = CocoDetection(shapes_dir / f"{split}.json", shapes_dir / split)
        assert len(ds) == {"train": 12, "val": 6}[split]
        assert ds.meta.class_names == ["circle", "square", "triangle", "star"]
        assert ds.meta.flip_indices == [0, 2, 1, 4, 3]  # from the category's flip_map
        assert ds.has_masks and ds.has_keypoints
        assert _assert_matches_pycocotools(ds)


# ---- bad input ----------------------------------------------------------------------------------
def test_missing_image_names_file_and_id(coco_files):
    ann, root = coco_files
    (root / "sub" / "b.png").unlink()
    ds = CocoDetection(ann, root)  # lazily checked: building works
    with pytest.raises(DatasetError, match=r"image file .*sub/b\.png \(image id 2\) does not exist"):
        ds[1]


def test_unreadable_image(coco_files):
    ann, root = coco_files
    (root / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"image file .*a\.png \(image id 1\) could not be read as an image"):
        CocoDetection(ann, root)[0]


def test_image_size_differs_from_json(tmp_path):
    ann, root = write_coco(tmp_path, images={1: np.zeros((32, 96, 3), np.uint8)})
    with pytest.raises(DatasetError, match=r"a\.png \(image id 1\) is 32x96 \(h x w\) but ann\.json says 64x96"):
        CocoDetection(ann, root)[0]


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit"])
def test_gray_rgba_16bit_become_8bit_rgb(tmp_path, kind):
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 120, 250
    bgr = rgb[..., ::-1]
    img = {"gray": np.full((64, 96), 77, np.uint8),
           "rgba": np.dstack([bgr, np.full((64, 96), 9, np.uint8)]),
           "16bit": bgr.astype(np.uint16) * 257}[kind]
    ann, root = write_coco(tmp_path, images={1: img})
    image, _ = _quiet(ann, root)[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
    expected = [77, 77, 77] if kind == "gray" else [10, 120, 250]
    assert image[:, 5, 5].tolist() == expected


def test_not_coco_names_missing_key(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match=r"x\.json: not a COCO file: missing key 'images'"):
        CocoDetection(tmp_path / "x.json", tmp_path)
    (tmp_path / "y.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DatasetError, match=r"y\.json: the top level must be a JSON object"):
        CocoDetection(tmp_path / "y.json", tmp_path)


def test_broken_json_names_file(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"broken\.json is not valid JSON"):
        CocoDetection(tmp_path / "broken.json", tmp_path)
    with pytest.raises(DatasetError, match=r"annotation file .*nope\.json does not exist"):
        CocoDetection(tmp_path / "nope.json", tmp_path)


def _with(tmp_path, edit):
    data = make_coco_dict()
    edit(data)
    return write_coco(tmp_path, data)


def test_unknown_image_or_category(tmp_path):
    ann, root = _with(tmp_path, lambda d: d["annotations"][0].update(image_id=99))
    with pytest.raises(DatasetError, match=r"annotation 11 points at unknown image_id 99"):
        CocoDetection(ann, root)
    ann, root = _with(tmp_path, lambda d: d["annotations"][3].update(category_id=4))
    with pytest.raises(DatasetError, match=r"ann\.json: annotation 21 \(image 2\) has unknown category_id 4 \(known: \[3, 7, 10\]\)"):
        CocoDetection(ann, root)


def test_malformed_annotations(tmp_path):
    cases = [
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotation 11 \(image 1\) has a bbox that is not 4 finite numbers: \[1, 2, 3\]$"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotation 11 has no 'bbox'"),
        (lambda d: d["annotations"][1].update(id=11), r"annotation id 11 appears twice"),
        (lambda d: d["annotations"][4].update(keypoints=[1, 2, 2]),
         r"annotation 22 \(image 2\) has 3 keypoint values; expected 3 x 3 = 9"),
        (lambda d: d["annotations"][1]["segmentation"].update(size=[10, 10]),
         r"annotation 12 \(image 1\) has an RLE of size \[10, 10\] but the image is \[64, 96\]"),
        (lambda d: d["annotations"][3]["segmentation"]["counts"].append(5),
         r"annotation 21 \(image 2\) has uncompressed RLE counts summing to 3845; expected h \* w = 3840"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5]]),
         r"annotation 11 \(image 1\) has a polygon that is not an even-length list"),
        (lambda d: d["annotations"][0].update(segmentation=[]),
         r"annotation 11 \(image 1\) has no segmentation while other annotations do; set model.mask_on=false "
         r"to train on boxes only$"),
    ]
    for edit, message in cases:
        ann, root = _with(tmp_path, edit)
        with pytest.raises(DatasetError, match=message):
            CocoDetection(ann, root)


def test_corrupt_compressed_rle_is_a_clear_error(tmp_path):
    from common.coco import rle_string_counts as _rle_string_counts
    for h, w, box in ((64, 96, (20, 50, 40, 70)), (7, 5, (0, 7, 0, 5)), (9, 9, (3, 4, 0, 9))):
        rle = _rle_compressed(h, w, *box)  # our parser agrees with pycocotools' run lengths
        assert sum(_rle_string_counts(rle["counts"])) == h * w
    assert _rle_string_counts("02") == [0, 2]
    ann, root = _with(tmp_path, lambda d: d["annotations"][1]["segmentation"].update(counts="\x7f\x7f"))
    with pytest.raises(DatasetError, match=r"annotation 12 \(image 1\) has compressed RLE counts unparsable"):
        CocoDetection(ann, root)
    ann, root = _with(tmp_path, lambda d: d["annotations"][1]["segmentation"].update(counts="0l4"))
    with pytest.raises(DatasetError, match=r"annotation 12 \(image 1\) has compressed RLE counts summing to"):
        CocoDetection(ann, root)


def test_bad_boxes_clipped_dropped_and_warned_once(tmp_path):
    def edit(d):
        extra = [  # image 1 is 64 x 96
            {"id": 31, "bbox": [90, 50, 20, 30]},   # sticks out: clipped to [90, 50, 96, 64]
            {"id": 32, "bbox": [-5, 10, 15, 10]},   # sticks out: clipped to [0, 10, 10, 20]
            {"id": 33, "bbox": [20, 20, 0.5, 10]},  # degenerate: dropped
            {"id": 34, "bbox": [200, 10, 10, 10]},  # outside the image: clipped to nothing, dropped
        ]
        for a in extra:
            x, y, w, h = a["bbox"]
            a.update(image_id=1, category_id=3, iscrowd=0, area=1,
                     segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]])
        d["annotations"] += extra
    ann, root = _with(tmp_path, edit)
    with pytest.warns(DatasetWarning) as record:
        ds = CocoDetection(ann, root)
    assert len(record) == 1
    assert str(record[0].message).endswith(
        "ann.json: 3 boxes clipped to the image; 2 degenerate or outside boxes dropped (side < 1 px after clipping)")
    _, t = ds[0]
    assert t["gt_boxes"].tolist() == [[10, 8, 30, 24], [40, 20, 70, 50], [90, 50, 96, 64], [0, 10, 10, 20]]
    assert len(t["gt_masks"]) == 4 and ds.stats["boxes_degenerate"] == 2


def test_short_polygons_dropped_and_counted(tmp_path):
    def edit(d):
        d["annotations"][0]["segmentation"] = [[10, 8, 30, 8]]  # 2 points: no polygon left
        d["annotations"][4]["segmentation"][1] = [21, 41, 23, 41]  # 2 points: that part only
    ann, root = _with(tmp_path, edit)
    with pytest.warns(DatasetWarning, match=r"2 polygons with fewer than 3 points dropped; "
                                            r"1 instances dropped for having no valid polygon"):
        ds = CocoDetection(ann, root)
    _, t = ds[0]
    assert t["gt_classes"].tolist() == [2]  # the circle lost its only polygon
    _, t = ds[1]
    person = ds.coco.annToMask({"image_id": 2, "segmentation": [[20, 40, 40, 40, 40, 70, 20, 70]]})
    assert np.array_equal(t["gt_masks"][1].numpy(), person)


def test_copy_of_dict_is_not_mutated():
    data = make_coco_dict()
    before = copy.deepcopy(data)
    meta_from_coco(data, "x.json")
    assert data == before
