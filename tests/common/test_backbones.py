"""Backbones: feature names, shapes, strides and channels for every architecture, pretrained
weights from a file (round trip) and from ImageNet (offline error), freezing, bad arguments."""
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from common.backbones import (Backbone, FrozenBatchNorm2d, WeightsError, build_backbone,
                              load_vgg16_classifier)
from common.backbones.vgg import _linear_to_conv

ALL = ("c1", "c2", "c3", "c4", "c5")
# channels of c1..c5, written out from the papers / torchvision, not from the code under test
CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
    "vgg16": (64, 128, 256, 512, 512),
    "mobilenet_v3_large": (16, 24, 40, 112, 960),
}


@pytest.mark.parametrize("name", list(CHANNELS))
def test_every_output_has_the_promised_shape_stride_and_channels(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, out_features=ALL, norm="BN", freeze_at=1)
    assert isinstance(backbone, Backbone)
    assert not any(p.requires_grad for p in backbone.body.stem.parameters())
    assert all(p.requires_grad for p in backbone.body.c2.parameters())
    backbone.eval()
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, 64, 64))
    assert list(feats) == list(ALL) == backbone.out_features
    for k, (f, c) in enumerate(zip(ALL, CHANNELS[name]), start=1):
        assert backbone.out_strides[f] == 2 ** k
        assert backbone.out_channels[f] == c
        assert feats[f].shape == (2, c, 64 // 2 ** k, 64 // 2 ** k), (name, f)
    assert backbone.size_divisibility == 32
    # parameter names address stages
    names = [n for n, _ in backbone.named_parameters()]
    for stage in ("stem", "c2", "c3", "c4", "c5"):
        assert any(n.startswith(f"body.{stage}.") for n in names), stage


def test_resnet_parameter_names_read_like_torchvision_stages():
    names = dict(build_backbone("resnet18").named_parameters())
    assert "body.c3.0.conv1.weight" in names and "body.stem.conv1.weight" in names
    assert names["body.c3.0.conv1.weight"].shape == (128, 64, 3, 3)


def test_stages_after_the_last_requested_feature_are_dropped():
    backbone = build_backbone("resnet18", out_features=("c4", "c2"))
    assert backbone.out_features == ["c2", "c4"]  # sorted fine to coarse
    assert backbone.body.c5 is None
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["c2", "c4"]
    feats["c4"].sum().backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)


def test_normalize_uses_imagenet_constants():
    backbone = build_backbone("mobilenet_v3_large")
    assert backbone.pixel_mean == (0.485, 0.456, 0.406)
    assert backbone.pixel_std == (0.229, 0.224, 0.225)
    x = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 2, 2) + 0.229
    y = backbone.normalize(x)
    assert torch.allclose(y[0, 0], torch.ones(2, 2))
    assert torch.allclose(y[0, 1], torch.full((2, 2), 0.229 / 0.224))


def _random_resnet18_file(tmp_path):
    torch.manual_seed(1)
    model = torchvision.models.resnet18()
    for m in model.modules():  # non-trivial statistics, so FrozenBN has something to carry
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / "resnet18-random.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def test_weights_from_a_torchvision_state_dict_round_trip(tmp_path):
    model, path = _random_resnet18_file(tmp_path)
    saved = torch.load(path, weights_only=True)
    torch.manual_seed(123)  # a different init, so equality can only come from the file
    backbone = build_backbone("resnet18", weights=str(path), freeze_at=0).eval()
    params = dict(backbone.named_parameters())
    buffers = dict(backbone.named_buffers())
    assert torch.equal(params["body.c3.0.conv1.weight"], saved["layer2.0.conv1.weight"])
    assert torch.equal(params["body.stem.conv1.weight"], saved["conv1.weight"])
    assert isinstance(backbone.body.c5[1].bn2, FrozenBatchNorm2d)
    assert torch.equal(buffers["body.c5.1.bn2.running_var"], saved["layer4.1.bn2.running_var"])
    assert torch.equal(buffers["body.c2.0.bn1.weight"], saved["layer1.0.bn1.weight"])
    # the whole body computes what torchvision's network computes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(
            model.relu(model.bn1(model.conv1(x))))))))
        assert torch.allclose(backbone(x)["c5"], ref, atol=1e-5)


