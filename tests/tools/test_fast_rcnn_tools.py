"""Fast R-CNN through tools/train_det.py and tools/eval_coco.py, with proposals from a file:
a tiny train run, its evaluation, the same checkpoint with truncated SVD, and a stale file refused."""
import json
import os

import numpy as np
import torch

from detection.proposals import make_header, save_proposals
from tool_helpers import ROOT, TINY_DET, load_tool

CONFIG = str(ROOT / "configs" / "detection" / "fast_rcnn_R18.yaml")


def write_proposals(data, split, out, seed=0):
    """Jittered gt boxes and random boxes per image, as a proposal file with a header."""
    rng = np.random.default_rng(seed)
    coco = json.loads((data / f"{split}.json").read_text())
    result = {}
    for im in coco["images"]:
        w, h = im["width"], im["height"]
        gt = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                       for a in coco["annotations"] if a["image_id"] == im["id"]]).reshape(-1, 4)
        jitter = np.repeat(gt, 5, axis=0) + rng.normal(0, 3, (len(gt) * 5, 4))
        xy = rng.uniform(0, [w, h], (40, 2))
        rand = np.concatenate((xy, xy + rng.uniform(4, 40, (40, 2))), axis=1)
        boxes = np.clip(np.concatenate((jitter, rand)), 0, [w, h, w, h])
        boxes = boxes[(boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)]
        result[im["id"]] = {"boxes": boxes}
    images = {im["id"]: data / split / im["file_name"] for im in coco["images"]}
    save_proposals(out, result, make_header("fast", images))
    return out


def test_fast_rcnn_trains_and_evaluates_with_proposals_from_files(shapes_dir, tmp_path, capsys):
    train_p = write_proposals(shapes_dir, "train", tmp_path / "train.json")
    val_p = write_proposals(shapes_dir, "val", tmp_path / "val.json", seed=1)
    run = tmp_path / "run"
    torch.manual_seed(0)
    args = ["--config", CONFIG, "--data", str(shapes_dir), *TINY_DET, f"data.train_proposals={train_p}",
            f"data.val_proposals={val_p}"]
    assert load_tool("train_det").main(["--output", str(run), "--max-iters", "2", *args]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "segm" not in metrics and 0.0 <= metrics["bbox"]["AP"] <= 100.0
    ckpt = torch.load(run / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("proposal_generator") for k in ckpt)  # no RPN
    capsys.readouterr()

    eval_coco = load_tool("eval_coco")
    out = tmp_path / "m.json"
    assert eval_coco.main(["--checkpoint", str(run / "model_final.pth"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bbox"]["AP"] == metrics["bbox"]["AP"]  # the run's own evaluation
    assert eval_coco.main(["--checkpoint", str(run / "model_final.pth"), "--out", str(out),
                           "model.box_head.svd_rank=16"]) == 0
    assert "truncated SVD (rank 16) of the box head's fcs.0, fcs.2" in capsys.readouterr().out
    assert 0.0 <= json.loads(out.read_text())["bbox"]["AP"] <= 100.0

    vis = tmp_path / "vis"  # predict.py runs selective search itself for a Fast R-CNN checkpoint
    assert load_tool("predict").main(["--checkpoint", str(run / "model_final.pth"), "--input",
                                      str(shapes_dir / "val" / "000001.jpg"), "--out", str(vis)]) == 0
    assert (vis / "000001.jpg").is_file() and json.loads((vis / "predictions.json").read_text())[0]["width"] > 0

    image = shapes_dir / "val" / "000001.jpg"
    before = os.stat(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # changed since the proposals were made
    try:
        assert eval_coco.main(["--checkpoint", str(run / "model_final.pth")]) == 2
    finally:
        os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert f"proposal file {val_p} was made from other files: image id 1 was 000001.jpg" in capsys.readouterr().err
