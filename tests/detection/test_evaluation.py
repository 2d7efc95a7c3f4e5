"""COCO evaluation: results conversion, official metrics, and the errors on bad input."""
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO

from detection.evaluation import (CocoEvaluator, EvaluationError, evaluate_coco,
                                  predictions_to_coco_results)


def tiny_coco(tmp_path):
    """Two 64x64 images; a square (no keypoints) and a 3-keypoint triangle category; one crowd."""
    def square(ann_id, image_id, x, y, s, crowd=0):
        return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": crowd,
                "bbox": [x, y, s, s], "area": s * s,
                "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]]}

    def triangle(ann_id, image_id, x, y):
        pts = [x, y + 20, x + 10, y, x + 20, y + 20]
        return {"id": ann_id, "image_id": image_id, "category_id": 3, "iscrowd": 0,
                "bbox": [x, y, 20, 20], "area": 200, "segmentation": [pts],
                "keypoints": [pts[0], pts[1], 2, pts[2], pts[3], 2, pts[4], pts[5], 1],
                "num_keypoints": 3}

    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 64},
                   {"id": 2, "file_name": "b.jpg", "height": 64, "width": 64}],
        "categories": [{"id": 1, "name": "square"},
                       {"id": 3, "name": "triangle", "keypoints": ["l", "top", "r"],
                        "skeleton": [[1, 2], [2, 3]]}],
        "annotations": [square(1, 1, 4, 4, 20), triangle(2, 1, 30, 30),
                        square(3, 2, 10, 30, 24), triangle(4, 2, 36, 4),
                        square(5, 2, 40, 40, 16, crowd=1)],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def perfect_results(coco: COCO) -> list[dict]:
    """The ground truth as detections: score 1, masks from annToMask, keypoints copied, no crowd."""
    results = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        if ann.get("iscrowd", 0):
            continue
        rle = mask_util.encode(np.asfortranarray(coco.annToMask(ann)))
        rle["counts"] = rle["counts"].decode()
        res = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
               "bbox": list(ann["bbox"]), "segmentation": rle}
        if "keypoints" in ann:
            res["keypoints"] = list(ann["keypoints"])
        results.append(res)
    return results


@pytest.fixture
def gt_path(tmp_path):
    return tiny_coco(tmp_path)


def test_perfect_results_score_100_on_shapes(shapes_dir):
    gt = COCO(str(shapes_dir / "val.json"))
    results = perfect_results(gt)
    assert any("keypoints" in r for r in results)
    metrics = evaluate_coco(gt, results, verbose=False)
    for iou_type in ("bbox", "segm", "keypoints"):
        assert metrics[iou_type]["AP"] == pytest.approx(100.0), iou_type
        assert metrics[iou_type]["AP50"] == pytest.approx(100.0), iou_type
    assert set(metrics["keypoints"]) == {"AP", "AP50", "AP75", "APm", "APl"}
    assert all(ap == pytest.approx(100.0) for ap in metrics["per_category"]["bbox"].values())


def test_perfect_results_score_100_and_perturbed_less(gt_path, capsys):
    gt = COCO(str(gt_path))
    metrics = evaluate_coco(gt, perfect_results(gt))
    out = capsys.readouterr().out
    assert "Average Precision" in out and "triangle" in out  # summaries and per-category table
    for t in ("bbox", "segm", "keypoints"):
        assert metrics[t]["AP"] == pytest.approx(100.0)
    assert metrics["per_category"]["bbox"] == pytest.approx({"square": 100.0, "triangle": 100.0})
    assert list(metrics["per_category"]["keypoints"]) == ["triangle"]  # only keypoint categories

    shifted = perfect_results(gt)
    for r in shifted:
        r["bbox"][0] += 4  # 20 px objects: IoU about 0.7
        if "keypoints" in r:
            r["keypoints"][0::3] = [x + 1 for x in r["keypoints"][0::3]]
    shifted[0]["score"] = 0.5
    worse = evaluate_coco(gt, shifted, ("bbox", "keypoints"), verbose=False)
    assert 0 < worse["bbox"]["AP"] < 60
    assert worse["bbox"]["AP50"] == pytest.approx(100.0)
    assert 0 < worse["keypoints"]["AP"] < 100
    assert "segm" not in worse


def test_crowd_detection_is_not_a_false_positive(gt_path):
    gt = COCO(str(gt_path))
    results = perfect_results(gt)
    for r in results:
        r["score"] = 0.5
    results.append({"image_id": 2, "category_id": 1, "score": 0.9, "bbox": [40, 40, 16, 16]})
    metrics = evaluate_coco(gt, results, ("bbox",), verbose=False)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    # the same box away from the crowd region is a false positive ranked above a true one
    results[-1]["bbox"] = [0, 44, 16, 16]
    assert evaluate_coco(gt, results, ("bbox",), verbose=False)["bbox"]["AP"] < 100


