"""Evaluation sharded across 2 gloo processes (each predicts its images, rank 0 scores them all)
gives the metrics of one process evaluating everything."""
import hashlib
import os

import torch
from torch import nn

WORLD = 2


class LookupDetector(nn.Module):
    """A stand-in detector with a known, imperfect answer per image: each image's ground truth
    (recognised by its pixels), boxes shifted by a pixel or two, masks as given, seeded scores."""

    def __init__(self, dataset):
        super().__init__()
        self.answers = {}
        g = torch.Generator().manual_seed(0)
        for i in range(len(dataset)):
            image, t = dataset[i]
            boxes = t["gt_boxes"] + torch.randint(-2, 3, t["gt_boxes"].shape, generator=g)
            self.answers[self._key(image.float() / 255)] = {
                "pred_boxes": boxes.float(), "scores": torch.rand(len(boxes), generator=g),
                "pred_classes": t["gt_classes"], "pred_masks": t["gt_masks"].float()}

    @staticmethod
    def _key(image):
        return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()

    def forward(self, images, targets=None):
        crops = [im[:, :h, :w] for im, (h, w) in zip(images.tensor, images.image_sizes)]  # unpadded
        return [self.answers[self._key(c)] for c in crops], {}


def val_set(shapes_dir):
    from detection.data import CocoDetection, build_transforms

    val = CocoDetection(shapes_dir / "val.json", shapes_dir / "val", filter_empty=False, use_masks=True)
    val.transforms = build_transforms(val.meta, train=False, min_size=64, max_size=86)
    return val


def evaluate(val, rank=0, world=1, limit=0):
    from common.loaders import build_test_loader
    from detection.inference import evaluate_detector

    loader = build_test_loader(val, batch_size=2, num_workers=0, size_divisibility=32, pad_value=0.0,
                               rank=rank, world_size=world)
    return evaluate_detector(LookupDetector(val), loader, val.coco, val.meta.category_ids, ("bbox", "segm"),
                             torch.device("cpu"), limit=limit)


def _worker(rank, port, shapes_dir, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from common.engine import distributed

    distributed.init_distributed(timeout_s=60)
    val = val_set(shapes_dir)
    full = evaluate(val, rank, WORLD)
    first3 = evaluate(val, rank, WORLD, limit=3)
    torch.save({"full": full, "first3": first3}, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.cleanup()


def test_two_process_evaluation_matches_one_process(shapes_dir, tmp_path, run_ranks):
    run_ranks(_worker, shapes_dir, str(tmp_path), world=WORLD)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert r1["full"] == ({}, []) and r1["first3"] == ({}, [])  # rank 0 scores, the others wait

    from detection.evaluation import metrics_to_json

    val = val_set(shapes_dir)
    metrics, results = evaluate(val)
    assert 20 < metrics["bbox"]["AP"] < 100 and 20 < metrics["segm"]["AP"] < 100  # not trivially 0 or 100
    sharded_metrics, sharded_results = r0["full"]
    assert metrics_to_json(sharded_metrics) == metrics_to_json(metrics)  # NaN -> None, then exactly equal
    assert sorted(r["image_id"] for r in sharded_results) == sorted(r["image_id"] for r in results)

    first3, _ = evaluate(val, limit=3)  # the first 3 images overall, 2 on rank 0 and 1 on rank 1
    assert metrics_to_json(r0["first3"][0]) == metrics_to_json(first3)
    assert len({r["image_id"] for r in r0["first3"][1]}) == 3
