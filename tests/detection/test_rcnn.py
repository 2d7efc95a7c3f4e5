"""R-CNN's model: warping with context, window labels, one train and one eval step, the state dict."""
import pytest
import torch

from common.backbones import build_backbone
from detection.rcnn import RCNN, context_boxes, label_windows, warp_regions
from common.image_list import ImageList


def test_context_boxes_put_the_box_at_p_pixels_inside_the_warp():
    boxes = torch.tensor([[10.0, 20.0, 42.0, 36.0]])  # 32 x 16
    # warp 64, p 16: the box must cover [16, 48] of 64, i.e. half the region -> 16 px and 8 px of context
    torch.testing.assert_close(context_boxes(boxes, 64, 16), torch.tensor([[-6.0, 12.0, 58.0, 44.0]]))
    # the paper's numbers: 227 px warp, p = 16 -> a 195 px box gets exactly 16 px each side
    torch.testing.assert_close(context_boxes(torch.tensor([[0.0, 0.0, 195.0, 390.0]]), 227, 16),
                               torch.tensor([[-16.0, -32.0, 211.0, 422.0]]))
    torch.testing.assert_close(context_boxes(boxes, 64, 0), boxes)
    with pytest.raises(ValueError, match="context_pad 32 leaves no room for the box in a 64 px warp"):
        context_boxes(boxes, 64, 32)


def test_warp_shows_the_box_in_the_middle_and_zeros_outside_the_image():
    image = torch.zeros(1, 1, 40, 60)
    image[0, 0, 10:30, 20:50] = 1.0  # a 30 x 20 box at x 20..50, y 10..30
    rois = torch.tensor([[0.0, 20.0, 10.0, 50.0, 30.0]])
    w = warp_regions(image, rois, 32, 8)[0, 0]  # the box covers [8, 24) of 32
    assert w.shape == (32, 32)
    assert (w[9:23, 9:23] > 0.99).all()  # inside the box
    assert (w[:7, :] < 0.01).all() and (w[25:, :] < 0.01).all() and (w[:, :7] < 0.01).all()  # context
    # a box at the image corner: the context beyond the image is 0 (the mean after normalisation)
    corner = warp_regions(torch.ones(1, 1, 40, 60), torch.tensor([[0.0, 0.0, 0.0, 16.0, 16.0]]), 32, 8)[0, 0]
    assert (corner[:6, :] < 0.01).all() and (corner[:, :6] < 0.01).all() and (corner[9:, 9:] > 0.99).all()


def test_label_windows_use_iou_0_5_and_include_gt():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 19.0],  # IoU 100/190 = 0.53: class 2
                              [0.0, 0.0, 10.0, 21.0],  # IoU 0.48: background
                              [30.0, 30.0, 40.0, 40.0]])
    boxes, labels = label_windows(proposals, gt, torch.tensor([2]), 0.5, num_classes=3)
    assert boxes.shape == (4, 4) and labels.tolist() == [2, 2, 3, 3]
    _, labels = label_windows(proposals, gt[:0], torch.zeros(0, dtype=torch.int64), 0.5, num_classes=3)
    assert labels.tolist() == [3, 3, 3]


def tiny_rcnn(num_classes=3, **kw):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", norm="BN", out_features=("c5",))
    return RCNN(backbone, num_classes, warp_size=32, context_pad=8, batch_size=16, feature_batch=8, **kw)


def batch():
    images = ImageList.from_tensors([torch.rand(3, 64, 80), torch.rand(3, 48, 64)], 32)
    gt = torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 10.0, 70.0, 30.0]])
    g = torch.Generator().manual_seed(1)
    props = [gt + torch.randn(2, 4, generator=g), torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 5.0, 60.0, 45.0]])]
    targets = [{"image_id": 1, "gt_boxes": gt, "gt_classes": torch.tensor([0, 2]), "proposal_boxes": props[0]},
               {"image_id": 2, "gt_boxes": gt[:0], "gt_classes": torch.zeros(0, dtype=torch.int64),
                "proposal_boxes": props[1]}]
    return images, targets


def test_train_step_samples_windows_and_learns():
    model = tiny_rcnn()
    images, targets = batch()
    boxes, labels = model.sample_windows([t["proposal_boxes"] for t in targets], targets)
    assert sum(len(b) for b in boxes) == len(labels) == 6  # 2 gt + 4 proposals, fewer than 16
    assert (labels < 3).sum() == 4  # the gt boxes and the two jittered proposals of image 1
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(3):
        preds, loss = model(images, targets)
        assert preds == [] and set(loss) == {"loss_cls"}
        opt.zero_grad()
        loss["loss_cls"].backward()
        opt.step()
        losses.append(loss["loss_cls"].item())
    assert losses[-1] < losses[0]


