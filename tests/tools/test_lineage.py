"""tools/lineage.py: the table and JSON on stubbed rows, the data subset, and the commands it runs
(tools stubbed: the real runs are benchmarks, not tests)."""
import json
from pathlib import Path

import pytest

from tool_helpers import load_tool


@pytest.fixture(scope="module")
def lineage():
    return load_tool("lineage")


@pytest.fixture(autouse=True)
def _stubbed_proposal_files(lineage, monkeypatch):
    """The tools are stubbed and write no proposal files, so how well those files cover the objects
    is stubbed too (test_proposal_quality_of_a_file measures a real one)."""
    monkeypatch.setattr(lineage, "proposal_quality", lambda data, path, source, max_proposals=0: {
        "source": source, "path": str(path), "max_proposals": max_proposals, "boxes_per_image": 9.0,
        "recall@0.5": 90.0, "recall@0.7": 70.0, "recall@0.9": 10.0, "MABO": 75.0})
    monkeypatch.setattr(lineage, "proposals_scored", lambda run: 500 if run.name == "rcnn" else 2000)


def stub_rows(lineage):
    R = lineage.Row
    return [R("rcnn", 40.0, 70.0, None, 300.0, 0.5, 8.0, 100, "rcnn_R18.yaml"),
            R("fast_rcnn", 41.5, 71.0, None, 60.0, 0.5, 0.08, 100, "fast_rcnn_R18.yaml"),
            R("faster_rcnn", 43.0, 72.5, None, 50.0, 0.0, 0.1, 100, "shapes_R18_FPN.yaml"),
            R("mask_rcnn", 44.0, 73.0, 39.5, 70.0, 0.0, 0.16, 100, "shapes_R18_FPN.yaml")]


def test_table_splits_test_time_and_shows_the_speed_up(lineage):
    table = lineage.format_table(stub_rows(lineage)).splitlines()
    assert table[0].startswith("| detector | steps | box AP | AP50 | AP75 | AP small | AP medium | mask AP | train s "
                               "| test s/img (proposals + network) | network speed-up | val proposals")
    assert table[2] == "| R-CNN | 100 | 40.0 | 70.0 | - | - | - | - | 300 | 8.500 (0.500 + 8.000) | 1x | - |"
    assert table[3] == "| Fast R-CNN | 100 | 41.5 | 71.0 | - | - | - | - | 60 | 0.580 (0.500 + 0.080) | 100x | - |"
    assert table[4] == "| Faster R-CNN | 100 | 43.0 | 72.5 | - | - | - | - | 50 | 0.100 (RPN in the network) | 80x | - |"
    assert table[5] == "| Mask R-CNN | 100 | 44.0 | 73.0 | - | - | - | 39.5 | 70 | 0.160 (RPN in the network) | 50x | - |"
    # without an R-CNN row there is nothing to compare with
    assert lineage.format_table(stub_rows(lineage)[1:2]).splitlines()[2].endswith("| - | - |")
    row = stub_rows(lineage)[2]
    row.proposals = {"source": "RPN", "boxes_per_image": 100.0, "recall@0.7": 76.5, "recall@0.9": 7.8}
    assert lineage.format_table([row]).splitlines()[2].endswith("| RPN 100, 76.5 / 7.8 |")


def test_json_has_one_row_per_detector_with_the_promised_keys(lineage, tmp_path):
    lineage.write_rows(stub_rows(lineage), tmp_path / "x" / "lineage.json")
    rows = json.loads((tmp_path / "x" / "lineage.json").read_text())
    assert [r["name"] for r in rows] == ["rcnn", "fast_rcnn", "faster_rcnn", "mask_rcnn"]
    for r in rows:
        assert {"name", "box_AP", "box_AP50", "box_AP75", "box_AP_small", "box_AP_medium", "train_s",
                "test_s_per_img", "proposal_s_per_img"} <= set(r)
    assert rows[0]["test_s_per_img"] == 8.5 and rows[3]["mask_AP"] == 39.5 and rows[0]["mask_AP"] is None


