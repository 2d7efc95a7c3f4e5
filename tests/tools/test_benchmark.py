"""tools/benchmark.py: the torchvision adapter, the comparison table, a split CPU run, one-line errors."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

import tool_helpers

ROOT = tool_helpers.ROOT
TOOL = ROOT / "tools" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
    return tool_helpers.load_tool("benchmark")


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------ adapter


def test_targets_and_predictions_convert_labels_and_masks(bench):
    masks = torch.zeros(2, 8, 10, dtype=torch.uint8)
    masks[1, 2:4, 3:5] = 1
    ours = [{"gt_boxes": torch.tensor([[0.0, 0, 4, 4], [3, 2, 5, 4]]), "gt_classes": torch.tensor([0, 2]),
             "gt_masks": masks, "image_id": 7}]
    (tv,) = bench.to_torchvision_targets(ours)
    assert tv["labels"].tolist() == [1, 3]  # torchvision's 0 is background
    assert torch.equal(tv["boxes"], ours[0]["gt_boxes"]) and tv["masks"] is masks
    assert set(tv) == {"boxes", "labels", "masks"}

    probs = torch.rand(2, 1, 8, 10)
    pred = bench.from_torchvision_prediction({"boxes": torch.ones(2, 4), "scores": torch.tensor([0.9, 0.2]),
                                              "labels": torch.tensor([1, 3]), "masks": probs})
    assert pred["pred_classes"].tolist() == [0, 2]
    assert pred["pred_masks"].shape == (2, 8, 10) and torch.equal(pred["pred_masks"], probs[:, 0])
    assert pred["scores"].tolist() == pytest.approx([0.9, 0.2])


def test_wrapped_torchvision_model_crops_padding_and_renames_losses(bench):
    from common.image_list import ImageList

    seen = {}

    class Fake(torch.nn.Module):
        def forward(self, images, targets=None):
            seen["shapes"] = [tuple(im.shape) for im in images]
            if targets is not None:
                seen["labels"] = [t["labels"].tolist() for t in targets]
                return {"loss_objectness": torch.tensor(1.0), "loss_classifier": torch.tensor(2.0)}
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                    for _ in images]

    model = bench.TorchvisionDetector(Fake())
    images = ImageList(torch.zeros(2, 3, 64, 64), [(40, 64), (64, 50)])
    targets = [{"gt_boxes": torch.tensor([[1.0, 1, 9, 9]]), "gt_classes": torch.tensor([1])}] * 2
    preds, losses = model.train()(images, targets)
    assert preds == [] and losses == {"loss_rpn_cls": 1.0, "loss_cls": 2.0}
    assert seen["shapes"] == [(3, 40, 64), (3, 64, 50)] and seen["labels"] == [[2], [2]]
    weighted = bench.TorchvisionDetector(Fake(), {"loss_cls": 0.5})  # loss weights, by our loss names
    assert weighted.train()(images, targets)[1] == {"loss_rpn_cls": 1.0, "loss_cls": 1.0}
    preds, losses = model.eval()(images)
    assert losses == {} and len(preds) == 2 and preds[0]["pred_classes"].shape == (0,)


def test_torchvision_r18_copies_our_recipe(bench):
    cfg = bench.cpu_config(128, 10, 0, 0)
    wrapped = bench.torchvision_r18_fpn(cfg.model, 3, 128, 171, bench.IMAGENET_MEAN, bench.IMAGENET_STD)
    assert wrapped.loss_weights == {"loss_rpn_cls": 1.0, "loss_rpn_box": 1.0, "loss_mask": 1.0}
    tv = wrapped.model
    assert tv.transform.min_size == (128,) and tv.transform.max_size == 171
    assert tv.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert tv.rpn._pre_nms_top_n == {"training": 600, "testing": 300}
    assert tv.roi_heads.fg_bg_sampler.batch_size_per_image == 256
    assert tv.roi_heads.detections_per_img == 50
    assert tv.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert tv.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    assert tv.roi_heads.box_head.fc7.out_features == cfg.model.box_head.fc_dim
    convs = [m for m in tv.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [cfg.model.mask_head.conv_dim] * cfg.model.mask_head.num_convs == [256] * 4
    bn = [m for m in tv.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(p.requires_grad for m in bn for p in m.parameters())
    assert all(p.requires_grad for p in tv.parameters())  # trainable_layers=5: nothing frozen
    assert not cfg.model.keypoint_on and cfg.model.mask_on and cfg.solver.warmup_iters == 10
    assert tv.backbone.out_channels == cfg.model.backbone.fpn_channels  # the FPN as wide as ours


def test_stock_torchvision_keeps_its_own_defaults(bench):
    tv = bench.torchvision_r18_fpn_stock(3, 128, 171, bench.IMAGENET_MEAN, bench.IMAGENET_STD).model
    assert tv.transform.min_size == (128,) and tv.transform.max_size == 171
    assert tv.backbone.out_channels == 256
    assert tv.rpn._post_nms_top_n == {"training": 2000, "testing": 1000}
    assert tv.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert tv.roi_heads.box_head.fc7.out_features == 1024
    assert tv.roi_heads.box_predictor.cls_score.out_features == 4
    assert all(p.requires_grad for p in tv.parameters())


def test_lr_multipliers_reach_the_same_parts_of_both_models(bench):
    from dataclasses import replace

    from common.engine import build_optimizer
    from detection.build import build_model

    cfg = bench.cpu_config(128, 10, 0, 0, ["solver.lr_mults={roi_heads.mask_head: 3.0}"])
    assert cfg.solver.lr_mults == {"roi_heads.mask_head": 3.0}
    tv = bench.torchvision_r18_fpn_stock(3, 128, 171, bench.IMAGENET_MEAN, bench.IMAGENET_STD)
    tv_solver = replace(cfg.solver, lr_mults=bench.torchvision_lr_mults(cfg.solver.lr_mults))

    def boosted(model, solver):  # names of the parameters the optimizer gives 3x the base LR
        groups = build_optimizer(model, solver).param_groups
        ids = {id(p) for g in groups if g["lr"] == pytest.approx(3 * solver.base_lr) for p in g["params"]}
        return {n for n, p in model.named_parameters() if id(p) in ids}

    model = build_model(cfg.model, 3)
    assert boosted(model, cfg.solver) == {n for n, _ in model.named_parameters() if n.startswith("roi_heads.mask_head.")}
    theirs = boosted(tv, tv_solver)
    assert theirs and all(n.startswith(("model.roi_heads.mask_head.", "model.roi_heads.mask_predictor.")) for n in theirs)
    assert {n for n in theirs if "mask_fcn_logits" in n} == {"model.roi_heads.mask_predictor.mask_fcn_logits.weight",
                                                               "model.roi_heads.mask_predictor.mask_fcn_logits.bias"}
    with pytest.raises(ValueError, match="'backbone.body' has no torchvision counterpart"):
        bench.torchvision_lr_mults({"backbone.body": 0.1})


def test_gpu_mode_compares_stock_r50_models_from_scratch(bench):
    from detection.build import build_model

    cfg = bench.gpu_config(300, 0, 0)
    b = cfg.model.backbone
    assert (b.name, b.weights, b.norm, b.freeze_at) == ("resnet50", None, "BN", 0)
    assert (cfg.solver.ims_per_batch, cfg.data.min_size, cfg.data.test_min_size) == (2, (800,), 800)
    assert cfg.model.mask_on and not cfg.model.keypoint_on
    tv = bench.torchvision_r50_fpn(3).model
    assert tv.transform.min_size == (800,) and all(p.requires_grad for p in tv.parameters())
    ours = build_model(cfg.model, 3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == pytest.approx(count(tv), rel=1e-3)  # the same architecture, about 44 M


def test_pad_value_is_our_backbones_pixel_mean(bench):
    from common.backbones import build_backbone

    backbone = build_backbone("resnet18")
    assert bench.PAD == {"size_divisibility": backbone.size_divisibility, "pad_value": backbone.pixel_mean}


# ------------------------------------------------------------------ table


def test_compare_ratios_mean_ours_better_and_ap_is_a_difference(bench):
    table = bench.compare({"torchvision": {"train_s_per_iter": 2.0, "infer_img_per_s": 4.0, "box_AP": 30.0,
                                           "mask_AP": math.nan},
                           "ours": {"train_s_per_iter": 1.0, "infer_img_per_s": 6.0, "box_AP": 32.5,
                                    "mask_AP": 20.0}}, bench.CPU_ROWS)
    assert table["train_s_per_iter"]["ratio"] == pytest.approx(2.0)
    assert table["infer_img_per_s"]["ratio"] == pytest.approx(1.5)
    assert table["box_AP"]["difference"] == pytest.approx(2.5)
    assert table["mask_AP"]["difference"] is None
    text = bench.format_table(table, bench.CPU_ROWS)
    assert "| train s/iter | 2 | 1 | 2.00x |" in text
    assert "| box AP | 30 | 32.5 | +2.5 pts |" in text

    half = bench.compare({"torchvision": None, "ours": {"train_s_per_iter": 1.0}}, bench.GPU_ROWS)
    assert half["train_s_per_iter"] == {"torchvision": None, "ours": 1.0, "ratio": None}
    assert "| train s/iter | - | 1 | - |" in bench.format_table(half, bench.GPU_ROWS)


# ------------------------------------------------------------------ the tool, end to end


def test_runs_average_over_the_seeds_both_models_ran(bench):
    def col(t, ap):
        return {"train_s_per_iter": t, "infer_img_per_s": 1.0, "box_AP": ap, "mask_AP": ap}

    runs = {"0": {"torchvision": col(4.0, 10.0), "ours": col(1.0, 14.0)},
            "1": {"torchvision": col(6.0, 20.0), "ours": col(2.0, 20.0)},
            "2": {"ours": col(9.0, 0.0)}}  # torchvision has not run seed 2: left out of the means
    table, seeds = bench.compare_runs(runs, bench.CPU_ROWS)
    assert seeds == ["0", "1"]
    assert table["train_s_per_iter"] == {"torchvision": 5.0, "ours": 1.5, "ratio": pytest.approx(5 / 1.5)}
    assert table["box_AP"]["difference"] == pytest.approx(2.0)
    table, seeds = bench.compare_runs({"3": {"ours": col(1.0, 5.0)}}, bench.CPU_ROWS)
    assert seeds == ["3"] and table["box_AP"] == {"torchvision": None, "ours": 5.0, "difference": None}
    assert bench._merged({"1": {"ours": col(1, 1)}, "10": {"ours": col(1, 1)}},
                         {"2": {"ours": col(2, 2)}, "1": {"torchvision": col(3, 3)}}) == {
        "1": {"ours": col(1, 1), "torchvision": col(3, 3)}, "2": {"ours": col(2, 2)}, "10": {"ours": col(1, 1)}}


@pytest.mark.slow  # trains and evaluates two ResNet-18 Mask R-CNNs: 35 s on the shared 2-core machine
def test_split_cpu_run_fills_one_table(bench, shapes_dir, tmp_path, capsys):
    """--skip-ours then --skip-torchvision into one --out: the second run keeps the first's column;
    a third run with another seed adds it, and the table averages the two seeds."""
    out = tmp_path / "bench.json"
    common = ["--data", str(shapes_dir), "--iters", "2", "--size", "64", "--infer-images", "2",
              "--eval-images", "3", "--out", str(out)]
    assert bench.main(common + ["--skip-ours"]) == 0
    first = json.loads(out.read_text())
    assert set(first["runs"]["0"]) == {"torchvision"} and first["table"]["train_s_per_iter"]["ratio"] is None
    assert bench.main(common + ["--skip-torchvision"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    s = result["settings"]
    assert (s["mode"], s["size"], s["max_size"], s["batch"], s["iters"], s["warmup"]) == ("cpu-r18", 64, 86, 4, 2, 1)
    assert (s["infer_batch"], s["infer_images"], s["eval_images"]) == (1, 2, 3)
    tv, ours = result["runs"]["0"]["torchvision"], result["runs"]["0"]["ours"]
    assert tv == first["runs"]["0"]["torchvision"] and result["seeds"] == ["0"]
    assert tv["data_digest"] == ours["data_digest"]  # the same batches, in the same order
    for col in (tv, ours):
        assert len(col["iter_times"]) == 2 and col["train_s_per_iter"] == pytest.approx(col["iter_times"][1], abs=1e-3)
        assert col["infer_img_per_s"] > 0
        assert 0 <= col["box_AP"] <= 100 and 0 <= col["mask_AP"] <= 100
    assert tv["params_M"] > ours["params_M"] > 10  # 256- vs 128-channel FPN on the same ResNet-18
    table = result["table"]
    assert table["train_s_per_iter"]["ratio"] == pytest.approx(tv["train_s_per_iter"] / ours["train_s_per_iter"])
    assert table["infer_img_per_s"]["ratio"] == pytest.approx(ours["infer_img_per_s"] / tv["infer_img_per_s"])
    assert table["box_AP"]["difference"] == pytest.approx(ours["box_AP"] - tv["box_AP"])
    for label in ("| train s/iter |", "| inference img/s (batch 1) |", "| box AP |", "| mask AP |", "seed 0 ("):
        assert label in printed
    assert "| - |" not in printed.split("cpu-r18:")[-1]  # the second table has both columns

    assert bench.main(common + ["--skip-torchvision", "--seed", "1"]) == 0  # ours only: seed 1 unpaired
    third = json.loads(out.read_text())
    assert set(third["runs"]) == {"0", "1"} and third["seeds"] == ["0"] and third["runs"]["0"] == result["runs"]["0"]
    assert third["runs"]["1"]["ours"]["data_digest"] != ours["data_digest"]  # another seed, other batches


@pytest.mark.parametrize("argv, message", [
    (["--iters", "0"], r"--iters must be at least 1, got 0"),
    (["--size", "16"], r"--size must be at least 32, got 16"),
    (["--skip-ours", "--skip-torchvision"], r"together leave nothing to measure"),
    (["--seeds", "1", "2", "1"], r"--seeds repeats a seed: \[1, 2, 1\]"),
    (["--device", "tpu"], r"--device must be cpu or cuda, got 'tpu'"),
])
def test_bad_arguments_fail_with_one_line(bench, capsys, argv, message):
    assert bench.main(argv) == 2
    assert re.search(message, error_line(capsys))


def test_gpu_mode_refuses_without_cuda(bench, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--gpu-r50"]) == 2
    assert error_line(capsys) == "benchmark.py: error: --gpu-r50 needs a CUDA GPU and torch sees none"


def test_missing_dataset_is_one_line(bench, tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "nowhere"), "--iters", "1"]) == 2
    assert "annotation file not found" in error_line(capsys)


def test_dataset_without_masks_is_refused(bench, shapes_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "boxes_only"
    for split in ("train", "val"):
        shutil.copytree(shapes_dir / split, data / split)
        coco = json.loads((shapes_dir / f"{split}.json").read_text())
        for ann in coco["annotations"]:
            ann.pop("segmentation", None)
        (data / f"{split}.json").write_text(json.dumps(coco))
    assert bench.main(["--data", str(data), "--iters", "1"]) == 2
    line = error_line(capsys)
    assert "train.json has no instance masks" in line and "compares Mask R-CNNs" in line


def test_corrupt_out_file_is_one_line(bench, shapes_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("{not json")
    assert bench.main(["--data", str(shapes_dir), "--iters", "1", "--size", "64", "--skip-ours",
                       "--out", str(out)]) == 2
    assert "exists but is not JSON" in error_line(capsys)


def test_recipe_overrides_apply_last(bench):
    cfg = bench.cpu_config(128, 10, 0, 0, ["solver.lr_mults={backbone: 0.5}", "model.mask_head.class_agnostic=true"])
    assert cfg.solver.lr_mults == {"backbone": 0.5} and cfg.model.mask_head.class_agnostic
    assert bench.cpu_config(128, 10, 0, 0).solver.lr_mults == {}  # the recipe has none


def test_bad_override_is_one_line(bench, shapes_dir, capsys):
    assert bench.main(["--data", str(shapes_dir), "--iters", "1", "solver.no_such_key=1"]) == 2
    assert error_line(capsys).startswith(
        "benchmark.py: error: command line: unknown config key 'solver.no_such_key' (known keys here: ")


def test_out_file_of_other_settings_is_kept_and_refused(bench, shapes_dir, tmp_path, capsys):
    """A run with an override never merges into, or overwrites, a file measured without it."""
    out = tmp_path / "bench.json"
    common = ["--data", str(shapes_dir), "--iters", "1", "--size", "64", "--infer-images", "1",
              "--eval-images", "1", "--skip-ours", "--out", str(out)]
    assert bench.main(common) == 0
    before = out.read_text()
    capsys.readouterr()
    assert bench.main(common + ["solver.lr_mults={roi_heads.mask_head: 3.0}"]) == 2
    line = error_line(capsys)
    assert f"--out {out} holds a run with other settings (lr_mults: {{}} there, {{'roi_heads.mask_head': 3.0}} now; " \
           "overrides: None there, ['solver.lr_mults={roi_heads.mask_head: 3.0}'] now); choose another file" in line
    assert out.read_text() == before


def test_out_file_that_is_not_a_benchmark_result_is_kept_and_refused(bench, shapes_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("[1, 2]")
    assert bench.main(["--data", str(shapes_dir), "--iters", "1", "--size", "64", "--skip-ours",
                       "--out", str(out)]) == 2
    assert error_line(capsys) == f"benchmark.py: error: --out {out} is not a benchmark result; choose another file"
    assert out.read_text() == "[1, 2]"


def test_run_is_written_beside_an_out_file_changed_meanwhile(bench, shapes_dir, tmp_path, capsys, monkeypatch):
    """If another run writes other settings into --out while this one trains, both are kept."""
    import os

    out = tmp_path / "bench.json"
    reads = []
    real = bench._read_previous

    def read_previous(path, settings):
        reads.append(path)
        if len(reads) == 2:  # the final merge: the file now holds someone else's run
            out.write_text(json.dumps({"settings": {"mode": "other"}, "runs": {}}))
        return real(path, settings)

    monkeypatch.setattr(bench, "_read_previous", read_previous)
    assert bench.main(["--data", str(shapes_dir), "--iters", "1", "--size", "64", "--infer-images", "1",
                       "--eval-images", "1", "--skip-ours", "--out", str(out)]) == 0
    beside = tmp_path / f"bench.{os.getpid()}.json"
    assert json.loads(out.read_text())["settings"] == {"mode": "other"}
    assert set(json.loads(beside.read_text())["runs"]["0"]) == {"torchvision"}
    assert f"writing this run to {beside}" in capsys.readouterr().err