def test_predictions_to_coco_results_formats():
    masks = torch.zeros(2, 8, 10)
    masks[0, 2:4, 3:7] = 0.9
    masks[0, 5, 5] = 0.4  # below 0.5: not in the mask
    pred = {"pred_boxes": torch.tensor([[1.0, 2.0, 5.0, 8.0], [0.0, 0.0, 10.0, 8.0]]),
            "scores": torch.tensor([0.9, 0.3]), "pred_classes": torch.tensor([1, 0]),
            "pred_masks": masks,
            "pred_keypoints": torch.tensor([[[1.0, 2.0, 0.5], [3.0, 4.0, 0.7]],
                                            [[0.0, 0.0, 0.1], [1.0, 1.0, 0.2]]])}
    empty = {"pred_boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
             "pred_classes": torch.zeros(0, dtype=torch.int64)}
    res = predictions_to_coco_results([pred, empty], [7, 8], category_ids=[5, 9])
    assert len(res) == 2
    r = res[0]
    assert (r["image_id"], r["category_id"], r["score"]) == (7, 9, pytest.approx(0.9))
    assert r["bbox"] == [1.0, 2.0, 4.0, 6.0]
    # continuous coordinates -> COCO's pixel indices (x - 0.5, y - 0.5); scores untouched
    assert r["keypoints"] == pytest.approx([0.5, 1.5, 0.5, 2.5, 3.5, 0.7])
    assert isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == [8, 10]
    decoded = mask_util.decode({"size": [8, 10], "counts": r["segmentation"]["counts"].encode()})
    assert decoded.sum() == 8 and decoded[2:4, 3:7].all()
    assert res[1]["category_id"] == 5 and mask_util.area(res[1]["segmentation"]) == 0
    json.dumps(res)  # writable as the results JSON


def test_predictions_to_coco_results_bad_label():
    pred = {"pred_boxes": torch.zeros(1, 4), "scores": torch.ones(1), "pred_classes": torch.tensor([2])}
    with pytest.raises(EvaluationError, match="image 4: predicted label 2 is outside 0..1"):
        predictions_to_coco_results([pred], [4], category_ids=[1, 3])


def test_coco_evaluator_accumulates_and_handles_empty(gt_path):
    gt = COCO(str(gt_path))
    ev = CocoEvaluator(gt, category_ids=[1, 3], iou_types=("bbox", "segm"), verbose=False)
    with pytest.warns(UserWarning, match="no detections"):
        zeros = ev.evaluate()
    assert zeros["bbox"]["AP"] == 0.0 and zeros["segm"]["AP75"] == 0.0

    for image_id in (1, 2):
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        boxes[:, 2:] += boxes[:, :2]
        masks = torch.from_numpy(np.stack([gt.annToMask(a) for a in anns])).float()
        labels = torch.tensor([{1: 0, 3: 1}[a["category_id"]] for a in anns])
        ev.process([image_id], [{"pred_boxes": boxes, "scores": torch.ones(len(anns)),
                                 "pred_classes": labels, "pred_masks": masks}])
    assert len(ev.results) == 4
    metrics = ev.evaluate()
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)

    # only the processed images count: image 1 alone is perfect too
    ev.reset()
    ev.process([1], [{"pred_boxes": torch.tensor([[4.0, 4.0, 24.0, 24.0]]), "scores": torch.ones(1),
                      "pred_classes": torch.tensor([0])}])
    assert ev.evaluate()["per_category"]["bbox"]["square"] == pytest.approx(100.0)


def test_skips_types_results_do_not_carry(gt_path, capsys):
    gt = COCO(str(gt_path))
    results = [{k: v for k, v in r.items() if k in ("image_id", "category_id", "score", "bbox")}
               for r in perfect_results(gt)]
    metrics = evaluate_coco(gt, results)
    assert set(metrics) == {"bbox", "per_category"}
    out = capsys.readouterr().out
    assert "segm: skipped" in out and "keypoints: skipped" in out


def test_keypoints_skipped_without_keypoint_categories(gt_path, capsys):
    data = json.loads(gt_path.read_text())
    data["categories"][1].pop("keypoints")
    gt = COCO()
    gt.dataset = data
    gt.createIndex()
    metrics = evaluate_coco(gt, perfect_results(gt), ("bbox", "keypoints"))
    assert "keypoints" not in metrics and metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert "keypoints: skipped, the ground truth has no keypoint categories" in capsys.readouterr().out