def test_row_from_metrics(lineage):
    metrics = {"bbox": {"AP": 12.5, "AP50": 30.0, "AP75": 11.0, "APs": 9.0, "APm": 14.0, "APl": None},
               "segm": {"AP": 10.0}}
    row = lineage.row_from_metrics("mask_rcnn", metrics, 5.0, 0.0, 0.2, 10, "c.yaml")
    assert (row.box_AP, row.box_AP50, row.mask_AP, row.test_s_per_img) == (12.5, 30.0, 10.0, 0.2)
    assert (row.box_AP75, row.box_AP_small, row.box_AP_medium) == (11.0, 9.0, 14.0)
    assert "| 10 | 12.5 | 30.0 | 11.0 | 9.0 | 14.0 | 10.0 |" in lineage.format_table([row])
    assert lineage.row_from_metrics("rcnn", {"bbox": {"AP": None, "AP50": None}}, 5.0, 1.0, 2.0, 1, "").mask_AP is None


def test_main_runs_the_tools_on_a_subset(lineage, shapes_dir, tmp_path, monkeypatch):
    calls = []

    def fake_tool(args, log):
        calls.append(args)
        return 7.0

    def fake_eval(run, data, device, log):
        assert json.loads((data / "val.json").read_text())["images"][0]["id"] == 1
        return {"bbox": {"AP": 1.0, "AP50": 2.0}, **({"segm": {"AP": 0.5}} if "mask" in run.name else {})}, 3.0

    monkeypatch.setattr(lineage, "run_script", fake_tool)
    monkeypatch.setattr(lineage, "evaluate", fake_eval)
    out = tmp_path / "lineage.json"
    assert lineage.main(["--data", str(shapes_dir), "--max-iters", "5", "--eval-images", "3", "--train-images", "4",
                         "--output-dir", str(tmp_path / "o"), "--out", str(out), "--workers", "2"]) == 0
    data = tmp_path / "o" / "data"
    assert len(json.loads((data / "val.json").read_text())["images"]) == 3
    assert len(json.loads((data / "train.json").read_text())["images"]) == 4 and (data / "train").is_dir()
    assert calls[0] == ["tools/compute_proposals.py", "--data", str(data), "--split", "train", "--mode", "fast",
                        "--workers", "2", "--out", str(tmp_path / "o" / "proposals_train.json")]
    assert calls[1][4:10] == ["val", "--mode", "fast", "--workers", "1", "--out"]
    trains = {c[2].split("/")[-1]: c for c in calls if c[0] == "tools/train_det.py"}
    assert set(trains) == {"rcnn_R18.yaml", "fast_rcnn_R18.yaml", "shapes_R18_FPN.yaml"} and len(calls) == 8
    # after each detector with an RPN is trained, its RPN's val proposals
    for c, name in ((calls[5], "faster_rcnn"), (calls[7], "mask_rcnn")):
        assert c[:7] == ["tools/compute_proposals.py", "--data", str(data), "--split", "val", "--checkpoint",
                         str(tmp_path / "o" / "runs" / name / "model_final.pth")]
        assert c[c.index("--out") + 1] == str(tmp_path / "o" / f"proposals_val_{name}.json") and "--overwrite" in c
    for c in calls[2:4]:
        assert f"data.val_proposals={tmp_path / 'o' / 'proposals_val.json'}" in c and c[-2:] == ["--max-iters", "5"]
    assert not any("proposals" in a for a in calls[4])
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["rcnn", "fast_rcnn", "faster_rcnn", "mask_rcnn"]
    # train time less the evaluation; selective search: 7 s over 3 val images
    assert rows[0]["train_s"] == 4.0 and rows[0]["proposal_s_per_img"] == pytest.approx(7 / 3)
    assert rows[0]["test_s_per_img"] == pytest.approx(7 / 3 + 1.0) and rows[2]["proposal_s_per_img"] == 0.0
    assert rows[3]["mask_AP"] == 0.5 and rows[2]["mask_AP"] is None
    # the proposals each detector scored: selective search's, as many as it reads, or its RPN's
    assert [(r["proposals"]["source"], Path(r["proposals"]["path"]).name, r["proposals"]["max_proposals"])
            for r in rows] == [("selective search", "proposals_val.json", 500),
                               ("selective search", "proposals_val.json", 2000),
                               ("RPN", "proposals_val_faster_rcnn.json", 0), ("RPN", "proposals_val_mask_rcnn.json", 0)]


