"""Keypoint flip pairs read off the names (detection/data/keypoint_flip.py) and the warning for
sided keypoints that have no pair."""
import pytest

from detection.build import flip_map_notes
from detection.data import DatasetMeta
from detection.data.keypoint_flip import derive_flip_map, sided_keypoints


@pytest.mark.parametrize("names, pairs", [
    (["apex", "left", "right"], [("left", "right")]),
    (["nose", "left_hand", "right_hand", "left_foot", "right_foot"],
     [("left_hand", "right_hand"), ("left_foot", "right_foot")]),
    (["LeftEye", "RightEye", "Nose"], [("LeftEye", "RightEye")]),
    (["eye_l", "eye_r", "l-knee", "r-knee"], [("eye_l", "eye_r"), ("l-knee", "r-knee")]),
    (["tail", "wingL", "wingR"], [("wingL", "wingR")]),
    (["left_eye", "right_ear"], []),          # sided, but no mirror of either
    (["lid", "rim", "lr"], []),               # 'l' / 'r' only count as whole tokens
])
def test_pairs_from_names(names, pairs):
    assert derive_flip_map(names) == pairs


def test_sided_without_pair_is_a_warning_that_names_them_and_the_key():
    meta = DatasetMeta(["a"], [1], keypoint_names=["left_eye", "right_ear", "nose"], keypoint_classes=[0])
    assert sided_keypoints(meta.keypoint_names) == ["left_eye", "right_ear"]
    notes = flip_map_notes(meta)
    assert notes[0] == "keypoint flip pairs: none (every keypoint keeps its name under a horizontal flip)"
    assert notes[1].startswith("warning: keypoints ['left_eye', 'right_ear'] look sided but have no flip pair")
    assert "data.keypoint_flip_map=" in notes[1] and "data.hflip_prob=0" in notes[1]
    paired = DatasetMeta(["a"], [1], keypoint_names=["left", "right"], keypoint_flip_map=[("left", "right")])
    assert flip_map_notes(paired) == ["keypoint flip pairs: left<->right"]
