import torch

from detection.box_head import ConvFCHead, FastRCNNPredictor
from detection.keypoint_head import KeypointRCNNHead
from detection.mask_head import MaskRCNNHead
from detection.poolers import RoIPooler
from detection.roi_heads import RoIHeads, sample_proposals

K, P = 3, 4


def test_sample_proposals_labels_and_adds_gt():
    torch.manual_seed(0)
    props = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 14]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    out = sample_proposals(props, gt, torch.tensor([2]), K, (0.5, 0.5), 16, 0.5)
    # proposals 0, 2 (IoU 0.71) and the added gt box are class 2; proposal 1 is background (K)
    assert sorted(out["gt_classes"].tolist()) == [2, 2, 2, K]
    assert out["gt_classes"][:3].tolist() == [2, 2, 2]               # positives first
    assert len(out["proposal_boxes"]) == 4 and (out["matched_idxs"] == 0).all()
    empty = sample_proposals(props, gt[:0], torch.zeros(0, dtype=torch.int64), K, (0.5, 0.5), 2, 0.5)
    assert empty["gt_classes"].tolist() == [K, K]
    between = sample_proposals(props, gt, torch.tensor([1]), K, (0.3, 0.8), 16, 0.5, add_gt_as_proposals=False)
    # IoU 1.0 -> class 1, IoU 0 -> background, IoU 0.71 (between 0.3 and 0.8) is never sampled
    assert between["gt_classes"].tolist() == [1, K]


def make_heads():
    torch.manual_seed(0)
    scales = [1 / 4, 1 / 8]
    return RoIHeads(
        K, ["p2", "p3"], RoIPooler(7, scales, 2), ConvFCHead(8, 7, fc_dim=32), FastRCNNPredictor(32, K),
        batch_size_per_image=32, detections_per_img=10, score_thresh=0.0,
        mask_pooler=RoIPooler(14, scales, 2), mask_head=MaskRCNNHead(8, K, conv_dim=8, num_convs=1),
        keypoint_pooler=RoIPooler(14, scales, 2), keypoint_head=KeypointRCNNHead(8, P, conv_dim=8, num_convs=1))


def make_targets():
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:40, 8:30] = 1
    kps = torch.tensor([[[12.0, 12, 2], [20, 30, 2], [25, 15, 1], [0, 0, 0]]])
    return [
        {"image_id": 1, "gt_boxes": torch.tensor([[8.0, 10, 30, 40]]), "gt_classes": torch.tensor([1]),
         "gt_masks": masks, "gt_keypoints": kps},
        {"image_id": 2, "gt_boxes": torch.zeros(0, 4), "gt_classes": torch.zeros(0, dtype=torch.int64),
         "gt_masks": torch.zeros(0, 64, 64, dtype=torch.uint8), "gt_keypoints": torch.zeros(0, P, 3)},
    ]


def test_train_and_eval_with_half_empty_targets():
    heads = make_heads()
    feats = {"p2": torch.randn(2, 8, 16, 16), "p3": torch.randn(2, 8, 8, 8)}
    props = [torch.tensor([[6.0, 8, 28, 42], [30, 30, 60, 60]]), torch.tensor([[0.0, 0, 20, 20]])]
    preds, losses = heads(feats, props, [(64, 64), (64, 64)], make_targets())
    assert preds == []
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask", "loss_keypoint"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in heads.parameters())

    heads.eval()
    preds, losses = heads(feats, props, [(64, 64), (48, 40)], make_targets())
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask", "loss_keypoint"}
    assert len(preds) == 2
    p = preds[1]
    r = len(p["pred_boxes"])
    assert 0 < r <= 10
    assert p["pred_mask_probs"].shape[0] == r and p["pred_keypoints"].shape == (r, P, 3)
    assert p["pred_boxes"][:, 2].max() <= 40 and p["pred_classes"].max() < K
    preds, losses = heads(feats, props, [(64, 64), (48, 40)])
    assert losses == {} and len(preds) == 2


def test_mask_and_keypoint_loss_weights_scale_only_their_terms():
    feats = {"p2": torch.randn(1, 8, 16, 16), "p3": torch.randn(1, 8, 8, 8)}
    props = [torch.tensor([[6.0, 8, 28, 42], [30, 30, 60, 60]])]
    losses = []
    for weight in (1.0, 2.5):
        heads = make_heads()  # the same seeded weights and sampling each time
        heads.mask_loss_weight = heads.keypoint_loss_weight = weight
        torch.manual_seed(1)
        losses.append(heads(feats, props, [(64, 64)], make_targets()[:1])[1])
    for name in ("loss_mask", "loss_keypoint"):
        assert torch.allclose(losses[1][name], 2.5 * losses[0][name])
    for name in ("loss_cls", "loss_box"):
        assert torch.equal(losses[1][name], losses[0][name])