def test_proposal_quality_of_a_file(lineage, shapes_dir, tmp_path, monkeypatch):
    from tool_helpers import load_tool, write_jittered_proposals

    monkeypatch.undo()  # the real one
    quality = load_tool("lineage").proposal_quality
    path = write_jittered_proposals(shapes_dir / "val.json", tmp_path / "p.json", per_gt=2, random_boxes=5)
    every = quality(shapes_dir, path, "selective search")
    assert every["source"] == "selective search" and set(every) == {
        "source", "boxes_per_image", "recall@0.5", "recall@0.7", "recall@0.9", "MABO"}
    assert every["recall@0.5"] >= every["recall@0.7"] >= every["recall@0.9"] and every["recall@0.5"] > 50
    first = quality(shapes_dir, path, "selective search", max_proposals=1)
    assert first["boxes_per_image"] == 1.0 and first["MABO"] < every["MABO"]

    # as many as the detector reads: R-CNN warps at most model.rcnn.proposals_per_image of them
    scored = load_tool("lineage").proposals_scored
    (tmp_path / "rcnn").mkdir()
    (tmp_path / "rcnn" / "config.yaml").write_text(
        "model:\n  meta_architecture: rcnn\n  rcnn:\n    proposals_per_image: 300\ndata:\n  max_proposals: 2000\n")
    (tmp_path / "fast").mkdir()
    (tmp_path / "fast" / "config.yaml").write_text("model:\n  proposal_generator: precomputed\ndata:\n  max_proposals: 1000\n")
    assert (scored(tmp_path / "rcnn"), scored(tmp_path / "fast")) == (300, 1000)


def test_a_failing_tool_stops_the_lineage_with_its_one_line_error(lineage, shapes_dir, tmp_path, capsys,
                                                                  monkeypatch):
    script = ["-c", "import sys; print('note: x'); print('train_det: error: bad data'); sys.exit(2)"]
    monkeypatch.setattr(lineage, "run_script", lambda args, log, run=lineage.run_script: run(script, log))
    out = tmp_path / "o"
    assert lineage.main(["--data", str(shapes_dir), "--output-dir", str(out), "--only", "faster_rcnn"]) == 2
    assert capsys.readouterr().err == (f"lineage: error: -c failed (exit 2): train_det: error: bad data; its log is "
                                       f"{out / 'train_faster_rcnn.log'}\n")


