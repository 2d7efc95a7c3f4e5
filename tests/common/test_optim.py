"""Parameter groups: longest-prefix LR multipliers, no weight decay on norms and biases,
frozen parameters left out, bad keys named."""
import pytest
import torch
from torch import nn

from common.backbones import build_backbone
from common.optim import param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = nn.Module()
        self.backbone.body.c2 = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.backbone.body.c5 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.backbone.body2 = nn.Linear(2, 2)  # shares a prefix string with "backbone.body"
        self.head = nn.Linear(4, 3)


def _lookup(groups, model):
    """name -> (lr, weight_decay, lr_mult) of the group holding that parameter."""
    where = {}
    for g in groups:
        for p in g["params"]:
            where[id(p)] = (g["lr"], g["weight_decay"], g["lr_mult"])
    return {n: where.get(id(p)) for n, p in model.named_parameters()}


def test_longest_prefix_wins_and_norms_and_biases_get_no_weight_decay():
    model = Tiny()
    groups = param_groups(model, base_lr=0.1, weight_decay=1e-4,
                          lr_mults={"backbone.body": 0.1, "backbone.body.c5": 0.5})
    got = _lookup(groups, model)
    assert got["backbone.body.c2.0.weight"] == pytest.approx((0.01, 1e-4, 0.1))
    assert got["backbone.body.c2.1.weight"] == pytest.approx((0.01, 0.0, 0.1))   # BN
    assert got["backbone.body.c5.0.weight"] == pytest.approx((0.05, 1e-4, 0.5))
    assert got["backbone.body.c5.0.bias"] == pytest.approx((0.05, 0.0, 0.5))     # bias
    assert got["backbone.body.c5.1.weight"] == pytest.approx((0.05, 0.0, 0.5))   # GN
    assert got["backbone.body2.weight"] == pytest.approx((0.1, 1e-4, 1.0))       # not under body
    assert got["head.weight"] == pytest.approx((0.1, 1e-4, 1.0))
    assert got["head.bias"] == pytest.approx((0.1, 0.0, 1.0))
    # one group per (lr_mult, weight_decay), in order of first appearance
    assert [(g["lr_mult"], g["weight_decay"]) for g in groups] == [
        (0.1, 1e-4), (0.1, 0.0), (0.5, 1e-4), (0.5, 0.0), (1.0, 1e-4), (1.0, 0.0)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_norm_weight_decay_and_bias_lr_factor():
    model = Tiny()
    groups = param_groups(model, base_lr=1.0, weight_decay=0.1, norm_weight_decay=0.01,
                          bias_lr_factor=2.0)
    got = _lookup(groups, model)
    assert got["head.bias"] == pytest.approx((2.0, 0.01, 2.0))
    assert got["backbone.body.c2.1.weight"] == pytest.approx((1.0, 0.01, 1.0))
    assert got["head.weight"] == pytest.approx((1.0, 0.1, 1.0))


def test_frozen_parameters_are_left_out():
    model = Tiny()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    groups = param_groups(model, base_lr=0.1, weight_decay=0.0, lr_mults={"backbone.body": 0.1})
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(model.head.weight), id(model.head.bias)}


def test_groups_work_with_an_optimizer_and_a_scheduled_lr():
    model = Tiny()
    groups = param_groups(model, base_lr=0.1, weight_decay=1e-4, lr_mults={"backbone": 0.0})
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    before = model.backbone.body.c2[0].weight.detach().clone()
    head_before = model.head.weight.detach().clone()
    x = torch.randn(2, 3, 5, 5)
    y = model.backbone.body.c5(model.backbone.body.c2(x)).mean((2, 3))
    model.head(y).sum().backward()
    for g in opt.param_groups:  # what a scheduler does
        g["lr"] = 0.05 * g["lr_mult"]
    opt.step()
    assert torch.equal(model.backbone.body.c2[0].weight, before)  # multiplier 0: unchanged
    assert not torch.equal(model.head.weight, head_before)


def test_backbone_stage_names_work_as_prefixes():
    model = nn.Module()
    model.backbone = build_backbone("resnet18", norm="BN", freeze_at=2, fpn=True, fpn_channels=16)
    groups = param_groups(model, base_lr=1.0, weight_decay=1e-4,
                          lr_mults={"backbone.body": 0.1, "backbone.body.c5": 0.5})
    got = _lookup(groups, model)
    assert got["backbone.body.stem.conv1.weight"] is None  # frozen
    assert got["backbone.body.c3.0.conv1.weight"] == pytest.approx((0.1, 1e-4, 0.1))
    assert got["backbone.body.c3.0.bn1.weight"] == pytest.approx((0.1, 0.0, 0.1))
    assert got["backbone.body.c5.1.conv2.weight"] == pytest.approx((0.5, 1e-4, 0.5))
    assert got["backbone.fpn.lateral.p2.weight"] == pytest.approx((1.0, 1e-4, 1.0))


def test_bad_inputs_fail_with_a_sentence():
    model = Tiny()
    with pytest.raises(ValueError, match=r"lr_mults key 'backbone.bdy' names no parameter of the model "
                                         r"\(parameter names look like backbone.body"):
        param_groups(model, base_lr=0.1, weight_decay=0.0, lr_mults={"backbone.bdy": 0.1})
    with pytest.raises(ValueError, match=r"lr_mults\['head'\] = -1 must be a non-negative number"):
        param_groups(model, base_lr=0.1, weight_decay=0.0, lr_mults={"head": -1})
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"the model has no trainable parameters"):
        param_groups(model, base_lr=0.1, weight_decay=0.0)
