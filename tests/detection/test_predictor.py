"""detection.predictor: batched prediction, tile windows, and tiled inference on a large canvas made
of the val images, with a detector whose output is a fixed function of the pixels it sees."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detection.data import build_transforms, load_coco_json, meta_from_coco
from detection.predictor import predict_batch, predict_tiled, tile_windows
from detection.box_ops import pairwise_iou

MIN_SIDE = 16  # the stand-in detector misses objects smaller than this in the frame it sees


class BlobDetector(nn.Module):
    """Finds the non-black rectangles of its input (connected components of pixels > 0.05),
    only those whose sides are both at least MIN_SIDE pixels of the image it is given: like a
    trained detector, it misses objects shrunk far below its training scale."""

    def __init__(self):
        super().__init__()
        self.backbone = SimpleNamespace(size_divisibility=32, pixel_mean=(0.0, 0.0, 0.0))

    def forward(self, images, targets=None):
        out = []
        for t, (h, w) in zip(images.tensor, images.image_sizes):
            fg = (t[:, :h, :w].max(dim=0).values > 0.05).numpy().astype(np.uint8)
            n, comp, stats, _ = cv2.connectedComponentsWithStats(fg)
            keep = [i for i in range(1, n) if min(stats[i, 2], stats[i, 3]) >= MIN_SIDE]
            boxes = torch.tensor([[stats[i, 0], stats[i, 1], stats[i, 0] + stats[i, 2], stats[i, 1] + stats[i, 3]]
                                  for i in keep], dtype=torch.float32).reshape(-1, 4)
            masks = torch.from_numpy(np.stack([comp == i for i in keep]) if keep else np.zeros((0, h, w)))
            out.append({"pred_boxes": boxes, "scores": torch.full((len(keep),), 0.9),
                        "pred_classes": torch.zeros(len(keep), dtype=torch.int64), "pred_masks": masks.float()})
        return out, {}


@pytest.fixture(scope="module")
def canvas(shapes_dir):
    """A 1280 x 1536 black canvas with the 6 val images (brightened: none is black) pasted apart,
    and their boxes (xyxy) as ground truth."""
    canvas = np.zeros((1280, 1536, 3), np.uint8)
    boxes = []
    for i in range(6):
        image = cv2.cvtColor(cv2.imread(str(shapes_dir / "val" / f"{i + 1:06d}.jpg")), cv2.COLOR_BGR2RGB)
        image = np.clip(image.astype(np.int16) + 40, 0, 255).astype(np.uint8)
        h, w = image.shape[:2]
        y, x = 150 + 500 * (i // 3), 100 + 530 * (i % 3) + 37 * i  # apart, at irregular offsets
        canvas[y:y + h, x:x + w] = image
        boxes.append([x, y, x + w, y + h])
    return canvas, torch.tensor(boxes, dtype=torch.float32)


@pytest.fixture(scope="module")
def transforms(shapes_dir):
    meta = meta_from_coco(load_coco_json(shapes_dir / "val.json"), "val.json")
    return build_transforms(meta, train=False, min_size=64, max_size=96)  # the tiny recipe's test size


def found(pred, gt_boxes) -> int:
    """How many ground-truth boxes some prediction overlaps with IoU >= 0.9."""
    if len(pred["pred_boxes"]) == 0:
        return 0
    return int((pairwise_iou(gt_boxes, pred["pred_boxes"]).max(dim=1).values >= 0.9).sum())


def test_tiles_find_what_the_whole_image_misses(canvas, transforms):
    image, gt = canvas
    model = BlobDetector()
    whole = predict_batch(model, [image], transforms, "cpu")[0]
    assert found(whole, gt) == 0  # the canvas shrunk to 96 px: every pasted image is ~6 px

    tiled = predict_tiled(model, image, transforms, "cpu", tile=256, overlap=128)
    # every pasted image found once (duplicates from overlapping tiles merged), nothing else
    assert found(tiled, gt) == len(gt) == len(tiled["pred_boxes"])
    iou = pairwise_iou(gt, tiled["pred_boxes"])
    torch.testing.assert_close(tiled["pred_boxes"][iou.argmax(dim=1)], gt, atol=6.0, rtol=0)  # 4 px per seen px
    # masks pasted into the canvas where the images are
    masks = tiled["pred_masks"] >= 0.5
    assert masks.shape == (len(gt), *image.shape[:2])
    for m, (x0, y0, x1, y1) in zip(masks[iou.argmax(dim=1)], gt.int().tolist()):
        inside = m[y0:y1, x0:x1].sum()
        assert inside >= 0.9 * (y1 - y0) * (x1 - x0) and inside >= 0.9 * m.sum()  # ~1 px of bilinear bleed at 4x


def test_without_overlap_objects_on_tile_edges_are_lost(canvas, transforms):
    image, gt = canvas
    tiled = predict_tiled(BlobDetector(), image, transforms, "cpu", tile=256, overlap=0)
    # with no overlap an image crossing a tile edge is cut in parts that are all dropped
    assert found(tiled, gt) < len(gt)


def test_tile_windows_cover_the_image():
    windows = tile_windows(300, 500, tile=128, overlap=32)
    assert windows[0] == (0, 0, 128, 128) and windows[-1] == (172, 372, 300, 500)
    cover = np.zeros((300, 500), bool)
    for y0, x0, y1, x1 in windows:
        assert (y1 - y0, x1 - x0) == (128, 128)
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    assert tile_windows(50, 60, tile=128, overlap=32) == [(0, 0, 50, 60)]
    with pytest.raises(ValueError, match="0 <= --overlap < --tile, got tile 64, overlap 64"):
        tile_windows(100, 100, 64, 64)
