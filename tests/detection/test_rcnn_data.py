"""R-CNN's proposal file reader and the dataset that adds ``proposal_boxes`` in the model's frame."""
import json

import numpy as np
import pytest
import torch

from detection.data import CocoDetection, DatasetError, build_transforms
from detection.rcnn_data import WithProposals, proposals_to_model_frame, read_proposals


def write(tmp_path, obj, name="p.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_read_round_trip_and_model_frame(tmp_path):
    path = write(tmp_path, {"3": {"boxes": [[0, 0, 10, 20], [5, 5, 5, 9]], "scores": [0.9, 0.1]},
                            "7": {"boxes": [], "scores": []}, "_header": {"mode": "fast"}})
    props = read_proposals(path)
    assert set(props) == {3, 7} and props[7].shape == (0, 4)
    np.testing.assert_array_equal(props[3], np.array([[0, 0, 10, 20], [5, 5, 5, 9]], np.float32))
    # 100 x 200 on disk -> 50 x 100: halved; the zero-width box is dropped; clipped to the image
    out = proposals_to_model_frame(np.array([[0, 0, 10, 20], [5, 5, 5, 9], [150, 10, 260, 60]], np.float32),
                                   (100, 200), (50, 100))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 5.0, 10.0], [75.0, 5.0, 100.0, 30.0]]))


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "the top level must be an object"),
    ("{nope", "is not valid JSON"),
    ({"x": {"boxes": []}}, "key 'x' is not a COCO image id"),
    ({"4": {"scores": []}}, "image id 4: the entry must be an object with 'boxes'"),
    ({"4": {"boxes": [[1, 2, 3]]}}, r"image id 4: 'boxes' must be a list of \[x0, y0, x1, y1\], got shape \(1, 3\)"),
    ({"4": {"boxes": [[5, 0, 1, 10]]}}, r"image id 4: box \[5.0, 0.0, 1.0, 10.0\] is not finite or has x1 < x0"),
])
def test_bad_files_name_the_file_image_and_value(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(DatasetError, match=f"proposal file {path}.*{message}"):
        read_proposals(path)
    with pytest.raises(DatasetError, match="proposal file .*missing.json does not exist"):
        read_proposals(tmp_path / "missing.json")


def test_dataset_adds_proposals_and_refuses_a_file_of_other_images(shapes_dir, tmp_path):
    val = CocoDetection(shapes_dir / "val.json", shapes_dir / "val", use_masks=False, use_keypoints=False)
    val.transforms = build_transforms(val.meta, train=False, min_size=48, max_size=64)
    props = {i: np.array([[0, 0, 48, 48], [10, 20, 30, 40]], np.float32) for i in val.ids}
    ds = WithProposals(val, props, "p.json")
    image, target = ds[0]
    assert len(ds) == len(val) and ds.meta is val.meta and ds.coco is val.coco
    h, w = image.shape[-2:]
    oh, ow = target["orig_size"].tolist()
    torch.testing.assert_close(target["proposal_boxes"][1],
                               torch.tensor([10 * w / ow, 20 * h / oh, 30 * w / ow, 40 * h / oh]))
    del props[val.ids[2]]
    with pytest.raises(DatasetError, match=f"proposal file p.json has no entry for image id {val.ids[2]} "
                                           r"\(1 of 6 images missing\); was it made for"):
        WithProposals(val, props, "p.json")
