"""R-CNN through the tools: tools/train_det.py runs the four stages, --resume skips finished ones,
tools/eval_coco.py rebuilds the detector from model_final.pth. Proposals: jittered gt boxes plus
random boxes, in tools/compute_proposals.py's file format."""
import json

import pytest
import torch

from tool_helpers import ROOT, load_tool, write_jittered_proposals

CONFIG = str(ROOT / "configs" / "detection" / "rcnn_R18.yaml")
TINY_RCNN = ["--no-progress", "--device", "cpu", "--config", CONFIG,
             "model.rcnn.warp_size=32", "model.rcnn.context_pad=8", "model.rcnn.proposals_per_image=16",
             "model.rcnn.batch_size=32", "model.rcnn.feature_batch=64", "model.rcnn.feature_images=4",
             "model.rcnn.svm_retrain_limit=20", "data.min_size=[64]", "data.test_min_size=64",
             "data.max_size=96", "data.num_workers=0", "solver.ims_per_batch=2", "solver.warmup_iters=1",
             "solver.checkpoint_period=0", "solver.log_period=1", "test.ims_per_batch=2",
             "data.hflip_prob=0.5",  # fine-tuning on flipped images: the proposals flip with them
             "test.num_vis=1"]  # the final evaluation draws a val image with its file's proposals


@pytest.fixture(scope="module")
def proposals(shapes_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("props")
    return [f"data.train_proposals={write_jittered_proposals(shapes_dir / 'train.json', d / 'train.json')}",
            f"data.val_proposals={write_jittered_proposals(shapes_dir / 'val.json', d / 'val.json', seed=1)}"]


@pytest.fixture(scope="module")
def run(shapes_dir, proposals, tmp_path_factory):
    out = tmp_path_factory.mktemp("rcnn") / "run"
    torch.manual_seed(0)
    assert load_tool("train_det").main(["--data", str(shapes_dir), "--output", str(out), "--max-iters", "2",
                                        *TINY_RCNN, *proposals]) == 0
    return out


def test_four_stages_leave_their_artefacts_and_a_whole_detector(run):
    for name in ("finetune/model_final.pth", "finetune/metrics.csv", "features/index.json",
                 "features/shard_00000.pt", "svms.pt", "regressors.pt", "model_final.pth", "metrics.json",
                 "results.json", "vis/000001.jpg"):
        assert (run / name).is_file(), name
    state = torch.load(run / "model_final.pth", weights_only=True)
    assert bool(state["model"]["svm_fitted"]) and bool(state["model"]["reg_fitted"])
    assert state["model"]["svm_weight"].abs().sum() > 0 and state["model"]["feature_scale"] != 1.0
    assert "meta_architecture: rcnn" in state["config_yaml"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox"]["AP"] <= 100.0


def test_resume_skips_finished_stages(run, shapes_dir, proposals, capsys):
    shard = run / "features" / "shard_00000.pt"
    before = (shard.stat().st_mtime_ns, (run / "svms.pt").stat().st_mtime_ns)
    tool = load_tool("train_det")
    args = ["--data", str(shapes_dir), "--output", str(run), "--max-iters", "2", *TINY_RCNN, *proposals]
    assert tool.main(args) == 2
    assert "already holds a train_det run; pass --resume" in capsys.readouterr().err
    assert tool.main(args + ["--resume"]) == 0
    assert "stage 1 (fine-tuning): done" in capsys.readouterr().out
    assert (shard.stat().st_mtime_ns, (run / "svms.pt").stat().st_mtime_ns) == before
    # other SVM settings: the stale artefact is refused, naming it and the setting
    assert tool.main(args + ["--resume", "model.rcnn.svm_C=0.5"]) == 2
    assert "svms.pt was made with svm_C = 0.001 but this run has 0.5" in capsys.readouterr().err


def test_eval_coco_rebuilds_the_detector(run, shapes_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert load_tool("eval_coco").main(["--checkpoint", str(run / "model_final.pth"), "--data", str(shapes_dir),
                                        "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bbox"]["AP"] == json.loads((run / "metrics.json").read_text())["bbox"]["AP"]
    assert load_tool("eval_coco").main(["--checkpoint", str(run / "model_final.pth"), "--data", str(shapes_dir),
                                        "--device", "cpu", "data.val_proposals=''"]) == 2
    assert "data.val_proposals is empty; make the file with tools/compute_proposals.py" in capsys.readouterr().err


def test_rcnn_refuses_missing_proposal_files(shapes_dir, proposals, tmp_path, capsys):
    tool = load_tool("train_det")
    base = ["--data", str(shapes_dir), "--max-iters", "1", *TINY_RCNN]
    assert tool.main(base + ["--output", str(tmp_path / "a"), proposals[0]]) == 2
    assert ("R-CNN (model.meta_architecture: rcnn) reads precomputed proposals but data.val_proposals is empty; "
            "make the file with tools/compute_proposals.py") in capsys.readouterr().err
    missing = tmp_path / "none.json"
    assert tool.main(base + ["--output", str(tmp_path / "b"), proposals[0], f"data.val_proposals={missing}"]) == 2
    assert f"proposal file {missing} does not exist" in capsys.readouterr().err
