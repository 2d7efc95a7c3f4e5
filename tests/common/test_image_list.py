"""ImageList: uint8 batches until read, the same [0, 1] floats and padding as before, pinnable."""
import pytest
import torch

from common.image_list import ImageList, collate

MEAN = (0.485, 0.456, 0.406)


def former_batch(images, size_divisibility, pad_value):
    """How batches were made before: float32 at once, padding at pad_value, uint8 scaled by 255."""
    h = -(-max(im.shape[1] for im in images) // size_divisibility) * size_divisibility
    w = -(-max(im.shape[2] for im in images) // size_divisibility) * size_divisibility
    batch = torch.empty(len(images), 3, h, w)
    batch[:] = torch.as_tensor(pad_value).reshape(-1, 1, 1)
    for img, out in zip(images, batch):
        out[:, : img.shape[1], : img.shape[2]] = img.float() / 255.0
    return batch


def test_uint8_batch_reads_as_the_former_float_batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 40, 61), generator=g, dtype=torch.uint8),
              torch.randint(0, 256, (3, 70, 33), generator=g, dtype=torch.uint8)]
    batch = ImageList.from_tensors(images, 32, MEAN)
    assert batch._pixels.dtype == torch.uint8 and batch._pixels.shape == (2, 3, 96, 64)  # a quarter of the bytes
    moved = batch.to("cpu")
    assert moved._pixels.dtype == torch.uint8  # what is sent is uint8; the device converts
    assert torch.equal(moved.tensor, former_batch(images, 32, MEAN)) and moved.tensor.dtype == torch.float32
    assert moved.tensor is moved.tensor  # converted once
    images_list, targets = collate([(images[0], {"a": 1}), (images[1], {"a": 2})], 32, 0.5)
    assert torch.equal(images_list.tensor, former_batch(images, 32, 0.5)) and targets == [{"a": 1}, {"a": 2}]


def test_float_images_and_float_tensors_are_used_as_they_are():
    x = torch.rand(1, 3, 32, 32)
    assert ImageList(x, [(32, 32)]).tensor is x
    batch = ImageList.from_tensors([torch.rand(3, 20, 30)], 32, MEAN)
    assert batch.tensor.dtype == torch.float32 and batch.tensor[0, 0, 25, 0] == pytest.approx(MEAN[0])


def test_loaders_pin_memory_when_asked(shapes_dir):
    from common.loaders import build_test_loader
    from detection.data import CocoDetection, build_transforms

    val = CocoDetection(shapes_dir / "val.json", shapes_dir / "val", filter_empty=False)
    val.transforms = build_transforms(val.meta, train=False, min_size=64, max_size=86)
    loader = build_test_loader(val, batch_size=2, num_workers=0, size_divisibility=32, pad_value=MEAN,
                               pin_memory=True)
    assert loader.pin_memory
    if torch.cuda.is_available():  # page-locked uint8 pixels
        images, _ = next(iter(loader))
        assert images._pixels.is_pinned() and images._pixels.dtype == torch.uint8
