"""FPN: level names, shapes (odd sizes too), p6 by max-pool, the top-down sum, init, GN."""
import math

import torch
from torch import nn

from common.backbones import FPN, build_backbone

IN = {"c2": 8, "c3": 16, "c4": 32, "c5": 64}


def _features(h=37, w=50, n=2):
    feats, size = {}, (h, w)
    for name, c in IN.items():
        feats[name] = torch.randn(n, c, *size)
        size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))  # what stride-2 convs give
    return feats


def test_outputs_p2_to_p6_with_the_input_sizes():
    torch.manual_seed(0)
    fpn = FPN(IN, out_channels=16)
    feats = _features()
    out = fpn(feats)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"] == fpn.out_features
    for k in (2, 3, 4, 5):
        assert out[f"p{k}"].shape == (2, 16, *feats[f"c{k}"].shape[-2:])
    assert out["p6"].shape == (2, 16, 3, 4)  # p5 is 5 x 7
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])  # max-pool with kernel 1, stride 2


def test_without_top_block_and_on_a_subset_of_levels():
    fpn = FPN({"c3": 16, "c4": 32, "c5": 64}, out_channels=8, top_block=False)
    feats = _features()
    del feats["c2"]
    assert list(fpn(feats)) == ["p3", "p4", "p5"]


def test_top_down_pathway_adds_upsampled_coarser_levels():
    # identity lateral and output convs make the sums visible: p_k = c_k + up(inner_{k+1})
    fpn = FPN({"c3": 1, "c4": 1, "c5": 1}, out_channels=1, top_block=False)
    with torch.no_grad():
        for m in fpn.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.weight[0, 0, m.kernel_size[0] // 2, m.kernel_size[1] // 2] = 1.0
                m.bias.zero_()
    c5 = torch.tensor([[1.0, 2.0]]).view(1, 1, 1, 2)
    c4 = torch.full((1, 1, 2, 4), 10.0)
    c3 = torch.full((1, 1, 4, 8), 100.0)
    out = fpn({"c3": c3, "c4": c4, "c5": c5})
    assert torch.equal(out["p5"], c5)
    assert torch.equal(out["p4"][0, 0], torch.tensor([[11.0, 11, 12, 12], [11, 11, 12, 12]]))
    assert torch.equal(out["p3"][0, 0, 0], torch.tensor([111.0, 111, 111, 111, 112, 112, 112, 112]))


def test_convs_use_kaiming_uniform_a1_and_zero_bias():
    torch.manual_seed(0)
    fpn = FPN({"c4": 256, "c5": 512}, out_channels=64)
    conv = fpn.lateral["p5"]
    bound = math.sqrt(3.0 / 512)  # gain sqrt(2 / (1 + a^2)) = 1 with a = 1
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.95 * bound
    assert torch.equal(conv.bias, torch.zeros(64))
    out_bound = math.sqrt(3.0 / (64 * 9))
    assert fpn.output["p4"].weight.abs().max() <= out_bound


def test_group_norm_option():
    fpn = FPN(IN, out_channels=64, norm="GN")
    conv, gn = fpn.output["p3"]
    assert conv.bias is None and isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    out = fpn(_features(16, 16))
    assert out["p2"].shape == (2, 64, 16, 16)


def test_backbone_with_fpn_reports_p_levels():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", fpn=True, fpn_channels=32, freeze_at=5)
    assert backbone.out_features == ["p2", "p3", "p4", "p5", "p6"]
    assert backbone.out_channels == {f: 32 for f in backbone.out_features}
    assert backbone.out_strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    out = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (16, 24), "p3": (8, 12), "p4": (4, 6), "p5": (2, 3), "p6": (1, 2)}
    names = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("fpn.") for n in names)  # linear probe: only the FPN trains