def test_no_positives_still_reaches_every_parameter():
    heads = make_heads()
    feats = {"p2": torch.randn(1, 8, 16, 16), "p3": torch.randn(1, 8, 8, 8)}
    t = make_targets()[1:]
    _, losses = heads(feats, [torch.tensor([[0.0, 0, 20, 20]])], [(64, 64)], t)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_keypoint"].item() == 0.0
    assert losses["loss_cls"] > 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in heads.parameters())


def test_instances_without_keypoints_do_not_train_the_keypoint_head():
    heads = make_heads()
    feats = {"p2": torch.randn(1, 8, 16, 16), "p3": torch.randn(1, 8, 8, 8)}
    t = make_targets()[:1]
    t[0]["gt_keypoints"] = torch.zeros(1, P, 3)  # a class without keypoints
    _, losses = heads(feats, [torch.tensor([[6.0, 8, 28, 42]])], [(64, 64)], t)
    assert losses["loss_keypoint"].item() == 0.0 and losses["loss_mask"] > 0


def test_keypoints_only_for_keypoint_classes():
    """At inference the keypoint head runs on detections of keypoint classes only; others get zeros."""
    torch.manual_seed(0)
    from detection.build import build_roi_heads
    from detection.config import ModelConfig
    from common.backbones import build_backbone

    cfg = ModelConfig()
    cfg.keypoint_on = True
    cfg.roi_heads.score_thresh = 0.0
    backbone = build_backbone("resnet18", out_features=("c2", "c3", "c4", "c5"), fpn=True, fpn_channels=32)
    heads = build_roi_heads(cfg, backbone, num_classes=3, num_keypoints=2, res5=None, keypoint_classes=[1]).eval()
    feats = {f"p{i}": torch.randn(1, 32, 64 // 2 ** i, 64 // 2 ** i) for i in range(2, 6)}
    proposals = [torch.tensor([[2.0, 2.0, 30.0, 30.0], [10.0, 5.0, 50.0, 40.0]])]
    preds, _ = heads(feats, proposals, [(64, 64)])
    p = preds[0]
    assert len(p["pred_classes"]) > 0 and (p["pred_classes"] != 1).any()
    other = p["pred_classes"] != 1
    assert (p["pred_keypoints"][other] == 0).all()
    if (~other).any():
        assert (p["pred_keypoints"][~other][..., 2] > 0).all()


def test_mask_rois_per_image_caps_the_mask_and_keypoint_rois_only():
    feats = {"p2": torch.randn(2, 8, 16, 16), "p3": torch.randn(2, 8, 8, 8)}
    props = [torch.tensor([[6.0, 8, 28, 42], [7, 9, 29, 41], [8, 10, 31, 40], [30, 30, 60, 60]]),
             torch.tensor([[0.0, 0, 20, 20]])]
    seen = {}

    def count(name):
        return lambda module, inputs: seen.__setitem__(name, len(inputs[0]))

    for cap, mask_rois in ((0, 4), (2, 2)):  # 3 proposals + the gt box are foreground in image 1
        heads = make_heads()
        heads.mask_rois_per_image = cap
        for name in ("box_head", "mask_head", "keypoint_head"):
            getattr(heads, name).register_forward_pre_hook(count(name))
        _, losses = heads(feats, props, [(64, 64), (64, 64)], make_targets())
        assert seen == {"box_head": 5 + 1, "mask_head": mask_rois, "keypoint_head": mask_rois}
        assert torch.isfinite(sum(losses.values()))


def test_keypoints_reuse_the_mask_pooling_and_match_a_separate_pooler():
    heads = make_heads().eval()
    feats = {"p2": torch.randn(2, 8, 16, 16), "p3": torch.randn(2, 8, 8, 8)}
    props = [torch.tensor([[6.0, 8, 28, 42], [30, 30, 60, 60]]), torch.tensor([[0.0, 0, 20, 20]])]
    calls = []
    heads.keypoint_pooler.register_forward_hook(lambda *a: calls.append(1))
    shared, _ = heads(feats, props, [(64, 64), (48, 40)])
    assert calls == []  # same settings as the mask pooler: its features are reused
    heads.keypoint_classes = [1, 2]  # a subset of the detections: rows of the shared pooling
    subset, _ = heads(feats, props, [(64, 64), (48, 40)])
    heads.keypoint_pooler.settings = lambda: ()  # force the keypoint pooler's own call
    own, _ = heads(feats, props, [(64, 64), (48, 40)])
    assert len(calls) == 1
    for a, b, c in zip(shared, subset, own):
        assert len(a["pred_keypoints"]) > 0
        keep = (a["pred_classes"] >= 1)[:, None, None]
        torch.testing.assert_close(c["pred_keypoints"], torch.where(keep, a["pred_keypoints"], 0.0))
        torch.testing.assert_close(b["pred_keypoints"], c["pred_keypoints"])
        assert torch.equal(a["pred_mask_probs"], c["pred_mask_probs"])


def test_training_keypoints_reuse_the_mask_pooling_with_the_same_losses_and_gradients():
    feats = {"p2": torch.randn(2, 8, 16, 16), "p3": torch.randn(2, 8, 8, 8)}
    props = [torch.tensor([[6.0, 8, 28, 42], [30, 30, 60, 60]]), torch.tensor([[0.0, 0, 20, 20]])]
    results = []
    for separate in (False, True):
        heads = make_heads()  # the same seeded weights each time
        calls = []
        heads.keypoint_pooler.register_forward_hook(lambda *a: calls.append(1))
        if separate:
            heads.keypoint_pooler.settings = lambda: ()  # force the keypoint pooler's own call
        x = {k: v.clone().requires_grad_() for k, v in feats.items()}
        targets = make_targets()  # image 1 gets a second object, without keypoints: not every
        t = targets[0]            # foreground RoI goes to the keypoint head
        mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
        mask[0, 32:58, 32:58] = 1
        t["gt_boxes"] = torch.cat([t["gt_boxes"], torch.tensor([[30.0, 30, 60, 60]])])
        t["gt_classes"] = torch.tensor([1, 2])
        t["gt_masks"] = torch.cat([t["gt_masks"], mask])
        t["gt_keypoints"] = torch.cat([t["gt_keypoints"], torch.zeros(1, P, 3)])
        kp_rois = []
        heads.keypoint_head.register_forward_pre_hook(lambda m, inputs: kp_rois.append(len(inputs[0])))
        mask_rois = []
        heads.mask_head.register_forward_pre_hook(lambda m, inputs: mask_rois.append(len(inputs[0])))
        torch.manual_seed(1)  # the same sampled RoIs
        _, losses = heads(x, props, [(64, 64), (64, 64)], targets)
        assert 0 < kp_rois[0] < mask_rois[0]
        sum(losses.values()).backward()
        assert calls == ([1] if separate else [])
        results.append((losses, {k: v.grad for k, v in x.items()}, [p.grad for p in heads.parameters()]))
    (shared_losses, shared_feat_grads, shared_grads), (own_losses, own_feat_grads, own_grads) = results
    assert shared_losses["loss_keypoint"] > 0
    for name in shared_losses:
        torch.testing.assert_close(shared_losses[name], own_losses[name])
    for name in feats:  # the gradient into the shared features: the two branches' parts summed
        torch.testing.assert_close(shared_feat_grads[name], own_feat_grads[name])
    for a, b in zip(shared_grads, own_grads):
        torch.testing.assert_close(a, b)


def test_branch_score_thresh_runs_the_mask_and_keypoint_heads_on_confident_detections_only():
    heads = make_heads().eval()
    feats = {"p2": torch.randn(2, 8, 16, 16), "p3": torch.randn(2, 8, 8, 8)}
    props = [torch.tensor([[6.0, 8, 28, 42], [30, 30, 60, 60]]), torch.tensor([[0.0, 0, 20, 20]])]
    every, _ = heads(feats, props, [(64, 64), (48, 40)])
    heads.branch_score_thresh = float(torch.cat([p["scores"] for p in every]).median())
    seen = []
    heads.mask_head.register_forward_hook(lambda m, a, out: seen.append(len(out)))
    some, _ = heads(feats, props, [(64, 64), (48, 40)])
    run = [p["scores"] >= heads.branch_score_thresh for p in every]
    assert seen == [int(sum(r.sum() for r in run))] and 0 < seen[0] < sum(len(r) for r in run)
    for a, b, r in zip(every, some, run):
        assert torch.equal(a["pred_boxes"], b["pred_boxes"])
        torch.testing.assert_close(b["pred_mask_probs"][r], a["pred_mask_probs"][r])
        torch.testing.assert_close(b["pred_keypoints"][r], a["pred_keypoints"][r])
        assert b["pred_mask_probs"][~r].abs().sum() == 0 and b["pred_keypoints"][~r].abs().sum() == 0
    heads.branch_score_thresh = 2.0  # no detection qualifies
    none, _ = heads(feats, props, [(64, 64), (48, 40)])
    assert all(p["pred_mask_probs"].abs().sum() == 0 and p["pred_keypoints"].abs().sum() == 0 for p in none)
