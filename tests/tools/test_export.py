"""tools/export.py: ONNX (onnxruntime) and TorchScript files of a tiny detector and segmenter agree
with PyTorch on images of other sizes than the traced one, including an image without detections."""
import cv2
import numpy as np
import pytest
import torch

from tool_helpers import load_tool, train_tiny_detector

# largest absolute difference allowed between the exported file and PyTorch (measured: about
# 2e-5 px on boxes, 1e-5 on mask and keypoint values; the ONNX kernels sum in another order)
BOX_TOL, VALUE_TOL = 1e-3, 1e-3
SIZES = [(72, 96), (96, 72), (120, 88), (64, 150)]  # none is the traced 64 x 64


@pytest.fixture(scope="module")
def det_ckpt(shapes_dir, tmp_path_factory):
    return train_tiny_detector(shapes_dir, tmp_path_factory.mktemp("export") / "det")


def val_images(shapes_dir) -> list[np.ndarray]:
    """The val images as (3, H, W) float32 in [0, 1], resized to SIZES (all differ from the traced size)."""
    out = []
    for i, (h, w) in enumerate(SIZES):
        rgb = cv2.cvtColor(cv2.imread(str(shapes_dir / "val" / f"{i + 1:06d}.jpg")), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        out.append(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0)
    return out


def eager_detector(ckpt, overrides=()):
    from detection.build import build_detector, read_checkpoint

    state, cfg, meta = read_checkpoint(ckpt, None, list(overrides))
    model, _ = build_detector(state, cfg, meta, ckpt)
    return model, meta


def eager_predict(model, image: np.ndarray) -> dict:
    from common.image_list import ImageList

    from detection.mask_head import paste_masks

    with torch.no_grad():
        images = ImageList.from_tensors([torch.from_numpy(image)], model.backbone.size_divisibility,
                                        model.backbone.pixel_mean)
        preds, _ = model(images)
    p = preds[0]
    if "pred_mask_probs" in p:  # the exported model pastes float probabilities in the image's frame
        p["pred_masks"] = paste_masks(p["pred_mask_probs"], p["pred_boxes"], images.image_sizes[0])
    return p


def test_a_branch_turned_off_at_inference_is_left_out(det_ckpt, shapes_dir, capsys):
    full, _ = eager_detector(det_ckpt)
    boxes_only, _ = eager_detector(det_ckpt, ["model.keypoint_on=false", "model.mask_on=false"])
    assert "the keypoint head of" in capsys.readouterr().out
    assert not boxes_only.roi_heads.keypoint_on and not boxes_only.roi_heads.mask_on
    image = val_images(shapes_dir)[0]
    p, q = eager_predict(full, image), eager_predict(boxes_only, image)
    assert "pred_keypoints" not in q and "pred_mask_probs" not in q
    torch.testing.assert_close(q["pred_boxes"], p["pred_boxes"])   # the box branch is untouched


def test_wrapper_matches_the_eager_detector(det_ckpt, shapes_dir):
    from detection.export import ExportableDetector

    model, meta = eager_detector(det_ckpt)
    wrapper = ExportableDetector(model, meta.category_ids)
    for image in val_images(shapes_dir)[:2]:
        p = eager_predict(model, image)
        with torch.no_grad():
            boxes, scores, classes, masks, keypoints = wrapper(torch.from_numpy(image))
        assert len(boxes) == len(p["pred_boxes"]) > 0
        torch.testing.assert_close(boxes, p["pred_boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(scores, p["scores"], atol=1e-6, rtol=0)
        assert classes.tolist() == [meta.category_ids[int(c)] for c in p["pred_classes"]]
        torch.testing.assert_close(masks, p["pred_masks"], atol=1e-4, rtol=0)
        torch.testing.assert_close(keypoints, p["pred_keypoints"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_detector_matches_pytorch_with_and_without_detections(fmt, det_ckpt, shapes_dir, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from common.export import ExportedModel

    images = val_images(shapes_dir)
    # a score threshold between the images' best scores: some images keep detections, some have none
    model, meta = eager_detector(det_ckpt)
    best = sorted(float(eager_predict(model, im)["scores"].max()) for im in images)
    thresh = (best[0] + best[-1]) / 2
    overrides = [f"model.roi_heads.score_thresh={thresh}"]
    model, meta = eager_detector(det_ckpt, overrides)

    out = tmp_path / f"det.{fmt}"
    assert load_tool("export").main(["--checkpoint", str(det_ckpt), "--format", fmt, "--out", str(out),
                                     "--no-resize", *overrides]) == 0
    exported = ExportedModel(out)
    counts = []
    for image in images:
        got = exported(image)
        p = eager_predict(model, image)
        h, w = image.shape[1:]
        r = len(p["pred_boxes"])
        counts.append(r)
        assert got["boxes"].shape == (r, 4) and got["scores"].shape == (r,) and got["classes"].shape == (r,)
        assert got["masks"].shape == (r, h, w) and got["keypoints"].shape == (r, meta.num_keypoints, 3)
        np.testing.assert_allclose(got["boxes"], p["pred_boxes"].numpy(), atol=BOX_TOL, rtol=0)
        np.testing.assert_allclose(got["scores"], p["scores"].numpy(), atol=VALUE_TOL, rtol=0)
        assert got["classes"].tolist() == [meta.category_ids[int(c)] for c in p["pred_classes"]]
        np.testing.assert_allclose(got["masks"], p["pred_masks"].numpy(), atol=VALUE_TOL, rtol=0)
        np.testing.assert_allclose(got["keypoints"], p["pred_keypoints"].numpy(), atol=BOX_TOL, rtol=0)
    assert min(counts) == 0 < max(counts), counts


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_segmenter_matches_pytorch(fmt, shapes_dir, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from common.export import ExportedModel
    from common.image_list import ImageList
    from segmentation.export import load_segmentor

    run = tmp_path / "seg"
    torch.manual_seed(0)
    assert load_tool("train_seg").main([
        "--data", str(shapes_dir), "--output", str(run), "--max-iters", "2", "--device", "cpu",
        "model.unet_width=4", "model.unet_depth=2", "model.input_scale=0.5", "data.crop_size=48",
        "solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.eval_period=0", "data.num_vis=0"]) == 0
    out = tmp_path / f"seg.{fmt}"
    args = ["--checkpoint", str(run / "model_final.pth"), "--data", str(shapes_dir), "--format", fmt, "--out", str(out)]
    assert load_tool("export").main(args) == 0
    model, _, _ = load_segmentor(run / "model_final.pth", data=shapes_dir)
    exported = ExportedModel(out)
    for image in val_images(shapes_dir):
        with torch.no_grad():
            preds, _ = model(ImageList.from_tensors([torch.from_numpy(image)], model.size_divisibility,
                                                    model.pixel_mean))
        got = exported(image)["labels"]
        assert got.shape == image.shape[1:]
        assert (got == preds[0]["sem_seg"].numpy()).mean() > 0.999


def test_exported_detector_resizes_like_predict(det_ckpt, shapes_dir, tmp_path):
    """By default the file resizes inside (short side data.test_min_size = 64 here): on images twice
    the val size it gives what the eager wrapper gives, and what tools/predict.py finds."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from common.export import ExportedModel
    from detection.box_ops import pairwise_iou
    from detection.data import build_transforms
    from detection.export import ExportableDetector
    from detection.predictor import predict_batch

    out = tmp_path / "det.onnx"
    assert load_tool("export").main(["--checkpoint", str(det_ckpt), "--format", "onnx", "--out", str(out)]) == 0
    model, meta = eager_detector(det_ckpt)
    wrapper = ExportableDetector(model, meta.category_ids, min_size=64, max_size=96)
    transforms = build_transforms(meta, train=False, min_size=64, max_size=96)
    exported = ExportedModel(out)
    for image in val_images(shapes_dir):
        big = np.ascontiguousarray(image.repeat(2, axis=1).repeat(2, axis=2))  # (3, 2H, 2W)
        got = exported(big)
        with torch.no_grad():
            expected = [v.numpy() for v in wrapper(torch.from_numpy(big))]
        assert got["masks"].shape[1:] == big.shape[1:]
        for name, value in zip(wrapper.outputs, expected):
            np.testing.assert_allclose(got[name], value, atol=BOX_TOL, rtol=0)
        # tools/predict.py resizes with OpenCV on uint8: the best detections are the same ones
        rgb = (big.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        p = predict_batch(model, [rgb], transforms, "cpu")[0]
        iou = pairwise_iou(torch.from_numpy(got["boxes"][:3]), p["pred_boxes"])
        assert (iou.max(dim=1).values > 0.9).all()


def test_bad_input_is_one_line(det_ckpt, tmp_path, capsys):
    assert load_tool("export").main(["--checkpoint", str(tmp_path / "none.pth"), "--format", "torchscript",
                                     "--out", str(tmp_path / "m.pt")]) == 2
    assert capsys.readouterr().err == f"export: error: checkpoint {tmp_path / 'none.pth'} does not exist\n"
    assert load_tool("export").main(["--checkpoint", str(det_ckpt), "--format", "torchscript",
                                     "--out", str(tmp_path / "m.pt"), "--size", "8"]) == 2
    assert capsys.readouterr().err == "export: error: --size must be at least 32 pixels, got 8\n"


def test_c4_mask_rcnn_exports_too(tmp_path):
    """The C4 layout (single-level pooling, res5 box head shared with the mask head) through ONNX."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from common.config import load_config
    from common.export import ExportedModel, export
    from detection.build import build_model
    from detection.config import DetConfig
    from detection.export import ExportableDetector
    from tool_helpers import ROOT

    cfg = load_config(DetConfig, ROOT / "configs/detection/mask_rcnn_R50_C4.yaml",
                      ["model.backbone.name=resnet18", "model.backbone.weights=null", "model.roi_heads.score_thresh=0.0",
                       "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=30"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 3).eval()
    wrapper = ExportableDetector(model, [1, 2, 3])
    export(wrapper, torch.rand(3, 64, 64), "onnx", tmp_path / "c4.onnx")
    image = torch.rand(3, 80, 112)
    p = eager_predict(model, image.numpy())
    got = ExportedModel(tmp_path / "c4.onnx")(image.numpy())
    assert len(got["boxes"]) == len(p["pred_boxes"]) > 0
    np.testing.assert_allclose(got["boxes"], p["pred_boxes"].numpy(), atol=BOX_TOL, rtol=0)
    np.testing.assert_allclose(got["masks"], p["pred_masks"].numpy(), atol=VALUE_TOL, rtol=0)
