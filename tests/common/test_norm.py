"""Norm choices: FrozenBN matches BN in eval mode, GN copies BN's affine parameters, every norm
builds a backbone that runs forward and backward, frozen stages stay FrozenBN."""
import pytest
import torch
from torch import nn

from common.backbones import FrozenBatchNorm2d, build_backbone, convert_norm, gn_groups


def _random_bn(c=8, eps=1e-5):
    bn = nn.BatchNorm2d(c, eps=eps)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


def test_frozen_bn_computes_what_bn_computes_in_eval_mode():
    torch.manual_seed(0)
    bn = _random_bn(eps=1e-3).eval()
    frozen = FrozenBatchNorm2d.from_bn(bn)
    assert frozen.eps == 1e-3
    assert list(frozen.parameters()) == []  # nothing to train
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(frozen(x), bn(x), atol=1e-6)
    # hand-computed for channel 0
    w, b, m, v = bn.weight[0], bn.bias[0], bn.running_mean[0], bn.running_var[0]
    expected = (x[:, 0] - m) / torch.sqrt(v + 1e-3) * w + b
    assert torch.allclose(frozen(x)[:, 0], expected.detach(), atol=1e-6)


def test_frozen_bn_loads_a_bn_state_dict():
    bn = _random_bn()
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, not an error
    assert torch.equal(frozen.running_var, bn.running_var)


def test_gn_groups_are_32_or_the_largest_power_of_two_that_divides():
    assert [gn_groups(c) for c in (64, 256, 24, 40, 16, 960)] == [32, 32, 8, 8, 16, 32]


def test_convert_to_gn_copies_affine_parameters():
    torch.manual_seed(0)
    bn = _random_bn(c=24)
    model = convert_norm(nn.Sequential(nn.Conv2d(3, 24, 3), bn), "GN")
    gn = model[1]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 8 and gn.num_channels == 24
    assert torch.equal(gn.weight, bn.weight) and torch.equal(gn.bias, bn.bias)


def test_convert_to_syncbn_keeps_statistics():
    bn = _random_bn()
    sync = convert_norm(nn.Sequential(bn), "SyncBN")[0]
    assert isinstance(sync, nn.SyncBatchNorm)
    assert torch.equal(sync.running_mean, bn.running_mean)


def test_unknown_norm_is_named():
    with pytest.raises(ValueError, match=r"unknown norm 'batch'; choose one of FrozenBN, BN, GN, SyncBN"):
        convert_norm(nn.Sequential(), "batch")


NORM_TYPE = {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d, "GN": nn.GroupNorm,
             "SyncBN": nn.SyncBatchNorm}


@pytest.mark.parametrize("name,norm", [("resnet18", n) for n in NORM_TYPE]
                         + [("mobilenet_v3_large", "GN")])  # MobileNet: channels 24, 40, ... for GN
def test_every_norm_builds_runs_forward_and_backward(name, norm):
    torch.manual_seed(0)
    backbone = build_backbone(name, norm=norm, freeze_at=2).train()
    out = backbone(torch.randn(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()

    norms = lambda m: [x for x in m.modules() if isinstance(x, tuple(NORM_TYPE.values()))]
    for stage in ("stem", "c2"):  # frozen: FrozenBN whatever the norm, no gradients
        module = getattr(backbone.body, stage)
        assert norms(module) and all(type(n) is FrozenBatchNorm2d for n in norms(module))
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    for stage in ("c3", "c4", "c5"):
        module = getattr(backbone.body, stage)
        assert norms(module) and all(type(n) is NORM_TYPE[norm] for n in norms(module)), stage
        assert all(p.grad is not None for p in module.parameters()), stage
    if norm in ("GN", "BN", "SyncBN"):  # their affine parameters train
        n = norms(backbone.body.c5)[0]
        assert n.weight.requires_grad and n.weight.grad.abs().sum() > 0


def test_pretrained_bn_warning_only_for_trainable_bn_of_pretrained_weights_on_few_images():
    from common.backbones.norm import BN_SMALL_BATCH, pretrained_bn_warning

    warning = pretrained_bn_warning("BN", "imagenet", 0, 2)
    assert warning.startswith("warning: the backbone starts from pretrained weights (imagenet)")
    assert "2 images per step" in warning and "model.backbone.norm=FrozenBN" in warning
    assert pretrained_bn_warning("BN", None, 0, 2) is None  # from scratch: BN is the choice
    assert pretrained_bn_warning("FrozenBN", "imagenet", 0, 2) is None
    assert pretrained_bn_warning("GN", "imagenet", 0, 2) is None
    assert pretrained_bn_warning("BN", "imagenet", 5, 2) is None  # the whole body frozen: no BN trains
    assert pretrained_bn_warning("BN", "imagenet", 0, BN_SMALL_BATCH) is None


def test_adapt_bn_statistics_pools_each_layers_inputs_over_all_images():
    from common.backbones import adapt_bn_statistics

    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3)
    bn1, bn2 = FrozenBatchNorm2d.from_bn(_random_bn(4)), _random_bn(5).eval()  # both kinds
    net = nn.Sequential(conv1, bn1, nn.ReLU(), conv2, bn2)
    images = [torch.randn(1, 3, 9, 7) * 3 + 2, torch.randn(1, 3, 6, 11) * 0.5 - 1]  # sizes differ
    w1 = bn1.weight.clone()
    assert adapt_bn_statistics(net, images, net) == 2

    def pooled(xs):  # (C,) mean and variance over every position of every tensor in xs
        flat = torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in xs], dim=1)
        return flat.mean(1), flat.var(1, unbiased=False)

    with torch.no_grad():
        a = [conv1(x) for x in images]
        mean1, var1 = pooled(a)
        # in the pass, bn1 normalised each image with that image's own statistics
        b = [conv2(torch.relu((y - y.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
            y.var((0, 2, 3), unbiased=False, keepdim=True) + bn1.eps) * w1.view(1, -1, 1, 1)
            + bn1.bias.view(1, -1, 1, 1))) for y in a]
        mean2, var2 = pooled(b)
    torch.testing.assert_close(bn1.running_mean, mean1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn1.running_var, var1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn2.running_mean, mean2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn2.running_var, var2, rtol=1e-4, atol=1e-5)
    assert torch.equal(bn1.weight, w1)  # the affine parameters stay
    # the layers are themselves again: with the adapted statistics, conv1's outputs come out of bn1
    # (before its affine map) with mean 0 and variance 1 over the images
    with torch.no_grad():
        out = [(bn1(y) - bn1.bias.view(1, -1, 1, 1)) / w1.view(1, -1, 1, 1) for y in a]
    mean, var = pooled(out)
    torch.testing.assert_close(mean, torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(var, torch.ones(4), atol=1e-3, rtol=0)
    assert "forward" not in vars(bn1) and "forward" not in vars(bn2)
