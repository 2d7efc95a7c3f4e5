"""Mixed precision: box math, level assignment, targets and losses stay float32 under autocast
(CPU bf16 autocast exercises the same casts as CUDA fp16), and a detector trains with it on."""
import dataclasses
import math

import pytest
import torch

from common.engine.precision import autocast_dtype
from detection.box_coder import BoxCoder
from detection.build import build_model
from detection.poolers import RoIPooler, assign_levels
from common.image_list import ImageList
from tests.detection.test_generalized_rcnn import K, P, batch, shapes_cfg

# square boxes from 4 px to 1200 px a side: every FPN level, and areas far above fp16's 65504
SIDES = [4.0, 16.0, 40.0, 100.0, 223.0, 255.0, 257.0, 300.0, 448.0, 600.0, 1200.0]


def square_boxes(x0: float = 1000.3) -> torch.Tensor:
    return torch.tensor([[x0, 20.7, x0 + s, 20.7 + s] for s in SIDES])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pooler_levels_match_float32_for_every_box_size(dtype):
    # level l's map is the constant l: the pooled value says which level each box read
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    sizes = [(400, 600), (200, 300), (100, 150), (50, 75)]
    features = [torch.full((1, 2, h, w), float(l), dtype=dtype) for l, (h, w) in enumerate(sizes)]
    boxes = square_boxes(x0=10.3)
    want = assign_levels(boxes, 2, 5)
    side_300 = SIDES.index(300.0)
    assert int(want[side_300]) == 2  # P4: floor(4 + log2(300 / 224)); fp16 w*h overflow gave P5
    pooler = RoIPooler(7, scales, sampling_ratio=2)
    with torch.autocast("cpu", dtype=dtype):
        pooled = pooler(features, [boxes])
    assert pooled.dtype == torch.float32
    assert torch.equal(pooled[:, 0, 3, 3].round().long(), want)
    assert torch.equal(assign_levels(boxes.to(dtype), 2, 5), assign_levels(boxes.to(dtype).float(), 2, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decoded_boxes_are_float32_and_match(dtype):
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = square_boxes()
    torch.manual_seed(0)
    deltas = (torch.randn(len(ref), 8) * 0.5).to(dtype)  # two classes' deltas per box
    want = coder.decode(deltas.float(), ref)
    with torch.autocast("cpu", dtype=dtype):
        got = coder.decode(deltas, ref)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
    # zero deltas give back the reference exactly, 1000.3 included (fp16 would give 1000.0)
    with torch.autocast("cpu", dtype=dtype):
        same = coder.decode(torch.zeros(len(ref), 4, dtype=dtype), ref)
    torch.testing.assert_close(same, ref, rtol=0, atol=1e-4)


def test_regression_targets_unchanged_under_autocast():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = square_boxes()
    gt = ref + torch.tensor([0.3, -0.2, 1.7, 0.9])
    want = coder.encode(gt, ref)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            got = coder.encode(gt, ref)
        assert got.dtype == torch.float32
        assert torch.equal(got, want)


def test_autocast_dtype_settings(monkeypatch):
    import common.engine.precision as precision

    assert autocast_dtype(False, "cpu") is None and autocast_dtype("off", "cpu") is None
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16
    assert autocast_dtype("fp16", "cuda") == torch.float16
    assert autocast_dtype(True, "cpu") is None and autocast_dtype(True, "cuda") == torch.float16  # old bool
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("auto", "cpu") is None
    with pytest.raises(ValueError, match="amp = 'bf32' must be one of off, bf16, fp16, auto"):
        autocast_dtype("bf32", "cpu")


def test_solver_amp_config_values():
    from common.config import ConfigError, apply_override
    from common.engine.config import SolverConfig

    assert apply_override(SolverConfig(), "amp=off").amp is False  # YAML reads off as false
    assert apply_override(SolverConfig(), "amp=bf16").amp == "bf16"
    assert apply_override(SolverConfig(), "amp=true").amp is True
    with pytest.raises(ConfigError, match="'amp' = 'half' does not match"):
        apply_override(SolverConfig(), "amp=half")


def small_batch():
    """One 64 px image with one instance (bf16 is emulated, hence slow, on CPUs without it)."""
    images, targets = batch()
    t = targets[0]
    images = ImageList.from_tensors([images.tensor[0, :, :64, :64]], 32, 0.45)
    box = torch.tensor([[12.0, 10, 40, 50]])
    return images, [dict(t, gt_boxes=box, gt_classes=t["gt_classes"][:1], gt_masks=t["gt_masks"][:1, :64, :64],
                         gt_keypoints=t["gt_keypoints"][:1])]


def few_detections_cfg():
    cfg = shapes_cfg()
    return dataclasses.replace(cfg, roi_heads=dataclasses.replace(cfg.roi_heads, detections_per_img=4))


def test_mask_keypoint_rcnn_trains_and_predicts_under_bf16_autocast():
    torch.manual_seed(0)
    model = build_model(few_detections_cfg(), K, P)
    images, targets = small_batch()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(1):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, losses = model(images, targets)
        assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds, _ = model(images)
    for p in preds:
        assert p["pred_boxes"].dtype == torch.float32 and p["scores"].dtype == torch.float32
        assert p["pred_keypoints"].dtype == torch.float32 and p["pred_mask_probs"].dtype == torch.float32


def test_trainer_runs_bf16_steps_without_a_scaler(tmp_path):
    from common.engine.trainer import Trainer

    torch.manual_seed(0)
    model = build_model(few_detections_cfg(), K, P)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    images, targets = small_batch()

    def data(start):
        while True:
            yield images, targets

    trainer = Trainer(model, opt, sched, data, output_dir=tmp_path, max_iters=2, amp="bf16",
                      checkpoint_period=0, progress=False, tensorboard=False)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    for _ in range(2):
        losses, _ = trainer.run_step(iter(data(0)))
        assert all(math.isfinite(v) for v in losses.values())


def test_anatomy_times_backbone_and_whole_prediction():
    from detection.inference import anatomy

    torch.manual_seed(0)
    model = build_model(few_detections_cfg(), K, P)
    images, targets = batch()
    targets = [dict(t, orig_size=torch.tensor([120, 100])) for t in targets]
    out = anatomy(model, [(images, targets)] * 3, "cpu", n=2, warmup=1)
    assert out["images"] == 2 and out["precision"] == "fp32"
    assert 0 < out["backbone_ms"] < out["full_ms"] and out["ratio"] == pytest.approx(out["full_ms"] / out["backbone_ms"])
    assert 0 <= out["detections_per_image"] <= 4
    with pytest.raises(ValueError, match="anatomy needs more batches than the warmup ones"):
        anatomy(model, [(images, targets)], "cpu", warmup=1)


def test_bf16_on_a_cpu_without_it_gets_a_note(monkeypatch):
    import common.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.emulation_note("solver.amp", "bf16", "cpu") == (
        "solver.amp=bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), so autocast emulates it and "
        "runs several times slower than float32 (use solver.amp=auto or off)")
    assert precision.emulation_note("solver.amp", "auto", "cpu") is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.emulation_note("test.amp", "bf16", "cpu") is None