def test_eval_step_uses_softmax_then_svms_and_regressors():
    model = tiny_rcnn(score_thresh=0.0, detections_per_img=5).eval()
    images, targets = batch()
    proposals_only = [{"proposal_boxes": t["proposal_boxes"]} for t in targets]
    preds, losses = model(images, proposals_only)
    assert losses == {} and len(preds) == 2
    for p in preds:
        assert set(p) == {"pred_boxes", "scores", "pred_classes"} and 0 < len(p["scores"]) <= 5
        assert ((p["scores"] >= 0) & (p["scores"] <= 1)).all()
    # softmax, no regression: every box is a (clipped) proposal
    assert (torch.cdist(preds[1]["pred_boxes"], targets[1]["proposal_boxes"]).min(1).values < 1e-4).all()
    # an SVM that only likes class 1 and a regressor that shifts class-1 boxes right by 10% of the width
    model.svm_weight.zero_()
    model.svm_bias.copy_(torch.tensor([-5.0, 5.0, -5.0]))
    model.svm_fitted.fill_(True)
    model.reg_bias[1, 0] = 0.1
    model.reg_fitted.fill_(True)
    preds, _ = model(images, proposals_only)
    p = preds[1]
    assert (p["pred_classes"][p["scores"] > 0.5] == 1).all() and p["scores"].max() > 0.99
    moved = p["pred_boxes"][p["pred_classes"] == 1]
    box = targets[1]["proposal_boxes"][0]  # 20 px wide
    assert any(torch.allclose(m, box + torch.tensor([2.0, 0.0, 2.0, 0.0])) for m in moved)
    # validation loss in eval mode, and the whole detector in the state dict
    _, losses = model(images, targets)
    assert set(losses) == {"loss_cls"}
    clone = tiny_rcnn()
    clone.load_state_dict(model.state_dict())
    assert bool(clone.svm_fitted) and torch.equal(clone.reg_bias, model.reg_bias)


def test_missing_proposals_are_one_sentence():
    model = tiny_rcnn().eval()
    images, targets = batch()
    with pytest.raises(ValueError, match=r"R-CNN needs precomputed proposals: pass one target per image"):
        model(images)
    bad = [dict(t, proposal_boxes=torch.zeros(3)) for t in targets]
    with pytest.raises(ValueError, match=r"image id 1: proposal_boxes must be a finite \(R, 4\) tensor, got shape \(3,\)"):
        model(images, bad)


def test_rcnn_reads_proposals_through_the_shared_dataset_path(shapes_dir, tmp_path):
    """R-CNN's datasets carry the file's proposals as Fast R-CNN's do (detection.build.attach_proposals):
    resized and flipped with the image, the best ``proposals_per_image`` of them, a stale file refused."""
    import json
    import os

    from common.config import load_config
    from detection.build import build_datasets, proposals_to_read, resolve_data_paths
    from detection.config import DetConfig
    from detection.proposals import make_header, save_proposals

    files = {}
    for split in ("train", "val"):
        coco = json.loads((shapes_dir / f"{split}.json").read_text())
        images = {im["id"]: shapes_dir / split / im["file_name"] for im in coco["images"]}
        files[split] = tmp_path / f"{split}.json"
        save_proposals(files[split], {i: {"boxes": [[10, 20, 30, 40], [0, 0, 48, 300], [5, 5, 15, 15]]} for i in images},
                       make_header("fast", images))
    overrides = [f"data.train_proposals={files['train']}", f"data.val_proposals={files['val']}",
                 "model.rcnn.proposals_per_image=2", "data.min_size=[192]", "data.test_min_size=192",
                 "data.max_size=400", "data.hflip_prob=1.0"]
    cfg = load_config(DetConfig, "configs/detection/rcnn_R18.yaml", overrides)
    assert proposals_to_read(cfg) == 2
    assert proposals_to_read(load_config(DetConfig, "configs/detection/rcnn_R18.yaml",
                                         overrides + ["data.max_proposals=1"])) == 1
    paths = resolve_data_paths(cfg.data, str(shapes_dir))
    train_set, val_set = build_datasets(cfg, paths)
    for dataset, flipped in ((val_set, False), (train_set, True)):
        image, target = dataset[0]  # resized to short side 192; the third box is not read
        h, w = image.shape[1:]
        s = 192 / min(target["orig_size"].tolist())
        assert min(h, w) == 192 and (h, w) == tuple(round(s * v) for v in target["orig_size"].tolist())
        first = [w - 30 * s, 20 * s, w - 10 * s, 40 * s] if flipped else [10 * s, 20 * s, 30 * s, 40 * s]
        second = [w - 48 * s, 0, w, h] if flipped else [0, 0, 48 * s, h]  # clipped to the image on disk
        torch.testing.assert_close(target["proposal_boxes"], torch.tensor([first, second]))

    image_file = paths.val_images / "000002.jpg"
    before = os.stat(image_file)
    os.utime(image_file, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # changed since the proposals
    try:
        with pytest.raises(ValueError, match=f"proposal file {files['val']} was made from other files: image id 2 "
                                             "was 000002.jpg"):
            build_datasets(cfg, paths)
    finally:
        os.utime(image_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    empty = load_config(DetConfig, "configs/detection/rcnn_R18.yaml", overrides + ["data.val_proposals="])
    with pytest.raises(ValueError, match=r"R-CNN \(model.meta_architecture: rcnn\) reads precomputed proposals but "
                                         "data.val_proposals is empty; make the file with tools/compute_proposals.py"):
        build_datasets(empty, paths)
