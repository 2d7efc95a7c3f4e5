"""The RPN of a trained Faster R-CNN as a proposal source (tools/compute_proposals.py --checkpoint),
and a Faster R-CNN's box head on proposals read from a file: the Faster R-CNN paper's swaps."""
import json
from collections import Counter

import cv2
import numpy as np
import pytest
import tool_helpers

from detection.build import build_detector, read_checkpoint
from detection.data import build_transforms
from detection.predictor import prepare_batch
from detection.proposals import load_proposals, read_header


@pytest.fixture(scope="module")
def faster(shapes_dir, tmp_path_factory):
    return tool_helpers.train_tiny_detector(shapes_dir, tmp_path_factory.mktemp("rpn") / "run")


def test_rpn_proposals_are_the_detectors_own_in_image_pixels(faster, shapes_dir, tmp_path, capsys):
    tool = tool_helpers.load_tool("compute_proposals")
    out = tmp_path / "rpn_val.json"
    size = ["data.test_min_size=128", "data.max_size=171"]  # the RPN sees 128-px images of the 96-px files
    args = ["--data", str(shapes_dir), "--split", "val", "--limit", "3", "--checkpoint", str(faster),
            "--out", str(out), "--no-progress", *size]
    assert tool.main(args) == 0
    text = capsys.readouterr().out
    assert "RPN of" in text and "short side of 128 px" in text and "recall@0.9" in text
    header = read_header(out)
    assert header["method"] == "rpn" and header["checkpoint"] == str(faster.resolve()) and header["overrides"] == size
    proposals = load_proposals(out)

    state, cfg, meta = read_checkpoint(faster, None, size)
    model, cfg = build_detector(state, cfg, meta, faster)
    transforms = build_transforms(meta, train=False, min_size=cfg.data.test_min_size, max_size=cfg.data.max_size)
    val = json.loads((shapes_dir / "val.json").read_text())
    first = min(val["images"], key=lambda im: im["id"])
    image = cv2.cvtColor(cv2.imread(str(shapes_dir / "val" / first["file_name"])), cv2.COLOR_BGR2RGB)
    own = model.propose(prepare_batch(model, [image], transforms))[0]
    scale = image.shape[0] / 128
    # (to within float rounding of two processes' convolutions; a wrong frame is off by a quarter)
    np.testing.assert_allclose(proposals[first["id"]]["boxes"], own["proposal_boxes"].numpy() * scale, atol=0.5)
    scores = proposals[first["id"]]["scores"]
    assert len(scores) == len(own["proposal_boxes"]) and (np.diff(scores) <= 1e-6).all()  # best first

    assert tool.main(args) == 0  # same checkpoint and settings: reused
    assert "reusing it" in capsys.readouterr().out
    assert tool.main(args[:-1]) == 2  # other settings of the RPN: refused
    assert "was made with overrides=" in capsys.readouterr().err
    assert tool.main(args[:6] + ["--out", str(out), "--no-progress"]) == 2  # selective search into it: refused
    assert "was made in mode 'rpn', not 'fast'" in capsys.readouterr().err


def test_a_detector_without_an_rpn_and_stray_settings_are_one_line(faster, shapes_dir, tmp_path, capsys):
    tool = tool_helpers.load_tool("compute_proposals")
    base = ["--data", str(shapes_dir), "--split", "val", "--limit", "1", "--out", str(tmp_path / "p.json")]
    assert tool.main(base + ["--checkpoint", str(faster), "model.proposal_generator=precomputed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compute_proposals: error: checkpoint") and "without an RPN" in err
    assert err.count("\n") == 1
    assert tool.main(base + ["model.rpn.post_nms_topk_test=300"]) == 2
    assert "give --checkpoint" in capsys.readouterr().err
    missing = tmp_path / "nope.pth"
    assert tool.main(base + ["--checkpoint", str(missing)]) == 2
    assert capsys.readouterr().err == f"compute_proposals: error: checkpoint {missing} does not exist\n"
    assert not (tmp_path / "p.json").exists()


def test_faster_rcnn_head_on_proposals_from_a_file(faster, shapes_dir, tmp_path, capsys):
    """model.proposal_generator=precomputed leaves the checkpoint's RPN out and scores the file's
    boxes: one proposal per image gives at most one detection per class."""
    val = json.loads((shapes_dir / "val.json").read_text())
    single = {str(im["id"]): {"boxes": [[10.0, 10.0, 60.0, 60.0]], "scores": [1.0]} for im in val["images"]}
    file = tmp_path / "one_box.json"
    file.write_text(json.dumps(single))
    results = tmp_path / "results.json"
    assert tool_helpers.load_tool("eval_coco").main(
        ["--checkpoint", str(faster), "--data", str(shapes_dir), "--results", str(results),
         "model.proposal_generator=precomputed", f"data.val_proposals={file}", "model.roi_heads.score_thresh=0.0"]) == 0
    assert "the RPN of" in capsys.readouterr().out
    per_image = Counter(d["image_id"] for d in json.loads(results.read_text()))
    categories = len(val["categories"])
    assert per_image and max(per_image.values()) <= categories
