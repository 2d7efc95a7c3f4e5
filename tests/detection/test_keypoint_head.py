import torch

from detection.keypoint_head import KeypointRCNNHead, heatmaps_to_keypoints, keypoint_loss, keypoint_targets


def test_head_shape_and_empty_graph():
    head = KeypointRCNNHead(8, 5, conv_dim=16, num_convs=2, norm="GN")
    assert head(torch.randn(2, 8, 14, 14)).shape == (2, 5, 56, 56)
    assert head.num_keypoints == 5
    out = head(torch.zeros(0, 8, 14, 14))
    loss = keypoint_loss(out, torch.zeros(0, 5, dtype=torch.int64), torch.zeros(0, 5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_targets():
    gt = torch.tensor([[[10.0, 10, 2], [39.9, 20, 1], [5, 5, 2], [30, 30, 0], [40, 40, 2]]])  # (1, 5, 3)
    box = torch.tensor([[8.0, 8, 40, 40]])
    idx, valid = keypoint_targets(gt, torch.tensor([0]), box, 4)       # cells are 8 px
    assert valid.tolist() == [[True, True, False, False, True]]       # outside box; invisible
    assert idx[0, 0] == 0                 # (10, 10) -> cell (0, 0)
    assert idx[0, 1] == 1 * 4 + 3         # (39.9, 20) -> row 1, col 3
    assert idx[0, 4] == 15                # on the right/bottom edge -> last cell


def test_loss_is_spatial_cross_entropy():
    hm = torch.zeros(1, 2, 2, 2)
    hm[0, 0, 1, 0] = 10.0
    target = torch.tensor([[2, 3]])
    valid = torch.tensor([[True, False]])
    assert keypoint_loss(hm, target, valid) < 1e-3
    valid = torch.tensor([[False, True]])
    torch.testing.assert_close(keypoint_loss(hm, target, valid), torch.log(torch.tensor(4.0)))


def test_decode_to_image_coordinates():
    s = 8
    hm = torch.full((1, 2, s, s), -5.0)
    hm[0, 0, 2, 5] = 5.0                                    # keypoint 0 peaks at row 2, col 5
    hm[0, 1, 4, 4] = 5.0                                    # keypoint 1: symmetric neighbours
    hm[0, 1, 4, 3] = 2.0
    hm[0, 1, 4, 5] = 2.0
    box = torch.tensor([[16.0, 32, 32, 48]])               # 2 px per cell
    kp = heatmaps_to_keypoints(hm, box, subpixel=False)
    assert kp.shape == (1, 2, 3)
    torch.testing.assert_close(kp[0, 0, :2], torch.tensor([16 + 5.5 * 2, 32 + 2.5 * 2]))
    assert 0.9 < kp[0, 0, 2] <= 1.0
    # sub-pixel: a symmetric peak stays put, an asymmetric one moves toward the larger neighbour
    hm[0, 0, 2, 6] = 4.0
    ref = heatmaps_to_keypoints(hm, box, subpixel=True)
    torch.testing.assert_close(ref[0, 1, :2], torch.tensor([16 + 4.5 * 2, 32 + 4.5 * 2]))
    assert 16 + 5.5 * 2 < ref[0, 0, 0] < 16 + 6.5 * 2
    assert heatmaps_to_keypoints(hm[:0], box[:0]).shape == (0, 2, 3)
