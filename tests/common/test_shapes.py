"""The synthetic shapes dataset: COCO validity, pixel-exact masks, keypoints, semantic maps,
determinism, and the atomic ensure_shapes_dataset."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

import common.shapes as shapes
from common.shapes import ensure_shapes_dataset, generate_shapes_dataset

REPO = Path(__file__).resolve().parents[2]
LABEL = {1: 1, 3: 2, 5: 3, 7: 4}  # category id -> semantic value (1 + contiguous index)
KP = {name: i for i, name in enumerate(shapes.KEYPOINT_NAMES)}


@pytest.fixture(scope="module")
def medium_dir(tmp_path_factory):
    """150 train images of 64 px: enough for crowds, empty images and every keypoint visibility."""
    return generate_shapes_dataset(tmp_path_factory.mktemp("medium"), num_train=150, num_val=0, size=64, seed=0)


def load(root, split):
    coco = COCO(str(Path(root) / f"{split}.json"))
    return coco


def semantic(root, split, img):
    return cv2.imread(str(Path(root) / f"{split}_semantic" / (Path(img["file_name"]).stem + ".png")),
                      cv2.IMREAD_UNCHANGED)


def test_tiny_fixture_has_stars_and_crowded_images(shapes_dir):
    for split, count in (("train", 12), ("val", 6)):
        coco = load(shapes_dir, split)
        assert len(coco.getImgIds()) == count
        assert sorted(coco.getCatIds()) == [1, 3, 5, 7]
        star = coco.loadCats(7)[0]
        assert star["name"] == "star"
        assert star["keypoints"] == ["top", "upper_left", "upper_right", "lower_left", "lower_right"]
        assert star["flip_map"] == [["upper_left", "upper_right"], ["lower_left", "lower_right"]]
        assert all(1 <= a <= 5 and 1 <= b <= 5 for a, b in star["skeleton"])
        assert "keypoints" not in coco.loadCats(1)[0]
        stars = [a for a in coco.loadAnns(coco.getAnnIds(catIds=[7], iscrowd=False))]
        assert any(a["num_keypoints"] == 5 for a in stars)
        assert max(len(coco.getAnnIds(imgIds=[i], iscrowd=False)) for i in coco.getImgIds()) >= 3
        (h, w) = coco.imgs[1]["height"], coco.imgs[1]["width"]
        assert max(h, w) == 96 and min(h, w) in (72, 96)
        assert cv2.imread(str(shapes_dir / split / coco.imgs[1]["file_name"])).shape == (h, w, 3)
    assert json.loads((shapes_dir / "semantic.json").read_text()) == {
        "classes": ["background", "circle", "square", "triangle", "star"], "ignore_index": 255}


@pytest.mark.parametrize("root_name", ["shapes_dir", "medium_dir"])
def test_masks_boxes_areas_and_semantic_maps_agree(root_name, request):
    root = request.getfixturevalue(root_name)
    for split in ("train", "val") if root_name == "shapes_dir" else ("train",):
        coco = load(root, split)
        kinds = set()
        for img in coco.loadImgs(coco.getImgIds()):
            sem = semantic(root, split, img)
            assert sem.shape == (img["height"], img["width"]) and sem.dtype == np.uint8
            expected = np.zeros_like(sem)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
                m = coco.annToMask(ann).astype(bool)
                kinds.add(type(ann["segmentation"]).__name__)
                assert ann["area"] == m.sum() > 0
                ys, xs = np.nonzero(m)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert not expected[m].any(), f"masks overlap in image {img['id']}"
                expected[m] = 255 if ann["iscrowd"] else LABEL[ann["category_id"]]
                if isinstance(ann["segmentation"], dict):
                    assert isinstance(ann["segmentation"]["counts"], str)
            np.testing.assert_array_equal(sem, expected)
        assert kinds == {"list", "dict"}  # both polygons and RLE


def test_masks_sit_on_the_drawn_objects(shapes_dir):
    """Inside each (eroded) mask the JPEG colour differs clearly from the background just outside."""
    coco = load(shapes_dir, "train")
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(str(shapes_dir / "train" / img["file_name"])).astype(np.float32)
        sem = semantic(shapes_dir, "train", img)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]], iscrowd=False)):
            m = coco.annToMask(ann)
            inner = cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)
            ring = (cv2.dilate(m, np.ones((7, 7), np.uint8)) > cv2.dilate(m, np.ones((3, 3), np.uint8))) & (sem == 0)
            if inner.sum() < 10 or ring.sum() < 10:
                continue
            gap = np.linalg.norm(pixels[inner].mean(0) - pixels[ring].mean(0))
            assert gap > 40, f"image {img['id']} annotation {ann['id']}: colour gap {gap:.0f}"
            checked += 1
    assert checked >= 15


def test_star_keypoints_visibility_and_flip(medium_dir):
    coco = load(medium_dir, "train")
    seen = set()
    for ann in coco.loadAnns(coco.getAnnIds()):
        kps = np.array(ann["keypoints"], dtype=np.float64).reshape(5, 3)
        if ann["category_id"] != 7 or ann["iscrowd"]:
            assert not kps.any() and ann["num_keypoints"] == 0
            continue
        img = coco.imgs[ann["image_id"]]
        h, w = img["height"], img["width"]
        near = np.ones((7, 7), np.uint8)  # 3 px around a tip
        own = cv2.dilate(coco.annToMask(ann), near).astype(bool)
        later = [coco.annToMask(o) for o in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])) if o["id"] > ann["id"]]
        later = sum(later, np.zeros((h, w), np.uint8)) > 0  # annotations are listed in drawing order
        assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
        for x, y, v in kps:
            seen.add(int(v))
            if v == 0:
                assert x == y == 0
                continue
            assert 0 <= x < w and 0 <= y < h
            x, y = x + 0.5, y + 0.5  # COCO pixel index -> the continuous tip
            if v == 2:
                assert own[int(y), int(x)], f"visible tip ({x}, {y}) is off star {ann['id']}"
                assert not later[int(y), int(x)]
            else:
                assert cv2.dilate(later.astype(np.uint8), near)[int(y), int(x)]
        # the names mean what they say, and still do after a horizontal flip + flip_map swap
        flipped = kps.copy()
        flipped[:, 0] = w - kps[:, 0]
        for a, b in shapes.FLIP_MAP:
            flipped[[KP[a], KP[b]]] = flipped[[KP[b], KP[a]]]
        for pts in (kps, flipped):
            if (pts[:, 2] > 0).all():
                x, y = pts[:, 0], pts[:, 1]
                assert x[KP["upper_left"]] < x[KP["top"]] < x[KP["upper_right"]]
                assert x[KP["lower_left"]] < x[KP["lower_right"]]
                assert y[KP["top"]] < min(y[KP["upper_left"]], y[KP["upper_right"]])
                assert max(y[KP["upper_left"]], y[KP["upper_right"]]) < min(y[KP["lower_left"]], y[KP["lower_right"]])
    assert seen == {0, 1, 2}


def test_crowds_empty_images_and_aspect_ratios_occur(medium_dir):
    coco = load(medium_dir, "train")
    crowds = coco.loadAnns(coco.getAnnIds(iscrowd=True))
    assert 1 <= len(crowds) <= 20
    for ann in crowds:
        assert isinstance(ann["segmentation"], dict)
        sem = semantic(medium_dir, "train", coco.imgs[ann["image_id"]])
        assert (sem[coco.annToMask(ann).astype(bool)] == 255).all()
    empty = [i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=[i])]
    assert 1 <= len(empty) <= 20
    assert not semantic(medium_dir, "train", coco.imgs[empty[0]]).any()
    assert {(i["height"], i["width"]) for i in coco.imgs.values()} == {(64, 64), (48, 64), (64, 48)}
    counts = [len(coco.getAnnIds(imgIds=[i], iscrowd=False)) for i in coco.getImgIds()]
    assert max(counts) >= 5


def test_same_seed_same_bytes_and_prefix_stable(tmp_path):
    a = generate_shapes_dataset(tmp_path / "a", num_train=6, num_val=3, size=64, seed=3)
    b = generate_shapes_dataset(tmp_path / "b", num_train=6, num_val=3, size=64, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * (6 + 3) + 4
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = generate_shapes_dataset(tmp_path / "c", num_train=6, num_val=3, size=64, seed=4)
    assert (a / "train.json").read_bytes() != (c / "train.json").read_bytes()
    # a smaller set is the prefix of a larger one
    d = generate_shapes_dataset(tmp_path / "d", num_train=2, num_val=0, size=64, seed=3)
    assert (d / "train" / "000002.jpg").read_bytes() == (a / "train" / "000002.jpg").read_bytes()
    first_two = [x for x in json.loads((a / "train.json").read_text())["annotations"] if x["image_id"] <= 2]
    assert json.loads((d / "train.json").read_text())["annotations"] == first_two


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size must be an integer >= 32, got 10"):
        generate_shapes_dataset(tmp_path / "x", size=10)
    with pytest.raises(ValueError, match="num_train must be an integer >= 0, got -1"):
        generate_shapes_dataset(tmp_path / "x", num_train=-1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"output directory .*busy is not empty"):
        generate_shapes_dataset(tmp_path / "busy", num_train=1, num_val=0, size=32)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"output path .*file exists and is not a directory"):
        generate_shapes_dataset(tmp_path / "file", num_train=1, num_val=0, size=32)


def test_ensure_is_idempotent(tmp_path, monkeypatch):
    kwargs = dict(num_train=3, num_val=2, size=48, seed=0)
    root = ensure_shapes_dataset(tmp_path / "shapes", **kwargs)
    assert root == tmp_path / "shapes" and (root / "val.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no temp dir left

    def must_not_run(*a, **k):
        raise AssertionError("regenerated an existing dataset")

    monkeypatch.setattr(shapes, "generate_shapes_dataset", must_not_run)
    assert ensure_shapes_dataset(tmp_path / "shapes", **kwargs) == root
    with pytest.warns(UserWarning, match=r"ignoring the requested \{'num_train': 5\}"):
        assert ensure_shapes_dataset(tmp_path / "shapes", **{**kwargs, "num_train": 5}) == root
    # a dataset from before the keypoint convention changed is kept, with a word on regenerating it
    marker = root / shapes.COMPLETE_MARKER
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "format"}))
    with pytest.warns(UserWarning, match=r"older version of the toolkit \(format 1, now 2.*delete the directory"):
        assert ensure_shapes_dataset(tmp_path / "shapes", **kwargs) == root
    assert (root / "val.json").is_file()


def test_ensure_is_atomic(tmp_path, monkeypatch):
    calls = []
    real_write = shapes._write_image

    def crash_on_third(path, array, params):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("simulated interruption")
        real_write(path, array, params)

    monkeypatch.setattr(shapes, "_write_image", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        ensure_shapes_dataset(tmp_path / "shapes", num_train=4, num_val=1, size=48)
    assert list(tmp_path.iterdir()) == []  # neither a half dataset nor a temp dir

    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match=r"half exists but is not a complete shapes dataset"):
        ensure_shapes_dataset(tmp_path / "half")


def test_cli_writes_a_dataset(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "datasets/prepare_shapes.py", "--out", str(out), "--train", "2",
                          "--val", "1", "--size", "48", "--seed", "5"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len(json.loads((out / "train.json").read_text())["images"]) == 2
    assert json.loads((out / "val.json").read_text())["info"]["seed"] == 5
    again = subprocess.run([sys.executable, "datasets/prepare_shapes.py", "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr
