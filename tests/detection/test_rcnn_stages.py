"""R-CNN's stages 2-4: the feature cache round trip, resuming a stage, refusing a stale artefact."""
import json

import pytest
import torch

import detection.rcnn_stages as stages
from detection.rcnn_stages import StaleArtefactError, cache_features, fit_regressors, fit_svms, load_feature_cache
from test_rcnn import tiny_rcnn

SETTINGS = {"warp_size": 32, "feat_norm": 20.0}


def toy_dataset(n=5):
    """(image, target) pairs with gt boxes of classes 0/1 and proposals around them."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        gt = torch.tensor([[4.0, 4.0, 30.0, 34.0], [36.0, 8.0, 60.0, 40.0]]) + i
        props = torch.cat([gt + torch.randn(2, 4, generator=g), gt[:, [1, 0, 3, 2]] * 0.5,
                           torch.tensor([[0.0, 30.0, 20.0, 48.0]])])
        target = {"image_id": 10 + i, "gt_boxes": gt, "gt_classes": torch.tensor([i % 2, 1]),
                  "proposal_boxes": props}
        items.append(((torch.rand(3, 48, 64, generator=g) * 255).to(torch.uint8), target))
    return items


def test_feature_cache_round_trip_and_shard_resume(tmp_path, monkeypatch):
    model = tiny_rcnn(num_classes=2).eval()
    data = toy_dataset()
    cache = cache_features(model, data, tmp_path / "f", SETTINGS, "cpu", shard_images=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "f").glob("shard_*.pt")) == ["shard_00000.pt", "shard_00001.pt",
                                                                            "shard_00002.pt"]
    assert cache.image_ids == [10, 11, 12, 13, 14]
    assert cache.num_boxes.tolist() == [7] * 5 and cache.num_gt.tolist() == [2] * 5
    assert cache.features.dtype == torch.float16 and cache.features.shape == (35, 512)
    # the cached rows are the model's features of (gt boxes, then proposals), in the frame given
    image, target = data[3]
    from common.image_list import ImageList
    x = ImageList.from_tensors([image], 32, model.backbone.pixel_mean).tensor
    boxes = torch.cat([target["gt_boxes"], target["proposal_boxes"]])
    with torch.no_grad():
        direct = model.window_features(model.backbone.normalize(x), [boxes])
    rows = list(cache.images())[3]
    torch.testing.assert_close(rows[0], boxes)
    torch.testing.assert_close(rows[1], direct * cache.scale, atol=2e-2 * cache.scale, rtol=2e-3)
    assert rows[2] == 2 and rows[3].tolist() == [1, 1]
    assert abs(float(torch.cat([r[1] for r in cache.images()]).norm(dim=1).mean()) - 20.0) < 0.05

    # a finished stage is read back as it is; an interrupted one redoes only the missing shard
    assert load_feature_cache(tmp_path / "f").image_ids == cache.image_ids
    (tmp_path / "f" / "index.json").unlink()
    (tmp_path / "f" / "shard_00001.pt").unlink()
    calls = []
    real = model.window_features
    monkeypatch.setattr(model, "window_features", lambda x, b: calls.append(1) or real(x, b))
    again = cache_features(model, data, tmp_path / "f", SETTINGS, "cpu", shard_images=2, progress=False)
    assert len(calls) == 2 and again.image_ids == cache.image_ids
    torch.testing.assert_close(again.features.float(), cache.features.float(), atol=2e-2, rtol=2e-3)
    with pytest.raises(StaleArtefactError, match=r"settings.json was made with warp_size = 32 but this run has "
                                                  r"64; delete it \(or choose another --output\) to redo it"):
        cache_features(model, data, tmp_path / "f", {**SETTINGS, "warp_size": 64}, "cpu", progress=False)


def test_svms_and_regressors_are_fitted_once_and_reloaded(tmp_path, monkeypatch):
    model = tiny_rcnn(num_classes=3).eval()
    cache = cache_features(model, toy_dataset(), tmp_path / "f", SETTINGS, "cpu", progress=False)
    svm = fit_svms(cache, 3, tmp_path / "svms.pt", SETTINGS, neg_iou=0.3, C=0.001, pos_weight=2.0,
                   bias_mult=10.0, retrain_limit=10)
    log = json.loads(svm["log"])
    assert svm["weight"].shape == (3, 512) and log[2] is None and svm["bias"][2] == -10.0  # class 2: no gt
    assert log[0]["positives"] == 3 and log[1]["positives"] == 7 and log[0]["seen"] > log[0]["cache"] > 0
    reg = fit_regressors(cache, 3, tmp_path / "reg.pt", SETTINGS, min_iou=0.6, lam=1000.0)
    assert reg["weight"].shape == (3, 512, 4) and reg["samples"].tolist()[2] == 0 and reg["samples"][1] > 0
    assert reg["weight"][2].abs().sum() == 0

    def fail(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(stages, "mine_hard_negatives", fail)
    monkeypatch.setattr(stages, "fit_ridge", fail)
    again = fit_svms(cache, 3, tmp_path / "svms.pt", SETTINGS, neg_iou=0.3, C=0.001, pos_weight=2.0,
                     bias_mult=10.0, retrain_limit=10)
    assert torch.equal(again["weight"], svm["weight"])
    assert torch.equal(fit_regressors(cache, 3, tmp_path / "reg.pt", SETTINGS, min_iou=0.6, lam=1000.0)["bias"],
                       reg["bias"])
    with pytest.raises(StaleArtefactError, match=r"reg.pt was made with feat_norm = 20.0 but this run has 10.0"):
        fit_regressors(cache, 3, tmp_path / "reg.pt", {**SETTINGS, "feat_norm": 10.0}, min_iou=0.6, lam=1000.0)
