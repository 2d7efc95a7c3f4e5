"""tools/predict.py on a checkpoint of a tiny train_det run: drawn images, predictions.json that
agrees with the run's results.json, the score threshold, default val images, bad paths."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tool_helpers import ROOT, load_tool, train_tiny_detector

CLASSES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def ckpt(shapes_dir, tmp_path_factory):
    # one image per test batch so the run's results.json is computed exactly as predict computes
    # (no batch padding)
    return train_tiny_detector(shapes_dir, tmp_path_factory.mktemp("predict") / "run", "test.ims_per_batch=1")


@pytest.fixture(scope="module")
def tool():
    return load_tool("predict")


def predict(tool, ckpt, out, *extra) -> int:
    return tool.main(["--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu", *extra])


def test_folder_predictions_match_the_runs_results(tool, ckpt, shapes_dir, tmp_path):
    out = tmp_path / "vis"
    assert predict(tool, ckpt, out, "--input", str(shapes_dir / "val"), "--score-thresh", "0") == 0
    listing = json.loads((out / "predictions.json").read_text())
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    assert [item["drawn"] for item in listing] == names
    assert sorted(p.name for p in out.glob("*.jpg")) == names

    # with threshold 0 every detection is listed: the run's final evaluation saw the same ones
    results = json.loads((ckpt.parent / "results.json").read_text())
    cat_ids = [1, 3, 5, 7]
    for image_id, item in enumerate(listing, start=1):
        expected = [r for r in results if r["image_id"] == image_id]
        assert len(item["instances"]) == len(expected) > 0
        for inst, r in zip(item["instances"], expected):
            x, y, w, h = r["bbox"]
            assert inst["box"] == pytest.approx([x, y, x + w, y + h], abs=0.01)
            assert inst["score"] == pytest.approx(r["score"], abs=1e-4)
            assert inst["class"] == CLASSES[inst["label"]] and cat_ids[inst["label"]] == r["category_id"]
        image = cv2.imread(str(shapes_dir / "val" / names[image_id - 1]))
        assert (item["height"], item["width"]) == image.shape[:2]
        assert cv2.imread(str(out / names[image_id - 1])).shape == image.shape


def test_score_threshold_decides_what_is_drawn(tool, ckpt, shapes_dir, tmp_path):
    source = shapes_dir / "val" / "000002.jpg"
    original = cv2.imread(str(source)).astype(np.int16)
    assert predict(tool, ckpt, tmp_path / "none", "--input", str(source), "--score-thresh", "1") == 0
    assert predict(tool, ckpt, tmp_path / "all", "--input", str(source), "--score-thresh", "0") == 0
    none = json.loads((tmp_path / "none" / "predictions.json").read_text())
    everything = json.loads((tmp_path / "all" / "predictions.json").read_text())
    assert len(none) == len(everything) == 1 and none[0]["instances"] == [] and everything[0]["instances"]
    # nothing drawn: the image comes back as it was (up to JPEG re-encoding); drawn: clearly changed
    blank = cv2.imread(str(tmp_path / "none" / "000002.jpg")).astype(np.int16)
    drawn = cv2.imread(str(tmp_path / "all" / "000002.jpg")).astype(np.int16)
    reencoding = np.abs(blank - original).mean()
    assert reencoding < 4.0
    assert np.abs(drawn - blank).mean() > 3 * reencoding


def test_without_input_draws_the_configs_val_images(tool, ckpt, tmp_path, capsys):
    assert predict(tool, ckpt, tmp_path / "vis", "--score-thresh", "0.3") == 0
    assert len(list((tmp_path / "vis").glob("*.jpg"))) == 6  # the run recorded --data in its config
    listing = json.loads((tmp_path / "vis" / "predictions.json").read_text())
    assert all(inst["score"] >= 0.3 and inst["class"] in CLASSES for item in listing for inst in item["instances"])
    drawn = sum(len(item["instances"]) for item in listing)
    assert f"drew {drawn} predictions (score >= 0.3) on 6 images in {tmp_path / 'vis'}" in capsys.readouterr().out


def test_unreadable_image_in_a_folder_is_skipped_with_one_warning(tool, ckpt, shapes_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((shapes_dir / "val" / "000001.jpg").read_bytes())  # a JPEG named .png: fine
    (folder / "b.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    assert predict(tool, ckpt, tmp_path / "vis", "--input", str(folder)) == 0
    err = capsys.readouterr().err
    assert err == (f"predict: warning: skipped 1 of 2 images that could not be read; first: image file "
                   f"{folder / 'b.jpg'} (image id b.jpg) could not be read as an image\n")
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["a.jpg", "predictions.json", "results.json"]


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("predict: error: "), err
    return err.strip()[len("predict: error: "):]


def test_bad_paths_are_one_line_exit_2(tool, ckpt, tmp_path, capsys):
    assert predict(tool, ckpt, tmp_path / "o", "--input", str(tmp_path / "missing.jpg")) == 2
    assert one_error(capsys) == f"input {tmp_path / 'missing.jpg'} does not exist"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict(tool, ckpt, tmp_path / "o", "--input", str(empty)) == 2
    assert one_error(capsys).startswith(f"input folder {empty} holds no images")

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    assert predict(tool, ckpt, tmp_path / "o", "--input", str(broken)) == 2
    assert one_error(capsys) == f"image file {broken} (image id broken.jpg) could not be read as an image"

    assert predict(tool, tmp_path / "none.pth", tmp_path / "o", "--input", str(broken)) == 2
    assert one_error(capsys) == f"checkpoint {tmp_path / 'none.pth'} does not exist"

    assert predict(tool, ckpt, tmp_path / "o", "--score-thresh", "1.5") == 2
    assert one_error(capsys) == "--score-thresh must be in [0, 1], got 1.5"

    assert predict(tool, ckpt, tmp_path / "o", "model.box_head.fc_dim=32") == 2
    assert "does not fit GeneralizedRCNN (another architecture?)" in one_error(capsys)


def test_glob_batches_and_coco_results(tool, ckpt, shapes_dir, tmp_path):
    one = tmp_path / "one"
    assert predict(tool, ckpt, one, "--input", str(shapes_dir / "val" / "00000[1-4].jpg"), "--score-thresh", "0") == 0
    batched = tmp_path / "batched"
    assert predict(tool, ckpt, batched, "--input", str(shapes_dir / "val" / "00000[1-4].jpg"), "--score-thresh", "0",
                   "--batch-size", "3") == 0
    listing = json.loads((one / "predictions.json").read_text())
    assert [Path(item["file"]).name for item in listing] == [f"00000{i}.jpg" for i in range(1, 5)]
    results = json.loads((one / "results.json").read_text())
    # COCO results: one per detection, xywh boxes, category ids of the dataset, RLE masks, keypoints
    assert len(results) == sum(len(item["instances"]) for item in listing) > 0
    for item in listing:
        mine = [r for r in results if r["image_id"] == item["image_id"]]
        for inst, r in zip(item["instances"], mine):
            x, y, w, h = r["bbox"]
            assert inst["box"] == pytest.approx([x, y, x + w, y + h], abs=0.01)
            assert r["category_id"] == [1, 3, 5, 7][inst["label"]] and "counts" in r["segmentation"]
            assert len(r["keypoints"]) == 5 * 3  # the star has 5 keypoints
    # batches of 3 pad images together: the same detections up to padding effects on the features
    other = json.loads((batched / "results.json").read_text())
    assert len(other) == len(results)
    assert max(abs(a["score"] - b["score"]) for a, b in zip(results, other)) < 0.05


def test_video_in_drawn_video_out(tool, ckpt, shapes_dir, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 7.0, (96, 72))
    for i in (1, 3, 1, 3, 1):
        writer.write(cv2.imread(str(shapes_dir / "val" / f"00000{i}.jpg")))  # 72 x 96 frames
    writer.release()
    assert predict(tool, ckpt, tmp_path / "vis", "--input", str(video), "--score-thresh", "0",
                   "--batch-size", "2") == 0
    cap = cv2.VideoCapture(str(tmp_path / "vis" / "clip.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 5 and frames[0].shape == (72, 96, 3)
    source = cv2.imread(str(shapes_dir / "val" / "000001.jpg")).astype(np.int16)
    assert np.abs(frames[0].astype(np.int16) - source).mean() > 3.0  # predictions drawn on it


def test_tiles_on_a_large_canvas(tool, ckpt, shapes_dir, tmp_path):
    canvas = np.zeros((400, 600, 3), np.uint8)
    for i in range(6):
        image = cv2.imread(str(shapes_dir / "val" / f"00000{i + 1}.jpg"))
        h, w = image.shape[:2]
        canvas[20 + 190 * (i // 3):20 + 190 * (i // 3) + h, 20 + 190 * (i % 3):20 + 190 * (i % 3) + w] = image
    cv2.imwrite(str(tmp_path / "canvas.png"), canvas)
    assert predict(tool, ckpt, tmp_path / "vis", "--input", str(tmp_path / "canvas.png"), "--score-thresh", "0",
                   "--tile", "128", "--overlap", "48", "--batch-size", "4") == 0
    results = json.loads((tmp_path / "vis" / "results.json").read_text())
    assert results and all(r["image_id"] == 1 for r in results)
    boxes = np.array([r["bbox"] for r in results])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 600.01).all()
    assert (boxes[:, 1] + boxes[:, 3] <= 400.01).all()
    assert boxes[:, 0].max() > 300 and boxes[:, 1].max() > 200  # tiles beyond the first one contribute

    assert predict(tool, ckpt, tmp_path / "o", "--input", str(tmp_path / "canvas.png"), "--tile", "64",
                   "--overlap", "64") == 2


def test_segmentation_checkpoint_draws_label_maps(tool, shapes_dir, tmp_path):
    run = tmp_path / "seg"
    torch.manual_seed(0)
    assert load_tool("train_seg").main([
        "--data", str(shapes_dir), "--output", str(run), "--max-iters", "2", "--device", "cpu",
        "model.unet_width=4", "model.unet_depth=2", "data.crop_size=48", "solver.ims_per_batch=2",
        "solver.warmup_iters=1", "solver.eval_period=0", "data.num_vis=0"]) == 0
    out = tmp_path / "vis"
    assert tool.main(["--checkpoint", str(run / "model_final.pth"), "--input", str(shapes_dir / "val"),
                      "--out", str(out), "--device", "cpu"]) == 0
    listing = json.loads((out / "predictions.json").read_text())
    assert len(listing) == 6 and not (out / "results.json").exists()
    for item in listing:
        assert sum(c["pixels"] for c in item["instances"]) == item["height"] * item["width"]
        drawn = cv2.imread(str(out / item["drawn"]))
        assert drawn.shape[0] == item["height"] and drawn.shape[1] > item["width"]  # the legend panel


def rcnn_checkpoint(path: Path, shapes_dir: Path, *, fitted: bool) -> Path:
    """An R-CNN checkpoint as tools/train_det.py stores it (model_final.pth: the fine-tuned backbone,
    the SVMs and box regressors as buffers, the config, the class names), with hand-set SVMs
    and regressors: every window is a circle (score sigmoid(4)), moved right by 10% of its width.
    ``fitted=False``: a fine-tuning checkpoint (softmax scores, boxes not moved)."""
    from common.config import load_config, to_yaml
    from common.engine.checkpoint import save_checkpoint
    from detection.build import build_model
    from detection.config import DetConfig
    from detection.data import load_coco_json, meta_from_coco

    cfg = load_config(DetConfig, str(ROOT / "configs" / "detection" / "rcnn_R18.yaml"),
                      ["model.rcnn.warp_size=32", "model.rcnn.context_pad=8", "model.rcnn.proposals_per_image=40",
                       "model.rcnn.feature_batch=64", "data.test_min_size=64", "data.max_size=96"])
    meta = meta_from_coco(load_coco_json(shapes_dir / "val.json"), "val.json")
    torch.manual_seed(0)
    model = build_model(cfg.model, meta.num_classes)
    if fitted:
        model.svm_weight.zero_()
        model.svm_bias.copy_(torch.tensor([4.0, -10.0, -10.0, -10.0]))
        model.reg_bias[0, 0] = 0.1  # t_x: 10% of the width
        model.svm_fitted.fill_(True)
        model.reg_fitted.fill_(True)
    save_checkpoint(path, {"model": model.state_dict(), "config_yaml": to_yaml(cfg),
                           "metadata": {"dataset": json.loads(json.dumps(meta.to_dict()))}})
    return path


def test_rcnn_run_draws_its_detections_on_selective_search_proposals(tool, shapes_dir, tmp_path, capsys):
    from detection.selective_search import selective_search

    ckpt = rcnn_checkpoint(tmp_path / "model_final.pth", shapes_dir, fitted=True)
    source = shapes_dir / "val" / "000003.jpg"
    assert predict(tool, ckpt, tmp_path / "vis", "--input", str(source)) == 0
    assert "note:" not in capsys.readouterr().out
    item = json.loads((tmp_path / "vis" / "predictions.json").read_text())[0]
    assert (tmp_path / "vis" / "000003.jpg").is_file() and len(item["instances"]) > 0
    # every drawn box is one of the image's own selective-search boxes (the best 40, as
    # model.rcnn.proposals_per_image reads), moved by the class-0 regressor, in pixels on disk
    image = cv2.cvtColor(cv2.imread(str(source)), cv2.COLOR_BGR2RGB)
    boxes, _ = selective_search(image, "fast", max_proposals=40)
    moved = boxes + 0.1 * (boxes[:, 2:3] - boxes[:, 0:1]) * np.array([1, 0, 1, 0], np.float32)
    moved[:, 2] = moved[:, 2].clip(max=image.shape[1])
    for inst in item["instances"]:
        assert inst["class"] == "circle" and inst["score"] == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(),
                                                                            abs=1e-4)
        assert np.abs(moved - np.array(inst["box"], np.float32)).max(axis=1).min() < 0.05, inst["box"]
    results = json.loads((tmp_path / "vis" / "results.json").read_text())
    assert len(results) >= len(item["instances"]) and {r["category_id"] for r in results} == {1}


def test_rcnn_fine_tuning_checkpoint_gets_a_note_and_tiles_are_refused(tool, shapes_dir, tmp_path, capsys):
    from detection.selective_search import selective_search

    ckpt = rcnn_checkpoint(tmp_path / "model_final.pth", shapes_dir, fitted=False)
    source = shapes_dir / "val" / "000003.jpg"
    assert predict(tool, ckpt, tmp_path / "vis", "--input", str(source), "--score-thresh", "0") == 0
    assert "is R-CNN before its SVMs and box regressors were fitted" in capsys.readouterr().out
    item = json.loads((tmp_path / "vis" / "predictions.json").read_text())[0]
    boxes, _ = selective_search(cv2.cvtColor(cv2.imread(str(source)), cv2.COLOR_BGR2RGB), "fast", max_proposals=40)
    assert len(item["instances"]) > 0
    for inst in item["instances"]:  # softmax scores, proposals as they are
        assert np.abs(boxes - np.array(inst["box"], np.float32)).max(axis=1).min() < 0.05, inst["box"]
    assert predict(tool, ckpt, tmp_path / "o", "--input", str(source), "--tile", "48") == 2
    assert one_error(capsys) == (f"--tile 48: {ckpt} is a detector without a proposal network (R-CNN or Fast "
                                 "R-CNN); it runs selective search on whole images, leave --tile out")
    with pytest.raises(SystemExit):
        tool.parse_args(["--help"])
    assert "predict runs selective search on each image" in capsys.readouterr().out.replace("\n", " ")