def test_train_min_gives_every_detector_the_same_minutes(lineage, shapes_dir, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_tool(args, log):
        calls.append(args)
        if args[0] == "tools/train_det.py":  # the run's trainer rewrites config.yaml with the steps that fit
            run = Path(args[args.index("--output") + 1])
            folder = run / "finetune" if "rcnn_R18.yaml" in args[2] else run
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text("solver:\n  max_iters: 37\n")
        return 7.0

    monkeypatch.setattr(lineage, "run_script", fake_tool)
    monkeypatch.setattr(lineage, "evaluate", lambda run, data, device, log: ({"bbox": {"AP": 1.0, "AP50": 2.0}}, 3.0))
    out = tmp_path / "lineage.json"
    assert lineage.main(["--data", str(shapes_dir), "--train-min", "2.5", "--eval-images", "3", "--train-images", "4",
                         "--output-dir", str(tmp_path / "o"), "--out", str(out), "--only", "rcnn", "faster_rcnn"]) == 0
    trains = [c for c in calls if c[0] == "tools/train_det.py"]
    for c in trains:
        assert c[-2:] == ["solver.time_budget_min=2.5", f"solver.max_iters={lineage.BUDGET_STEP_CAP}"]
    assert [r["iters"] for r in json.loads(out.read_text())] == [37, 37]

    assert lineage.main(["--data", str(shapes_dir), "--train-min", "2", "--max-iters", "5",
                         "--output-dir", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err == ("lineage: error: --max-iters and --train-min are two ways to size the "
                                       "training: give one\n")
    assert lineage.main(["--data", str(shapes_dir), "--train-min", "0", "--output-dir", str(tmp_path / "q")]) == 2
    assert capsys.readouterr().err == "lineage: error: --train-min 0 must be above 0 minutes\n"


def test_weights_start_every_detector_from_the_same_backbone(lineage, shapes_dir, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(lineage, "run_script", lambda args, log: calls.append(args) or 7.0)
    monkeypatch.setattr(lineage, "evaluate", lambda run, data, device, log: ({"bbox": {"AP": 1.0, "AP50": 2.0}}, 3.0))
    weights = tmp_path / "classifier.pth"
    weights.write_bytes(b"")  # never read: the tools are stubbed
    monkeypatch.chdir(tmp_path)  # a relative path reaches the tools, which run from the project root, resolved
    assert lineage.main(["--data", str(shapes_dir), "--max-iters", "5", "--output-dir", str(tmp_path / "o"),
                         "--out", str(tmp_path / "l.json"), "--weights", "classifier.pth"]) == 0
    trains = [c for c in calls if c[0] == "tools/train_det.py"]
    assert len(trains) == 4
    assert all(f"model.backbone.weights={weights}" in c for c in trains)
    # FrozenBN where a step is 2-4 images; R-CNN's BN trains on its 128 windows per step (its config's BN)
    norms = {c[2]: [a for a in c if a.startswith("model.backbone.norm=")] for c in trains}
    assert norms == {"configs/detection/rcnn_R18.yaml": [],
                     "configs/detection/fast_rcnn_R18.yaml": ["model.backbone.norm=FrozenBN"],
                     "configs/detection/shapes_R18_FPN.yaml": ["model.backbone.norm=FrozenBN"]}

    calls.clear()  # --norm instead of the pretrained default; from scratch each config's norm
    assert lineage.main(["--data", str(shapes_dir), "--max-iters", "5", "--output-dir", str(tmp_path / "bn"),
                         "--out", str(tmp_path / "l.json"), "--weights", "classifier.pth", "--norm", "BN"]) == 0
    assert all("model.backbone.norm=BN" in c for c in calls if c[0] == "tools/train_det.py")
    calls.clear()
    assert lineage.main(["--data", str(shapes_dir), "--max-iters", "5", "--output-dir", str(tmp_path / "s"),
                         "--out", str(tmp_path / "l.json")]) == 0
    assert not any(a.startswith("model.backbone.") for c in calls for a in c)
    capsys.readouterr()
    assert lineage.main(["--data", str(shapes_dir), "--output-dir", str(tmp_path / "f"), "--norm", "FrozenBN"]) == 2
    assert capsys.readouterr().err == ("lineage: error: --norm FrozenBN needs --weights: the frozen statistics of a "
                                       "randomly initialised backbone are the identity; use BN or GN from scratch\n")
    assert not (tmp_path / "f").exists()

    missing = tmp_path / "nope.pth"
    assert lineage.main(["--data", str(shapes_dir), "--output-dir", str(tmp_path / "p"), "--weights", str(missing)]) == 2
    assert capsys.readouterr().err == (f"lineage: error: --weights {missing}: no such file (a torchvision .pth, "
                                       f"tools/train_cls.py's classifier.pth, or 'imagenet')\n")
    assert not (tmp_path / "p").exists()  # refused before any work


def test_size_gives_every_detector_the_same_image_size(lineage, shapes_dir, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(lineage, "run_script", lambda args, log: calls.append(args) or 7.0)
    monkeypatch.setattr(lineage, "evaluate", lambda run, data, device, log: ({"bbox": {"AP": 1.0, "AP50": 2.0}}, 3.0))
    assert lineage.main(["--data", str(shapes_dir), "--max-iters", "5", "--output-dir", str(tmp_path / "o"),
                         "--out", str(tmp_path / "l.json"), "--size", "320"]) == 0
    trains = [c for c in calls if c[0] == "tools/train_det.py"]
    assert len(trains) == 4
    for c in trains:
        assert {"data.min_size=[320]", "data.test_min_size=320", "data.max_size=427"} <= set(c)

    assert lineage.main(["--data", str(shapes_dir), "--output-dir", str(tmp_path / "p"), "--size", "16"]) == 2
    assert capsys.readouterr().err == ("lineage: error: --size 16 is too small: the short side of the images in px, "
                                       "at least 32\n")
    assert not (tmp_path / "p").exists()  # refused before any work


def test_a_run_trained_with_other_settings_is_refused_before_any_work(lineage, shapes_dir, tmp_path, monkeypatch,
                                                                     capsys):
    def fake_tool(args, log):
        if args[0] == "tools/train_det.py":  # a finished run: its final weights in its folder
            (Path(args[args.index("--output") + 1]) / "model_final.pth").write_bytes(b"")
        return 7.0

    monkeypatch.setattr(lineage, "run_script", fake_tool)
    monkeypatch.setattr(lineage, "evaluate", lambda run, data, device, log: ({"bbox": {"AP": 1.0, "AP50": 2.0}}, 3.0))
    common = ["--data", str(shapes_dir), "--max-iters", "5", "--output-dir", str(tmp_path / "o"),
              "--out", str(tmp_path / "l.json"), "--only", "faster_rcnn"]
    assert lineage.main(common) == 0
    record = tmp_path / "o" / "runs" / "faster_rcnn" / "lineage_train.json"
    assert json.loads(record.read_text())["command"][0] == "tools/train_det.py"
    assert lineage.main(common) == 0  # the same command: the run is reused
    before = record.read_text()

    assert lineage.main([*common, "--size", "320"]) == 2
    assert capsys.readouterr().err == (
        f"lineage: error: {tmp_path / 'o' / 'runs' / 'faster_rcnn'} holds a run trained with other settings "
        f"(then: -; now: data.min_size=[320] data.test_min_size=320 data.max_size=427); delete it or choose "
        f"another --output-dir\n")
    assert record.read_text() == before  # nothing retrained or overwritten


def test_set_adds_a_setting_to_one_detectors_command(lineage, shapes_dir, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(lineage, "run_script", lambda args, log: calls.append(args) or 7.0)
    monkeypatch.setattr(lineage, "evaluate", lambda run, data, device, log: ({"bbox": {"AP": 1.0, "AP50": 2.0}}, 3.0))
    band = "model.roi_heads.bg_iou_floor=0.1"
    assert lineage.main(["--data", str(shapes_dir), "--max-iters", "5", "--output-dir", str(tmp_path / "o"),
                         "--out", str(tmp_path / "l.json"), "--only", "fast_rcnn", "faster_rcnn",
                         "--set", f"fast_rcnn:{band}"]) == 0
    trains = {c[2].split("/")[-1]: c for c in calls if c[0] == "tools/train_det.py"}
    assert trains["fast_rcnn_R18.yaml"][-3:] == [band, "--max-iters", "5"]
    assert band not in trains["shapes_R18_FPN.yaml"]
    capsys.readouterr()

    # the FrozenBN choice asks train_det's rule with the setting: 16 images per step keep BN trained
    (tmp_path / "w.pth").write_bytes(b"")  # never read: the tools are stubbed
    calls.clear()
    assert lineage.main(["--data", str(shapes_dir), "--max-iters", "5", "--output-dir", str(tmp_path / "w"),
                         "--out", str(tmp_path / "l.json"), "--only", "fast_rcnn", "--weights", str(tmp_path / "w.pth"),
                         "--set", "fast_rcnn:solver.ims_per_batch=16"]) == 0
    fast = next(c for c in calls if c[0] == "tools/train_det.py")
    assert "solver.ims_per_batch=16" in fast and not any(a.startswith("model.backbone.norm=") for a in fast)
    capsys.readouterr()

    for bad, message in [
            ("fast_rcnn", "--set fast_rcnn: expected DETECTOR:KEY=VALUE with DETECTOR one of rcnn, fast_rcnn, "
                          "faster_rcnn, mask_rcnn"),
            ("mask_rcnn:model.mask_on=false", "--set mask_rcnn:model.mask_on=false: mask_rcnn is not among the "
                                              "detectors this run trains (--only)"),
            ("fast_rcnn:model.roi_heads.bg_iou_flor=0.1", "--set for fast_rcnn: command line: unknown config key "
                                                          "'model.roi_heads.bg_iou_flor'")]:
        assert lineage.main(["--data", str(shapes_dir), "--output-dir", str(tmp_path / "p"), "--only", "fast_rcnn",
                             "--set", bad]) == 2
        assert capsys.readouterr().err.startswith(f"lineage: error: {message}")
    assert not (tmp_path / "p").exists()  # refused before any work
