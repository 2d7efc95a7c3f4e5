"""tools/eval_coco.py: metrics.json from a results file, one-line errors with exit status 2."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

import tool_helpers

ROOT = tool_helpers.ROOT
TOOL = ROOT / "tools" / "eval_coco.py"


def load_tool():
    return tool_helpers.load_tool("eval_coco")


def write_perfect_results(gt_json: Path, out: Path, shift: float = 0.0) -> Path:
    """The ground truth as a results file (score 1, RLE masks, keypoints, no crowds)."""
    coco = COCO(str(gt_json))
    results = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        if ann["iscrowd"]:
            continue
        rle = mask_util.encode(np.asfortranarray(coco.annToMask(ann)))
        rle["counts"] = rle["counts"].decode()
        x, y, w, h = ann["bbox"]
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
                        "bbox": [x + shift, y, w, h], "segmentation": rle,
                        "keypoints": ann["keypoints"]})
    out.write_text(json.dumps(results))
    return out


def test_writes_metrics_json(shapes_dir, tmp_path, capsys):
    results = write_perfect_results(shapes_dir / "val.json", tmp_path / "results.json")
    out = tmp_path / "sub" / "metrics.json"
    rc = load_tool().main(["--gt", str(shapes_dir / "val.json"), "--results", str(results),
                           "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Average Precision" in printed and "Per-category segm AP" in printed and "star" in printed
    metrics = json.loads(out.read_text())
    assert {"bbox", "segm", "keypoints"} <= set(metrics)
    for t in ("bbox", "segm", "keypoints"):
        assert metrics[t]["AP"] == pytest.approx(100.0)
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["per_category"]["keypoints"] == {"star": pytest.approx(100.0)}


def test_selected_iou_types_and_worse_results(shapes_dir, tmp_path):
    results = write_perfect_results(shapes_dir / "val.json", tmp_path / "r.json", shift=3.0)
    out = tmp_path / "m.json"
    assert load_tool().main(["--gt", str(shapes_dir / "val.json"), "--results", str(results),
                             "--iou-types", "bbox", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"bbox", "per_category"}
    assert 0 < metrics["bbox"]["AP"] < 100


def test_cli_errors_are_one_line_exit_2(shapes_dir, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    proc = subprocess.run([sys.executable, str(TOOL), "--gt", str(shapes_dir / "val.json"),
                           "--results", str(broken)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"eval_coco: error: results file {broken} is not valid JSON")
    assert "Traceback" not in proc.stderr


def test_unknown_category_and_missing_file(shapes_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [0, 0, 4, 4]}]))
    tool = load_tool()
    assert tool.main(["--gt", str(shapes_dir / "val.json"), "--results", str(bad)]) == 2
    assert f"results file {bad}: detection #0 (image_id 1) has category_id 2" in capsys.readouterr().err
    assert tool.main(["--gt", str(tmp_path / "nope.json"), "--results", str(bad)]) == 2
    assert f"ground truth file {tmp_path / 'nope.json'} does not exist" in capsys.readouterr().err


def test_empty_results_warn_one_line(shapes_dir, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    out = tmp_path / "m.json"
    assert load_tool().main(["--gt", str(shapes_dir / "val.json"), "--results", str(empty),
                             "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err == f"eval_coco: warning: results file {empty}: no detections; every metric is 0\n"
    assert json.loads(out.read_text())["segm"]["AP"] == 0.0


def test_polygon_results_give_every_table_and_the_out_file(shapes_dir, tmp_path, capsys):
    results = json.loads(write_perfect_results(shapes_dir / "val.json", tmp_path / "r.json").read_text())
    gt = COCO(str(shapes_dir / "val.json"))
    polygons = [a["segmentation"] for a in gt.loadAnns(gt.getAnnIds()) if not a["iscrowd"]]
    assert sum(isinstance(p, list) for p in polygons) >= 5  # the ground truth's polygons, as results
    for r, p in zip(results, polygons):
        if isinstance(p, list):
            r["segmentation"] = p
    path = tmp_path / "polygons.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    assert load_tool().main(["--gt", str(shapes_dir / "val.json"), "--results", str(path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["segm"]["AP"] > 90


def test_nan_score_is_one_line_naming_the_detection(shapes_dir, tmp_path, capsys):
    results = json.loads(write_perfect_results(shapes_dir / "val.json", tmp_path / "r.json").read_text())
    results[4]["score"] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    assert load_tool().main(["--gt", str(shapes_dir / "val.json"), "--results", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"eval_coco: error: results file {path}: detection #4 (image_id {results[4]['image_id']}) has "
                   f"score nan, expected a finite number\n")
    assert not out.exists()


def test_results_file_mode_writes_plots(shapes_dir, tmp_path):
    results = write_perfect_results(shapes_dir / "val.json", tmp_path / "results.json")
    out = tmp_path / "metrics.json"
    assert load_tool().main(["--gt", str(shapes_dir / "val.json"), "--results", str(results),
                             "--out", str(out)]) == 0
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert names == {"pr_bbox.png", "pr_segm.png", "confusion_matrix.json", "confusion_matrix.png"}  # no images: no worst/
    cm = json.loads((tmp_path / "plots" / "confusion_matrix.json").read_text())["counts"]
    assert sum(cm[i][i] for i in range(len(cm) - 1)) == sum(map(sum, cm))  # perfect: all on the diagonal


def test_coco_backend_flag_gives_the_same_metrics(shapes_dir, tmp_path):
    pytest.importorskip("faster_coco_eval")
    results = write_perfect_results(shapes_dir / "val.json", tmp_path / "results.json", shift=1.5)
    outs = []
    for backend in ("pycocotools", "faster_coco_eval"):
        out = tmp_path / f"{backend}.json"
        assert load_tool().main(["--gt", str(shapes_dir / "val.json"), "--results", str(results),
                                 "--coco-backend", backend, "--out", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["bbox"]["AP"] < 100
    for t in ("bbox", "segm", "keypoints"):
        for name, value in outs[0][t].items():
            assert outs[1][t][name] == pytest.approx(value, abs=0.01), (t, name)


def test_backend_benchmark_runs_and_both_backends_agree(capsys):
    pytest.importorskip("faster_coco_eval")
    bench = tool_helpers.load_tool("bench_coco_eval")
    assert bench.main(["--images", "6", "--dets", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("6 images,") and "30 detections" in lines[0]
    for line in lines[2:]:
        ours, theirs = line.split()[-3], line.split()[-1]
        assert ours == theirs  # the same AP to 0.01
