"""collate, aspect-ratio grouping and the train/test loaders (exact resume, workers don't matter)."""
import itertools

import pytest
import torch
from test_coco_data import write_coco  # tests/detection is on sys.path (rootdir-relative test modules)

from common.image_list import collate
from common.loaders import build_test_loader
from common.samplers import InfiniteSampler
from detection.data import AspectRatioGroupedBatches, CocoDetection, build_train_loader, build_transforms



def make_dataset(root, train=True):
    """8 images alternating landscape 48x64 / portrait 64x40, one square per image (id 1 + i)."""
    images, anns = [], []
    for i in range(8):
        h, w = (48, 64) if i % 2 == 0 else (64, 40)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        x, y = 4 + i, 6 + i
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": 5, "bbox": [x, y, 20, 16], "iscrowd": 0,
                     "area": 320, "segmentation": [[x, y, x + 20, y, x + 20, y + 16, x, y + 16]]})
    data = {"images": images, "annotations": anns, "categories": [{"id": 5, "name": "box"}]}
    ann, image_root = write_coco(root, data)
    ds = CocoDetection(ann, image_root)
    ds.transforms = build_transforms(ds.meta, train=train, min_size=(32, 40) if train else 32, max_size=64,
                                     hflip_prob=0.5, color_jitter=0.5 if train else 0.0)
    return ds


def same_batches(a, b):
    for (ia, ta), (ib, tb) in zip(a, b):
        assert ia.image_sizes == ib.image_sizes and torch.equal(ia.tensor, ib.tensor)
        for x, y in zip(ta, tb):
            assert x["image_id"] == y["image_id"]
            assert torch.equal(x["gt_boxes"], y["gt_boxes"]) and torch.equal(x["gt_masks"], y["gt_masks"])
    return True


def test_collate_pads_to_divisibility():
    a = torch.full((3, 20, 30), 255, dtype=torch.uint8)
    b = torch.zeros((3, 33, 10), dtype=torch.uint8)
    images, targets = collate([(a, {"image_id": 1}), (b, {"image_id": 2})], size_divisibility=16,
                              pad_value=(0.5, 0.25, 0.0))
    assert images.tensor.shape == (2, 3, 48, 32) and images.image_sizes == [(20, 30), (33, 10)]
    assert images.tensor[0, :, :20, :30].min() == 1.0  # uint8 -> [0, 1]
    assert images.tensor[0, :, 20:, :].reshape(3, -1).mean(1).tolist() == [0.5, 0.25, 0.0]  # padding
    assert [t["image_id"] for t in targets] == [1, 2]


def test_aspect_ratio_grouping_is_pure_and_deterministic():
    ratios = [1.5, 0.5, 1.0, 0.8, 2.0, 0.6, 1.2]
    batches = list(itertools.islice(AspectRatioGroupedBatches(InfiniteSampler(7, seed=1), ratios, 3), 20))
    for batch in batches:
        assert len(batch) == 3
        assert len({ratios[i] >= 1.0 for i in batch}) == 1
    again = list(itertools.islice(AspectRatioGroupedBatches(InfiniteSampler(7, seed=1), ratios, 3), 20))
    assert batches == again
    stream = [2, 1, 0, 3, 4, 5]  # landscape 2, 0, 4 fill a batch before the portraits 1, 3, 5
    assert list(AspectRatioGroupedBatches(stream, ratios, 3)) == [[2, 0, 4], [1, 3, 5]]


def test_train_loader_groups_resumes_and_ignores_workers(tmp_path):
    ds = make_dataset(tmp_path)
    kwargs = dict(batch_size=2, size_divisibility=32, pad_value=0.5, seed=4)
    first = list(itertools.islice(build_train_loader(ds, num_workers=0, **kwargs), 5))
    for images, targets in first:
        assert images.tensor.shape[0] == 2 and images.tensor.shape[-1] % 32 == 0
        assert len({h <= w for h, w in images.image_sizes}) == 1  # one orientation per batch
        for t, size in zip(targets, images.image_sizes):
            assert t["gt_boxes"].shape == (1, 4) and t["gt_masks"].shape[-2:] == size
    # augmentation really happens and differs per sample: sizes from (32, 40), flips, colour
    assert len({s for images, _ in first for s in images.image_sizes}) > 2
    resumed = list(itertools.islice(build_train_loader(ds, num_workers=0, start_iter=3, **kwargs), 2))
    assert same_batches(first[3:], resumed)
    with_workers = list(itertools.islice(build_train_loader(ds, num_workers=2, **kwargs), 5))
    assert same_batches(first, with_workers)
    other_seed = itertools.islice(build_train_loader(ds, num_workers=0, **{**kwargs, "seed": 5}), 5)
    ids = [[t["image_id"] for t in targets] for _, targets in first]
    assert [[t["image_id"] for t in targets] for _, targets in other_seed] != ids


def test_train_loader_without_grouping_resumes_and_shards(tmp_path):
    ds = make_dataset(tmp_path)
    kwargs = dict(batch_size=3, size_divisibility=1, pad_value=0.0, seed=0, aspect_ratio_grouping=False)
    first = list(itertools.islice(build_train_loader(ds, num_workers=0, **kwargs), 4))
    ids = [t["image_id"] for _, targets in first for t in targets]
    assert sorted(ids[:8]) == list(range(1, 9))  # the first epoch visits every image once
    resumed = list(itertools.islice(build_train_loader(ds, num_workers=0, start_iter=2, **kwargs), 2))
    assert same_batches(first[2:], resumed)
    r0 = next(build_train_loader(ds, num_workers=0, rank=0, world_size=2, **kwargs))[1]
    r1 = next(build_train_loader(ds, num_workers=0, rank=1, world_size=2, **kwargs))[1]
    assert not {t["image_id"] for t in r0} & {t["image_id"] for t in r1}


def test_test_loader_is_finite_ordered_and_sharded(tmp_path):
    ds = make_dataset(tmp_path, train=False)
    loader = build_test_loader(ds, batch_size=3, num_workers=0, size_divisibility=32, pad_value=0.0)
    batches = list(loader)
    assert len(batches) == 3 and [len(b[1]) for b in batches] == [3, 3, 2]
    assert [t["image_id"] for _, ts in batches for t in ts] == list(range(1, 9))
    assert batches[0][0].image_sizes[:2] == [(32, 43), (51, 32)]  # short side 32 at test time
    shards = [[t["image_id"] for _, ts in build_test_loader(ds, num_workers=0, size_divisibility=32,
                                                                 pad_value=0.0, rank=r, world_size=3) for t in ts]
              for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(1, 9)) and shards[1] == [2, 5, 8]
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\); got rank=3, world_size=3"):
        build_test_loader(ds, num_workers=0, size_divisibility=32, pad_value=0.0, rank=3, world_size=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_error_in_a_worker_is_the_one_line_dataset_error(tmp_path, workers):
    from detection.data import DatasetError

    ds = make_dataset(tmp_path)
    missing = ds.image_root / "3.png"
    missing.unlink()
    loader = build_train_loader(ds, batch_size=8, num_workers=workers, size_divisibility=32, pad_value=0.0,
                                aspect_ratio_grouping=False)
    with pytest.raises(DatasetError) as info:
        next(loader)
    assert str(info.value) == f"image file {missing} (image id 4) does not exist"
