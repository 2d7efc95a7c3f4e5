"""Proposal files: round trip, checks with messages, the stale-file refusal, recall / MABO."""
import json
import os

import numpy as np
import pytest

from detection.proposals import (ProposalError, box_iou, check_header, load_proposals, make_header,
                                 proposal_recall, read_header, save_proposals)


def test_round_trip_keeps_order_and_values(tmp_path):
    boxes = np.array([[0, 0, 10, 10], [1.5, 2.25, 3, 4.5], [5, 5, 5, 9]], np.float32)  # a zero-width box is fine
    path = tmp_path / "p.json"
    save_proposals(path, {7: {"boxes": boxes, "scores": [0.9, 0.5, 0.1]}, 3: {"boxes": np.zeros((0, 4))}},
                   header={"mode": "fast"})
    out = load_proposals(path)
    assert set(out) == {7, 3}
    np.testing.assert_array_equal(out[7]["boxes"], boxes)
    np.testing.assert_allclose(out[7]["scores"], [0.9, 0.5, 0.1])
    assert out[3]["boxes"].shape == (0, 4) and out[3]["scores"].shape == (0,)
    assert load_proposals(path, [7], max_proposals=2)[7]["boxes"].shape == (2, 4)
    assert read_header(path) == {"mode": "fast"}
    assert "_header" in json.loads(path.read_text())


def test_binary_round_trip_matches_the_json(tmp_path):
    props = {7: {"boxes": np.array([[0, 0, 10, 10], [1.5, 2.25, 3, 4.5]], np.float32), "scores": [0.9, 0.5]},
             3: {"boxes": np.zeros((0, 4))}, 5: {"boxes": [[1, 1, 2, 2]]}}
    save_proposals(tmp_path / "p.json", props, header={"mode": "fast"})
    save_proposals(tmp_path / "p.npz", props, header={"mode": "fast"})
    a, b = load_proposals(tmp_path / "p.json"), load_proposals(tmp_path / "p.npz")
    assert list(a) == list(b) == [7, 3, 5]
    for i in a:
        np.testing.assert_array_equal(a[i]["boxes"], b[i]["boxes"])
        np.testing.assert_allclose(a[i]["scores"], b[i]["scores"])
    assert read_header(tmp_path / "p.npz") == {"mode": "fast"}
    save_proposals(tmp_path / "q.npz", props)
    assert read_header(tmp_path / "q.npz") is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ProposalError, match="bad.npz is not a proposal .npz"):
        load_proposals(tmp_path / "bad.npz")


def test_a_file_made_elsewhere_without_scores_or_header_is_accepted(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"12": {"boxes": [[1, 2, 3, 4], [0, 0, 5, 5]]}}))
    out = load_proposals(path, [12])
    np.testing.assert_allclose(out[12]["scores"], [1.0, 0.5])
    assert read_header(path) is None
    check_header(None, path, {12: path})  # no header: nothing to refuse


@pytest.mark.parametrize("content, message", [
    ({"1": {"boxes": [[0, 0, 1]]}}, r"image id 1: 'boxes' must be a list of \[x0, y0, x1, y1\], got shape \(1, 3\)"),
    ({"1": {"boxes": [[5, 0, 1, 4]]}}, r"image id 1: box \[5.0, 0.0, 1.0, 4.0\] is not finite or has x1 < x0"),
    ({"1": {"boxes": [[0, 0, 1, 1]], "scores": [1, 2]}}, "image id 1: 1 boxes but 2 scores"),
    ({"one": {"boxes": []}}, "key 'one' is not a COCO image id"),
    ([1, 2], "the top level must be an object"),
])
def test_bad_files_name_the_file_the_image_and_the_value(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ProposalError, match=message) as e:
        load_proposals(path)
    assert str(path) in str(e.value)


def test_missing_file_and_missing_image(tmp_path):
    with pytest.raises(ProposalError, match="does not exist .make it with tools/compute_proposals.py"):
        load_proposals(tmp_path / "nope.json")
    path = tmp_path / "p.json"
    save_proposals(path, {1: {"boxes": [[0, 0, 1, 1]]}})
    with pytest.raises(ProposalError, match=r"has no entry for image id 2 \(1 of the 2 images are missing\)"):
        load_proposals(path, [1, 2])


def test_stale_file_is_refused_saying_which(tmp_path):
    images = {}
    for i in (1, 2):
        images[i] = tmp_path / f"{i}.png"
        images[i].write_bytes(b"x" * (10 + i))
    header = make_header("fast", images, max_proposals=2000)
    check_header(header, "p.json", images, mode="fast", exact_image_set=True, params={"max_proposals": 2000})
    with pytest.raises(ProposalError, match="made in mode 'fast', not 'quality'"):
        check_header(header, "p.json", images, mode="quality")
    with pytest.raises(ProposalError, match="made with max_proposals=2000, not 100"):
        check_header(header, "p.json", images, params={"max_proposals": 100})
    with pytest.raises(ProposalError, match=r"another image set: it lacks image id 3 \(1 missing\)"):
        check_header(header, "p.json", {**images, 3: images[1]})
    check_header(header, "p.json", {1: images[1]})  # a subset (training set without empty images) is fine
    with pytest.raises(ProposalError, match=r"another image set: it has image id 2 that is not among these images"):
        check_header(header, "p.json", {1: images[1]}, exact_image_set=True)
    images[2].write_bytes(b"y" * 40)
    with pytest.raises(ProposalError, match=r"made from other files: image id 2 was 2.png \(12 bytes\), now 2.png \(40 bytes"):
        check_header(header, "p.json", images)
    images[2].write_bytes(b"x" * 12)  # same size, but rewritten later
    os.utime(images[2], ns=(1, 1))
    with pytest.raises(ProposalError, match="image id 2 was 2.png .12 bytes., now 2.png .12 bytes, modified since"):
        check_header(header, "p.json", images)


def test_recall_and_mabo_on_hand_made_boxes():
    gt = {1: (np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([5, 6])),
          2: (np.array([[0, 0, 10, 10]]), np.array([5])), 3: (np.zeros((0, 4)), np.zeros(0))}
    proposals = {1: np.array([[0, 0, 10, 10], [20, 20, 30, 35]]),  # IoU 1 and 100/150
                 2: np.array([[0, 0, 10, 20]])}  # IoU 0.5
    r = proposal_recall(proposals, gt)
    assert r["recall@0.5"] == pytest.approx(100.0)
    assert r["recall@0.7"] == pytest.approx(100 / 3)
    assert r["ABO"] == pytest.approx(100 * (1 + 2 / 3 + 0.5) / 3)
    assert r["MABO"] == pytest.approx(100 * ((1 + 0.5) / 2 + 2 / 3) / 2)  # class 5: (1 + .5) / 2; class 6: 2/3
    assert r["num_gt"] == 3 and r["boxes_per_image"] == pytest.approx(1.0)
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [5, 5, 5, 6]]), [[1 / 7, 0]])