def test_mobilenet_weights_round_trip_keeps_bn_eps(tmp_path):
    torch.manual_seed(2)
    model = torchvision.models.mobilenet_v3_large().eval()
    path = tmp_path / "mbv3.pth"
    torch.save(model.state_dict(), path)
    backbone = build_backbone("mobilenet_v3_large", weights=path, out_features=("c5",)).eval()
    assert backbone.body.stem[0][1].eps == pytest.approx(0.001)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(x)["c5"], model.features(x), atol=1e-5)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file .*nope\.pth does not exist"):
        build_backbone("resnet18", weights=str(tmp_path / "nope.pth"))


def test_unreadable_or_non_state_dict_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match=r"garbage\.pth could not be read as a torch state dict"):
        build_backbone("resnet18", weights=garbage)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(WeightsError, match=r"list\.pth holds a list, not a state dict"):
        build_backbone("resnet18", weights=a_list)
    nested = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "iteration": 5}, nested)
    with pytest.raises(WeightsError, match=r"ckpt\.pth is not a plain state dict: entries model, iteration"):
        build_backbone("resnet18", weights=nested)


def test_mismatched_keys_and_shapes_are_listed(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    del state["layer1.0.conv1.weight"]
    state["head.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as e:
        build_backbone("resnet18", weights=path)
    msg = str(e.value)
    assert "bad.pth does not fit torchvision's resnet18" in msg
    assert "1 missing keys (layer1.0.conv1.weight)" in msg
    assert "1 unexpected keys (head.weight)" in msg
    assert "fc.weight (10, 512) vs (1000, 512)" in msg


def test_imagenet_offline_says_to_pass_a_local_path(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"could not download the ImageNet weights for resnet18 .*"
                                           r"pass model\.backbone\.weights=/path/resnet18-f37072fd\.pth"):
        build_backbone("resnet18", weights="imagenet")


def test_imagenet_uses_the_torchvision_enum_url(monkeypatch):
    seen = []
    state = torchvision.models.mobilenet_v3_large().state_dict()

    def fake(url, **kwargs):
        seen.append(url)
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake)
    backbone = build_backbone("mobilenet_v3_large", weights="imagenet")
    assert seen == [torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url]
    assert torch.equal(dict(backbone.named_parameters())["body.c2.0.block.0.0.weight"],
                       state["features.2.block.0.0.weight"])


STAGES = ("stem", "c2", "c3", "c4", "c5")


@pytest.mark.parametrize("freeze_at", range(6))
def test_freeze_at_freezes_stem_and_stages_up_to_ck(freeze_at):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", freeze_at=freeze_at, norm="BN", fpn=True)
    backbone.train()
    out = backbone(torch.randn(2, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    for i, stage in enumerate(STAGES):
        module = getattr(backbone.body, stage)
        frozen = i < freeze_at
        params = list(module.parameters())
        if frozen:
            assert all(not p.requires_grad and p.grad is None for p in params), stage
            # frozen stages use FrozenBN even though norm="BN"
            assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()), stage
            assert any(isinstance(m, FrozenBatchNorm2d) for m in module.modules()), stage
        else:
            assert params and all(p.requires_grad and p.grad is not None for p in params), stage
            assert any(p.grad.abs().sum() > 0 for p in params), stage
            assert not any(isinstance(m, FrozenBatchNorm2d) for m in module.modules()), stage
    # the FPN always trains
    assert all(p.grad is not None for p in backbone.fpn.parameters())


def test_linear_to_conv_gives_the_same_numbers_as_the_linear_layer():
    torch.manual_seed(0)
    fc = nn.Linear(4 * 3 * 3, 5)
    conv = _linear_to_conv(fc, 4, 3)
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(conv(x).flatten(1), fc(x.flatten(1)), atol=1e-6)


def test_vgg16_classifier_is_fc6_fc7_convolutionalised():
    head = load_vgg16_classifier(None, as_conv=True).eval()
    assert list(dict(head.named_children())) == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7"]
    assert head.fc6.weight.shape == (4096, 512, 7, 7) and head.fc7.weight.shape == (4096, 4096, 1, 1)
    with torch.no_grad():
        assert head(torch.randn(1, 512, 7, 8)).shape == (1, 4096, 1, 2)
    with pytest.raises(WeightsError, match=r"weights file .*fc\.pth does not exist"):
        load_vgg16_classifier("/nonexistent/fc.pth")


def test_bad_arguments_fail_with_a_sentence():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet19'; choose one of resnet18"):
        build_backbone("resnet19")
    with pytest.raises(ValueError, match=r"freeze_at must be an integer from 0 .* got 6"):
        build_backbone("resnet18", freeze_at=6)
    with pytest.raises(ValueError, match=r"unknown norm 'LN' for backbone resnet18"):
        build_backbone("resnet18", norm="LN")
    with pytest.raises(ValueError, match=r"out_features \['c2', 'p3'\] of backbone resnet18 must be"):
        build_backbone("resnet18", out_features=("c2", "p3"))
    backbone = build_backbone("resnet18")
    with pytest.raises(ValueError, match=r"backbone input must be \(N, 3, H, W\) images, got shape \(1, 1, 8, 8\)"):
        backbone(torch.zeros(1, 1, 8, 8))


# a classifier pretrained on K classes (tools/train_cls.py): its head is left out, the rest loads
@pytest.mark.parametrize("name, head", [("resnet18", "fc"), ("vgg16", "classifier.6"),
                                        ("mobilenet_v3_large", "classifier.3")])
def test_a_k_class_classifier_loads_without_its_head(tmp_path, capsys, name, head):
    torch.manual_seed(4)
    model = getattr(torchvision.models, name)(num_classes=3)
    path = tmp_path / f"{name}-3.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(5)
    backbone = build_backbone(name, weights=path, out_features=("c5",))
    width = model.state_dict()[f"{head}.weight"].shape[1]
    assert capsys.readouterr().out.strip() == (
        f"note: weights file {path}: left out its 3-class classification head "
        f"({head}.weight (3, {width}), {head}.bias (3,)); the backbone does not use it")
    first_conv = {"resnet18": ("body.stem.conv1.weight", "conv1.weight"),
                  "vgg16": ("body.c5.0.weight", "features.24.weight"),
                  "mobilenet_v3_large": ("body.c5.0.block.0.0.weight", "features.13.block.0.0.weight")}
    ours, theirs = first_conv[name]
    assert torch.equal(dict(backbone.named_parameters())[ours], model.state_dict()[theirs])


def test_vgg16_fc6_fc7_of_a_k_class_classifier_are_kept(tmp_path):
    torch.manual_seed(6)
    model = torchvision.models.vgg16(num_classes=3)
    path = tmp_path / "vgg16-3.pth"
    torch.save(model.state_dict(), path)
    fc = load_vgg16_classifier(path)
    assert torch.equal(fc.fc6.weight, model.classifier[0].weight)
    assert torch.equal(fc.fc7.bias, model.classifier[3].bias)


def test_a_file_without_a_head_loads_and_says_so(tmp_path, capsys):
    state = torchvision.models.resnet18().state_dict()
    del state["fc.weight"], state["fc.bias"]
    path = tmp_path / "headless.pth"
    torch.save(state, path)
    build_backbone("resnet18", weights=path)
    assert capsys.readouterr().out.strip() == (
        f"note: weights file {path} has no classification head (fc.weight); loaded the rest")


def test_half_a_head_is_still_refused(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    del state["fc.bias"]
    path = tmp_path / "half.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 missing keys \(fc\.bias\)"):
        build_backbone("resnet18", weights=path)
