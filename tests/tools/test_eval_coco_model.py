"""tools/eval_coco.py model mode: a train_det checkpoint evaluated on a val split reproduces the
run's own final evaluation; architecture mismatches and bad paths are one line, exit 2."""
import json
from pathlib import Path

import pytest
import torch

from tool_helpers import ROOT, TINY_DET, load_tool

# 2 iterations of the tiny recipe, batches of 2 at test time
TINY = TINY_DET + ["test.ims_per_batch=2"]


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_model") / "run"
    torch.manual_seed(0)
    assert load_tool("train_det").main(["--data", str(shapes_dir), "--output", str(out), "--max-iters", "2",
                                        *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def tool():
    return load_tool("eval_coco")


def same_results(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)
        assert x["bbox"] == pytest.approx(y["bbox"], abs=1e-3)
        assert x["segmentation"] == y["segmentation"] and x["keypoints"] == pytest.approx(y["keypoints"], abs=1e-3)


def test_checkpoint_reproduces_the_runs_final_evaluation(tool, run, shapes_dir, tmp_path, capsys):
    out, res = tmp_path / "m" / "metrics.json", tmp_path / "r" / "results.json"
    # config and data from the checkpoint (the run recorded --data in its config)
    assert tool.main(["--checkpoint", str(run / "model_final.pth"), "--out", str(out), "--results", str(res),
                      "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"on 6 images of {shapes_dir.resolve() / 'val.json'}" in printed and "Per-category keypoints AP" in printed
    assert json.loads(out.read_text()) == json.loads((run / "metrics.json").read_text())
    same_results(json.loads(res.read_text()), json.loads((run / "results.json").read_text()))


def test_explicit_config_data_and_iou_types(tool, run, shapes_dir, tmp_path):
    out = tmp_path / "metrics.json"
    assert tool.main(["--checkpoint", str(run / "model_final.pth"), "--config", str(run / "config.yaml"),
                      "--data", str(shapes_dir), "--iou-types", "bbox", "segm", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    expected = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm", "per_category"}
    assert metrics["bbox"] == pytest.approx(expected["bbox"]) and metrics["segm"] == pytest.approx(expected["segm"])

    # --gt + --images name the split explicitly
    assert tool.main(["--checkpoint", str(run / "model_final.pth"), "--gt", str(shapes_dir / "val.json"),
                      "--images", str(shapes_dir / "val"), "--iou-types", "bbox", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bbox"] == pytest.approx(expected["bbox"])


def test_checkpoint_without_metadata_reads_classes_from_the_data(tool, run, tmp_path, capsys):
    state = torch.load(run / "model_final.pth", map_location="cpu", weights_only=True)
    del state["metadata"]
    old = tmp_path / "old.pth"
    torch.save(state, old)
    out = tmp_path / "metrics.json"
    assert tool.main(["--checkpoint", str(old), "--iou-types", "bbox", "--out", str(out)]) == 0
    assert f"note: {old} has no dataset metadata" in capsys.readouterr().out
    assert json.loads(out.read_text())["bbox"] == pytest.approx(json.loads((run / "metrics.json").read_text())["bbox"])


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("eval_coco: error: "), err
    return err.strip()[len("eval_coco: error: "):]


def test_checkpoint_of_another_architecture(tool, run, shapes_dir, capsys):
    ckpt = run / "model_final.pth"
    assert tool.main(["--checkpoint", str(ckpt), "model.mask_head.num_convs=0"]) == 2
    err = one_error(capsys)
    assert err.startswith(f"checkpoint {ckpt} does not fit GeneralizedRCNN (another architecture?); ")
    assert "unexpected: roi_heads.mask_head.convs." in err

    assert tool.main(["--checkpoint", str(ckpt), "model.backbone.fpn_channels=64"]) == 2
    err = one_error(capsys)
    assert "with a different shape: backbone.fpn." in err and "vs model (64," in err

    # a whole other recipe: Faster R-CNN R50-C4 without masks
    assert tool.main(["--checkpoint", str(ckpt), "--config", str(ROOT / "configs/detection/mask_rcnn_R50_C4.yaml"),
                      "--data", str(shapes_dir), "model.backbone.freeze_at=0"]) == 2
    assert "missing: " in one_error(capsys)


def test_bad_paths_and_modes(tool, run, shapes_dir, tmp_path, capsys):
    ckpt = run / "model_final.pth"
    assert tool.main(["--checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert one_error(capsys) == f"checkpoint {tmp_path / 'nope.pth'} does not exist"

    cut = tmp_path / "cut.pth"  # a copy that stopped half way
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert tool.main(["--checkpoint", str(cut)]) == 2
    assert one_error(capsys).startswith(f"checkpoint {cut} is corrupt or not a torch file")

    assert tool.main(["--checkpoint", str(ckpt), "--data", str(tmp_path)]) == 2
    assert one_error(capsys).startswith(f"annotation file {tmp_path / 'val.json'} does not exist")

    assert tool.main(["--checkpoint", str(ckpt), "--gt", str(shapes_dir / "val.json")]) == 2
    assert "--gt and --images go together" in one_error(capsys)

    assert tool.main(["--gt", str(shapes_dir / "val.json"), "--config", "x.yaml"]) == 2
    assert one_error(capsys) == "--config only apply with --checkpoint"

    assert tool.main(["--gt", str(shapes_dir / "val.json")]) == 2
    assert "missing --results" in one_error(capsys)

    assert tool.main(["--checkpoint", str(ckpt), "--device", "gpu0"]) == 2
    assert one_error(capsys) == "--device 'gpu0' is not a device; use cpu, cuda or cuda:N"

    assert tool.main(["--checkpoint", str(ckpt), "model.nope=1"]) == 2
    assert "unknown config key 'model.nope'" in one_error(capsys)

    # a val split whose categories are not the ones the model was trained on
    data = json.loads((shapes_dir / "val.json").read_text())
    for cat in data["categories"]:
        cat["id"] += 100
    for ann in data["annotations"]:
        ann["category_id"] += 100
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    assert tool.main(["--checkpoint", str(ckpt), "--gt", str(other), "--images", str(shapes_dir / "val")]) == 2
    assert one_error(capsys) == (f"{other} has category ids [101, 103, 105, 107] but {ckpt} was trained on "
                                 "[1, 3, 5, 7] (circle, square, triangle, star)")


def test_val_split_is_checked_before_the_model_runs(tool, run, shapes_dir, tmp_path, capsys):
    import shutil

    ckpt = run / "model_final.pth"
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    truncated = sorted((data / "val").iterdir())[4]
    truncated.write_bytes(truncated.read_bytes()[:500])
    out = tmp_path / "metrics.json"
    assert tool.main(["--checkpoint", str(ckpt), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"problem: image file {truncated} (image id 5) is truncated or corrupt")
    assert err[1] == (f"eval_coco: error: 1 problem in {data / 'val.json'} (listed above, one per line); fix them or "
                      "set data.skip_bad_images=true to leave those images out")
    assert not out.exists()
    # skipped on request: evaluated on the other 5, the skipped one printed
    assert tool.main(["--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                      "data.skip_bad_images=true"]) == 0
    printed = capsys.readouterr().out
    assert f"  skipped: image file {truncated} (image id 5) is truncated or corrupt" in printed
    assert f"on 5 images of {data / 'val.json'}" in printed

    assert tool.main(["--checkpoint", str(ckpt), "--data", str(data / "val.json")]) == 2
    assert one_error(capsys) == (f"--data {data / 'val.json'} is a file, not a folder; a dataset folder holds "
                                 "val.json and val/ (or give --gt JSON --images DIR)")
def test_diagnostics_beside_metrics_json(tool, run, shapes_dir, tmp_path):
    out = tmp_path / "eval" / "metrics.json"
    assert tool.main(["--checkpoint", str(run / "model_final.pth"), "--device", "cpu", "--out", str(out),
                      "--plot-score-thresh", "0.1"]) == 0
    plots = out.parent / "plots"
    assert {p.name for p in plots.iterdir()} == {"pr_bbox.png", "pr_segm.png", "confusion_matrix.json",
                                                 "confusion_matrix.png", "worst"}
    cm = json.loads((plots / "confusion_matrix.json").read_text())
    assert cm["score_thresh"] == 0.1 and cm["classes"][-1] == "background"
    gt = json.loads((shapes_dir / "val.json").read_text())
    gt_boxes = sum(1 for a in gt["annotations"] if not a["iscrowd"])
    assert sum(sum(row) for row in cm["counts"][:-1]) == gt_boxes  # every gt box is in one row cell
    assert len(list((plots / "worst").glob("*.jpg"))) == 6
