import torch
import torch.nn.functional as F

from detection.mask_head import MaskRCNNHead, mask_loss, mask_probs, mask_targets, paste_masks


def test_head_shapes_and_empty_batch_keeps_graph():
    head = MaskRCNNHead(8, 3, conv_dim=16, num_convs=2, norm="GN")
    assert head(torch.randn(4, 8, 14, 14)).shape == (4, 3, 28, 28)
    out = head(torch.zeros(0, 8, 14, 14))
    loss = mask_loss(out, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28))
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_targets_crop_and_resize_gt_mask():
    gt = torch.zeros(2, 32, 32, dtype=torch.uint8)
    gt[0, 8:16, 8:24] = 1      # instance 0: rows 8..15, cols 8..23
    gt[1] = 1
    boxes = torch.tensor([[8.0, 8, 24, 16], [8, 8, 24, 24], [0, 0, 32, 32]])
    t = mask_targets(gt, torch.tensor([0, 0, 1]), boxes, 4)
    assert t.shape == (3, 4, 4)
    assert t[0].sum() == 16                                   # box == mask extent: all ones
    assert t[1].tolist() == [[1.0] * 4, [1.0] * 4, [0.0] * 4, [0.0] * 4]  # top half of the box
    assert t[2].sum() == 16
    assert mask_targets(gt, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), 4).shape == (0, 4, 4)


def test_loss_uses_gt_class_only():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = 10.0                    # class 1 predicts all ones
    logits[0, 0] = -10.0                   # class 0 predicts all zeros
    ones = torch.ones(1, 2, 2)
    assert mask_loss(logits, torch.tensor([1]), ones) < 1e-3
    assert mask_loss(logits, torch.tensor([0]), ones) > 9.0
    probs = mask_probs(logits, torch.tensor([1]))
    assert probs.shape == (1, 2, 2) and probs.min() > 0.99


def test_paste_matches_grid_sample_reference():
    torch.manual_seed(0)
    masks = torch.rand(3, 7, 7)
    boxes = torch.tensor([[2.0, 3, 20, 15], [-4, -4, 10, 30], [10.5, 0.5, 31.5, 9.5]])
    h, w = 24, 32
    out = paste_masks(masks, boxes, (h, w), max_pixels=2 * h * w)  # chunks of 2 boxes
    assert out.shape == (3, h, w)
    # reference: grid_sample of each mask over the whole image (align_corners=False, zero padding)
    ys = torch.arange(h) + 0.5
    xs = torch.arange(w) + 0.5
    for m, b, o in zip(masks, boxes, out):
        gx = (xs - b[0]) / (b[2] - b[0]) * 2 - 1
        gy = (ys - b[1]) / (b[3] - b[1]) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        ref = F.grid_sample(m[None, None], grid, align_corners=False, padding_mode="zeros")[0, 0]
        torch.testing.assert_close(o, ref, atol=1e-5, rtol=1e-4)
    assert out[0, 0, 0] == 0 and out[0, 9, 11] > 0
    assert paste_masks(masks[:0], boxes[:0], (h, w)).shape == (0, h, w)
    # one box per chunk (each computed over its own rows and columns only), and thresholded
    torch.testing.assert_close(paste_masks(masks, boxes, (h, w), max_pixels=1), out, atol=1e-6, rtol=0)
    binary = paste_masks(masks, boxes, (h, w), threshold=0.5, max_pixels=1)
    assert binary.dtype == torch.uint8 and torch.equal(binary, (out >= 0.5).to(torch.uint8))
    outside = paste_masks(masks[:1], torch.tensor([[40.0, 30, 50, 40]]), (h, w))
    assert outside.shape == (1, h, w) and outside.abs().sum() == 0


def test_masks_pasted_at_output_size_match_paste_then_resize():
    """rescale_predictions pastes once at the size on disk (uint8); the old path pasted float
    masks in the model's frame and resized them bilinearly. Same frame: identical; 2.5x larger:
    at most 1.5% of the pixels inside the boxes differ (resampling the 28x28 mask once instead of
    twice)."""
    from detection.fields import rescale_predictions

    torch.manual_seed(0)
    logits = torch.randn(6, 1, 7, 7) * 4
    probs = F.interpolate(logits, size=28, mode="bilinear", align_corners=False)[:, 0].sigmoid()
    boxes = torch.tensor([[2.0, 3, 60, 45], [10, 10, 30, 70], [0, 0, 96, 80], [50.5, 20.5, 90, 79.5],
                          [40, 40, 41.5, 42], [70, 5, 95, 30]])
    pred = {"pred_boxes": boxes, "scores": torch.ones(6), "pred_classes": torch.zeros(6, dtype=torch.int64),
            "pred_mask_probs": probs}
    model_frame = (80, 96)
    old = paste_masks(probs, boxes, model_frame)
    same = rescale_predictions(pred, model_frame, model_frame)
    assert "pred_mask_probs" not in same and same["pred_masks"].dtype == torch.uint8
    assert torch.equal(same["pred_masks"], (old >= 0.5).to(torch.uint8))
    big = (200, 240)
    new = rescale_predictions(pred, model_frame, big)["pred_masks"]
    old_big = F.interpolate(old[:, None], size=big, mode="bilinear", align_corners=False)[:, 0] >= 0.5
    assert new.shape == (6, *big)
    inside = paste_masks(torch.ones_like(probs), boxes * 2.5, big) > 0
    differ = ((new.bool() != old_big) & inside).sum() / inside.sum()
    assert differ < 0.015, float(differ)


def test_targets_read_only_matched_masks_and_equal_the_full_batch_result():
    """COCO-like: 6 full-resolution gt masks, RoIs matched to 3 of them. The targets equal RoIAlign
    over all M masks as one batch (the former computation), bit for bit."""
    from detection.roi_ops import roi_align

    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(6, 400, 600, generator=g) > 0.5).to(torch.uint8)
    matched = torch.tensor([4, 1, 4, 5, 1, 1])
    xy = torch.rand(6, 2, generator=g) * torch.tensor([500.0, 300.0])
    boxes = torch.cat([xy, xy + 10 + torch.rand(6, 2, generator=g) * 90], dim=1)
    rois = torch.cat((matched[:, None].float(), boxes), dim=1)
    before = (roi_align(gt[:, None].float(), rois, (28, 28), 1.0, 0, True)[:, 0] >= 0.5).float()
    assert torch.equal(mask_targets(gt, matched, boxes, 28), before)