def test_uniform_sigmas_used_for_non_person_keypoints(gt_path):
    gt = COCO(str(gt_path))
    results = perfect_results(gt)
    for r in results:
        if "keypoints" in r:
            r["keypoints"][0::3] = [x + 2 for x in r["keypoints"][0::3]]
    default = evaluate_coco(gt, results, ("keypoints",), verbose=False)["keypoints"]["AP"]
    loose = evaluate_coco(gt, results, ("keypoints",), kpt_oks_sigmas=[1.0] * 3,
                          verbose=False)["keypoints"]["AP"]
    assert default < loose == pytest.approx(100.0)
    with pytest.raises(EvaluationError, match="kpt_oks_sigmas has 2 values, the ground truth has 3"):
        evaluate_coco(gt, results, ("keypoints",), kpt_oks_sigmas=[0.1, 0.1], verbose=False)


def test_empty_results_file_warns_no_detections(gt_path, tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("[]")
    with pytest.warns(UserWarning, match=f"results file {path}: no detections"):
        metrics = evaluate_coco(gt_path, path, verbose=False)
    assert metrics["bbox"] == {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert metrics["keypoints"]["AP"] == 0.0
    assert metrics["per_category"]["bbox"] == {"square": 0.0, "triangle": 0.0}


def test_unknown_ids_name_the_id_and_file(gt_path, tmp_path):
    path = tmp_path / "res.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 2, "score": 1.0, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(EvaluationError, match=rf"results file {path}: .*category_id 2, which is not"):
        evaluate_coco(gt_path, path, verbose=False)
    path.write_text(json.dumps([{"image_id": 99, "category_id": 1, "score": 1.0, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(EvaluationError, match=rf"results file {path}: .*image_id 99, which is not"):
        evaluate_coco(gt_path, path, verbose=False)


def test_broken_json_names_the_file(gt_path, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"image_id": 1, ')
    with pytest.raises(EvaluationError, match=rf"results file {path} is not valid JSON"):
        evaluate_coco(gt_path, path, verbose=False)
    with pytest.raises(EvaluationError, match=rf"ground truth file {path} is not valid JSON"):
        evaluate_coco(path, [], verbose=False)
    path.write_text('{"image_id": 1}')
    with pytest.raises(EvaluationError, match="expected a JSON list of detections, got a dict"):
        evaluate_coco(gt_path, path, verbose=False)


def test_missing_field_for_iou_type(gt_path):
    gt = COCO(str(gt_path))
    results = perfect_results(gt)
    del results[1]["segmentation"]
    with pytest.raises(EvaluationError, match=r"image_id 1, category_id 3\) has no 'segmentation', "
                                              r"which segm evaluation needs"):
        evaluate_coco(gt, results, ("segm",), verbose=False)
    results = perfect_results(gt)
    del results[2]["bbox"]
    with pytest.raises(EvaluationError, match="has no 'bbox', which bbox evaluation needs"):
        evaluate_coco(gt, results, ("bbox",), verbose=False)
    results = perfect_results(gt)
    del results[3]["keypoints"]  # a triangle without keypoints
    with pytest.raises(EvaluationError, match="has no 'keypoints', which keypoints evaluation needs"):
        evaluate_coco(gt, results, ("keypoints",), verbose=False)
    results = perfect_results(gt)
    del results[0]["score"]
    with pytest.raises(EvaluationError, match="detection #0 has no 'score'"):
        evaluate_coco(gt, results, verbose=False)
    with pytest.raises(EvaluationError, match="unknown iou type 'mask'"):
        evaluate_coco(gt, results, ("mask",), verbose=False)


def test_polygon_results_are_evaluated_as_rle_at_the_gt_size(gt_path):
    gt = COCO(str(gt_path))
    rle_results = perfect_results(gt)
    polygon_results = [{**r, "segmentation": ann["segmentation"]}  # the ground truth's own polygons
                       for r, ann in zip(rle_results, [a for a in gt.loadAnns(gt.getAnnIds()) if not a["iscrowd"]])]
    by_polygon = evaluate_coco(gt, polygon_results, ("segm",), verbose=False)
    assert by_polygon["segm"] == evaluate_coco(gt, rle_results, ("segm",), verbose=False)["segm"]
    assert by_polygon["segm"]["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("index, field, value, message", [
    (1, "score", float("nan"), r"detection #1 \(image_id 1\) has score nan, expected a finite number$"),
    (2, "bbox", [1, float("nan"), 3, 4], r"detection #2 \(image_id 2\) has bbox \[1, nan, 3, 4\], expected "
                                         r"\[x, y, w, h\] of finite numbers$"),
    (3, "bbox", [1, 2, float("inf"), 4], r"detection #3 \(image_id 2\) has bbox \[1, 2, inf, 4\]"),
    (0, "segmentation", [[1, 2, 3, 4]], r"detection #0 \(image_id 1\) has a polygon that is not an even-length "
                                        r"list of at least 6 finite coordinates: \[1, 2, 3, 4\]$"),
    (0, "segmentation", [], r"detection #0 \(image_id 1\) has an empty segmentation \(no polygon\)$"),
    (0, "segmentation", {"size": [10, 10], "counts": "0"},
     r"detection #0 \(image_id 1\) has an RLE of size \[10, 10\] but the image is \[64, 64\]$"),
])
def test_bad_results_refused_before_any_evaluation(gt_path, tmp_path, capsys, index, field, value, message):
    gt = COCO(str(gt_path))
    results = perfect_results(gt)
    results[index][field] = value
    path = tmp_path / "res.json"
    path.write_text(json.dumps(results))  # NaN/inf are written as the NaN / Infinity tokens Python reads back
    with pytest.raises(EvaluationError, match=rf"^results file {path}: " + message):
        evaluate_coco(gt, path)
    assert "Average Precision" not in capsys.readouterr().out  # no table printed before the error
# ------------------------------------------------------------------ backends


def noisy_results(coco: COCO, seed: int = 0) -> list[dict]:
    """The ground truth as imperfect detections: boxes, masks and keypoints shifted by a pixel or
    two, random scores, one in four dropped, and a false positive per image."""
    rng = np.random.default_rng(seed)
    results = []
    for res in perfect_results(coco):
        if rng.random() < 0.25:
            continue
        img = coco.imgs[res["image_id"]]
        dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
        mask = np.roll(mask_util.decode(res["segmentation"]), (dy, dx), axis=(0, 1))
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode()
        x, y, w, h = res["bbox"]
        res.update(score=float(rng.random()), bbox=[x + dx, y + dy, w * rng.uniform(0.9, 1.1), h], segmentation=rle)
        if "keypoints" in res:
            kp = np.asarray(res["keypoints"], dtype=float).reshape(-1, 3)
            kp[:, :2] += rng.normal(0, 0.5, size=(len(kp), 2))
            res["keypoints"] = kp.reshape(-1).tolist()
        results.append(res)
        fp = np.zeros((img["height"], img["width"]), dtype=np.uint8)
        fp[:10, :10] = 1
        rle = mask_util.encode(np.asfortranarray(fp))
        rle["counts"] = rle["counts"].decode()
        results.append({**res, "score": float(rng.random()), "bbox": [0, 0, 10, 10], "segmentation": rle})
    return results


def test_faster_coco_eval_backend_matches_pycocotools(shapes_dir):
    """The optional C++ backend gives pycocotools' numbers (to 0.01 AP) on the built-in data."""
    pytest.importorskip("faster_coco_eval")
    gt = COCO(str(shapes_dir / "val.json"))
    results = noisy_results(gt)
    types = ("bbox", "segm", "keypoints")
    ref = evaluate_coco(gt, results, types, verbose=False)
    fast = evaluate_coco(gt, results, types, verbose=False, backend="faster_coco_eval")
    assert set(fast) == set(ref) and 10 < ref["bbox"]["AP"] < 90  # imperfect, so the test can tell
    for t in types:
        for name, value in ref[t].items():
            assert fast[t][name] == pytest.approx(value, abs=0.01, nan_ok=True), (t, name)
        for cat, value in ref["per_category"][t].items():
            assert fast["per_category"][t][cat] == pytest.approx(value, abs=0.01, nan_ok=True), (t, cat)


def test_unknown_or_missing_backend_is_one_line(gt_path, monkeypatch):
    import builtins

    with pytest.raises(EvaluationError, match="^coco backend 'detectron' is not one of pycocotools, faster_coco_eval$"):
        CocoEvaluator(gt_path, [1, 3], backend="detectron")
    real_import = builtins.__import__

    def no_faster(name, *args, **kwargs):
        if name.startswith("faster_coco_eval"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faster)
    with pytest.raises(EvaluationError, match=r"^coco backend 'faster_coco_eval' needs the faster-coco-eval "
                       r"package: pip install faster-coco-eval \(or the toolkit's fast-eval extra\)$"):
        evaluate_coco(gt_path, [], backend="faster_coco_eval")
