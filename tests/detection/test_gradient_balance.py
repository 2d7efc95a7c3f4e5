"""No RoI branch takes the shared features from the box branch (detection/gradient_balance.py)."""
import dataclasses

import pytest
import torch

from detection.build import build_model
from detection.gradient_balance import TrunkGradientBalance
from common.image_list import ImageList
from test_generalized_rcnn import shapes_cfg


def test_cap_scales_an_auxiliary_gradient_to_the_box_branch_norm():
    bal = TrunkGradientBalance(ratio=1.0, momentum=0.5).train()
    box = torch.ones(2, 3, requires_grad=True)
    aux = torch.ones(2, 3, requires_grad=True)
    # first pass: the box branch's gradient norm (2 * sqrt(6)) becomes the reference
    (bal.reference(box) * 2).sum().backward()
    assert bal.box_grad_norm.item() == pytest.approx(2 * 6 ** 0.5)
    (bal.cap(aux) * 10).sum().backward()                   # norm 10 * sqrt(6): capped to 2 * sqrt(6)
    assert aux.grad.norm().item() == pytest.approx(2 * 6 ** 0.5, rel=1e-5)
    assert torch.allclose(aux.grad, torch.full((2, 3), 2.0))  # direction kept
    small = torch.ones(2, 3, requires_grad=True)
    (bal.cap(small) * 0.5).sum().backward()                # below the cap: untouched
    assert torch.equal(small.grad, torch.full((2, 3), 0.5))
    (bal.reference(box) * 4).sum().backward()              # running mean: 0.5 * old + 0.5 * new
    assert bal.box_grad_norm.item() == pytest.approx(0.5 * 2 * 6 ** 0.5 + 0.5 * 4 * 6 ** 0.5)


def test_cap_is_off_at_ratio_zero_and_in_eval_mode():
    x = torch.ones(3, requires_grad=True)
    off = TrunkGradientBalance(ratio=0.0).train()
    assert off.cap(x) is x and off.reference(x) is x
    bal = TrunkGradientBalance().eval()
    assert bal.cap(x) is x and bal.reference(x) is x
    assert "box_grad_norm" in bal.state_dict()              # resumed runs keep the running mean
    from common.engine.checkpoint import load_model_state

    old = torch.nn.Sequential(TrunkGradientBalance())
    old[0].box_grad_norm.fill_(3.0)
    load_model_state(old, {}, "a checkpoint from before the balance existed")
    assert old[0].box_grad_norm.item() == 0.0


P = 3


def _batch(g):
    """Two 64 px images with the same two coloured boxes; keypoint labels drawn at random inside
    each box every step: a keypoint loss that cannot fall, as with noisy labels."""
    images = []
    for _ in range(2):
        im = torch.rand(3, 64, 64, generator=g) * 0.2
        im[:, 8:30, 10:34] += torch.tensor([0.8, 0.1, 0.1])[:, None, None]
        im[:, 34:60, 30:58] += torch.tensor([0.1, 0.8, 0.1])[:, None, None]
        images.append(im.clamp(0, 1))
    boxes = torch.tensor([[10.0, 8, 34, 30], [30, 34, 58, 60]])
    targets = []
    for _ in range(2):
        kp = torch.full((2, P, 3), 2.0)
        lo, size = boxes[:, None, :2], boxes[:, None, 2:] - boxes[:, None, :2]
        kp[..., :2] = lo + torch.rand(2, P, 2, generator=g) * size
        targets.append({"gt_boxes": boxes.clone(), "gt_classes": torch.tensor([0, 1]), "gt_keypoints": kp})
    return ImageList.from_tensors(images, 32, 0.45), targets


def _classifier_loss_curve(keypoint_on: bool, cap: float, steps: int = 12) -> list[float]:
    torch.manual_seed(0)
    cfg = shapes_cfg(keypoint_on=keypoint_on, mask_on=False)
    cfg = dataclasses.replace(
        cfg, backbone=dataclasses.replace(cfg.backbone, fpn_channels=32),
        box_head=dataclasses.replace(cfg.box_head, fc_dim=64),
        roi_heads=dataclasses.replace(cfg.roi_heads, aux_grad_cap=cap, batch_size_per_image=32),
        # a keypoint branch that dominates: 10x its loss, so its gradient dwarfs the box branch's
        keypoint_head=dataclasses.replace(cfg.keypoint_head, conv_dim=16, num_convs=1, loss_weight=10.0))
    model = build_model(cfg, 2, P, list(range(P)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    curve = []
    for _ in range(steps):
        images, targets = _batch(g)
        _, losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        curve.append(float(losses["loss_cls"].detach()))
    return curve


@pytest.mark.slow
def test_box_classifier_learns_as_fast_with_a_noisy_keypoint_head():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = _classifier_loss_curve(keypoint_on=False, cap=1.0)
        balanced = _classifier_loss_curve(keypoint_on=True, cap=1.0)
        unbalanced = _classifier_loss_curve(keypoint_on=True, cap=0.0)
    finally:
        torch.set_num_threads(threads)

    def late(curve):
        return sum(curve[4:]) / len(curve[4:])
    # with the cap the classifier's loss falls about as it does without a keypoint head; without
    # it the keypoint branch holds it back (mean over steps 4-11 for three draws of the noisy
    # labels, alone / capped / uncapped: 0.30 / 0.36 / 0.56, 0.31 / 0.38 / 0.54, 0.34 / 0.36 / 0.49)
    assert late(balanced) < late(alone) + 0.1, (alone, balanced)
    assert late(unbalanced) > late(balanced) + 0.1, (balanced, unbalanced)
