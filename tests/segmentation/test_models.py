"""Every segmentation model: output shapes at 64-96 px, one train step, one eval step."""
import pytest
import torch
import torch.nn.functional as F

from common.image_list import ImageList
from segmentation.build import build_model
from segmentation.config import BackboneConfig, ModelConfig
from segmentation.fcn import bilinear_kernel, upsampler

K = 4
MODELS = {
    "fcn32s_r18": ModelConfig(arch="fcn", fcn_variant="32s", head_channels=32),
    "fcn16s_r18": ModelConfig(arch="fcn", fcn_variant="16s", head_channels=32),
    "fcn8s_r18": ModelConfig(arch="fcn", fcn_variant="8s", head_channels=32),
    "fcn8s_vgg16": ModelConfig(arch="fcn", fcn_variant="8s", head_channels=32,
                               backbone=BackboneConfig(name="vgg16")),
    "unet": ModelConfig(arch="unet", unet_width=8, unet_depth=3),
    "unet_r18": ModelConfig(arch="unet_resnet", decoder_channels=(32, 16, 16, 8, 8)),
}


def _batch(model, sizes=((64, 96), (72, 64))):
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    targets = [{"sem_seg": torch.randint(0, K, (h, w), generator=g)} for h, w in sizes]
    targets[1]["sem_seg"][:10] = 255  # some ignored pixels
    return ImageList.from_tensors(images, model.size_divisibility, model.pixel_mean), targets


@pytest.mark.parametrize("name", list(MODELS))
def test_train_and_eval_step(name):
    torch.manual_seed(0)
    model = build_model(MODELS[name], K)
    images, targets = _batch(model)
    model.train()
    preds, losses = model(images, targets)
    assert preds == [] and set(losses) == {"loss_seg"}
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    losses["loss_seg"].backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))
    model.eval()
    with torch.no_grad():
        preds, losses = model(images, targets)
    assert [tuple(p["sem_seg"].shape) for p in preds] == [(64, 96), (72, 64)]
    assert all(p["sem_seg"].dtype == torch.int64 and int(p["sem_seg"].max()) < K for p in preds)
    assert torch.isfinite(losses["loss_seg"])
    with torch.no_grad():
        preds, losses = model(images)
    assert losses == {} and len(preds) == 2


@pytest.mark.parametrize("variant,skips", [("32s", 0), ("16s", 1), ("8s", 2)])
def test_fcn_logits_full_resolution_and_zero_init(variant, skips):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="fcn", fcn_variant=variant, head_channels=16), K).eval()
    x = torch.randn(2, 3, 64, 96)
    logits = model.net(x)
    assert logits.shape == (2, K, 64, 96)
    assert len(model.net.score_skips) == skips
    # score layers start at zero (Long et al.): the untrained FCN predicts all-zero logits
    assert torch.count_nonzero(logits) == 0
    assert model.net.final_stride == {"32s": 32, "16s": 16, "8s": 8}[variant]


def test_unet_output_equals_input_size():
    model = build_model(ModelConfig(arch="unet", unet_width=4, unet_depth=4), 3).eval()
    assert model.size_divisibility == 16
    assert model.net(torch.randn(1, 3, 80, 96)).shape == (1, 3, 80, 96)


def test_bilinear_kernel_values_and_upsampling():
    k = bilinear_kernel(2, 4)
    assert torch.allclose(k[0, 0, 0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    assert torch.count_nonzero(k[0, 1]) == 0 and torch.equal(k[0, 0], k[1, 1])
    up = upsampler(2, 2)
    assert up.weight.requires_grad
    x = torch.randn(1, 2, 5, 6)
    y = up(x)
    assert y.shape == (1, 2, 10, 12)
    # away from the borders it equals bilinear interpolation (half-pixel centres)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(y[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-6)
    assert not upsampler(3, 8, learnable=False).weight.requires_grad
    assert upsampler(3, 8)(torch.ones(1, 3, 2, 2))[0, :, 8, 8].tolist() == [1.0, 1.0, 1.0]


def test_freeze_and_lr_mult_groups():
    from common.optim import param_groups

    cfg = ModelConfig(arch="unet_resnet", decoder_channels=(16, 16, 8, 8, 8),
                      backbone=BackboneConfig(name="resnet18", freeze_at=2))
    model = build_model(cfg, K)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("net.backbone.body.stem", "net.backbone.body.c2")) for n in frozen)
    groups = param_groups(model, base_lr=0.01, weight_decay=0.0, lr_mults={"net.backbone": 0.1})
    assert sorted({g["lr_mult"] for g in groups}) == [0.1, 1.0]


def test_target_size_mismatch_is_named():
    model = build_model(MODELS["unet"], K)
    images, targets = _batch(model)
    targets[0]["image_id"] = 42
    targets[0]["sem_seg"] = targets[0]["sem_seg"][:, :50]
    with pytest.raises(ValueError, match=r"image_id 42\): sem_seg has shape \(64, 50\) but the image is \(64, 96\)"):
        model(images, targets)


def test_prior_init_starts_the_loss_at_the_label_entropy():
    # 90% background: a network whose classifier bias is ln(class share) starts near the entropy
    # of the labels (0.39 nats here); without it a U-Net starts above ln K and spends its first
    # few hundred Adam steps just learning the class balance
    from segmentation.build import init_classifier_bias
    from segmentation.losses import class_prior_bias

    torch.manual_seed(0)
    share = torch.tensor([0.9, 0.05, 0.03, 0.02])
    prior = class_prior_bias((share * 1000).numpy())
    lab = torch.zeros(2, 64, 64, dtype=torch.int64)
    lab.view(2, -1)[:, 3686:3891] = 1
    lab.view(2, -1)[:, 3891:4014] = 2
    lab.view(2, -1)[:, 4014:] = 3
    entropy = float(-(share * share.log()).sum())
    images = ImageList.from_tensors([torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)], 16)
    targets = [{"sem_seg": t} for t in lab]
    plain = build_model(ModelConfig(arch="unet", unet_width=8, unet_depth=3), K)
    with_prior = build_model(ModelConfig(arch="unet", unet_width=8, unet_depth=3), K, class_prior=prior)
    assert torch.equal(with_prior.net.score.bias.detach(), prior)
    with torch.no_grad():
        loss_prior = float(with_prior(images, targets)[1]["loss_seg"])
        loss_plain = float(plain(images, targets)[1]["loss_seg"])
    assert abs(loss_prior - entropy) < 0.15 and loss_plain > loss_prior + 0.5
    fcn = build_model(MODELS["fcn32s_r18"], K, class_prior=prior)        # zero scorers: logits = prior
    fcn.eval()
    with torch.no_grad():
        logits = fcn.net(torch.zeros(1, 3, 64, 64))
    assert torch.allclose(logits[0, :, 16:48, 16:48].mean((1, 2)), prior, atol=1e-4)
    with pytest.raises(ValueError, match="no scoring conv with a bias of shape \\(3,\\)"):
        init_classifier_bias(plain.net, prior[:3])


def test_input_scale_runs_the_net_smaller_and_answers_at_full_size():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="unet", unet_width=8, unet_depth=3, input_scale=0.5), K)
    assert model.size_divisibility == 16                                  # 2^3 / 0.5
    seen = []
    model.net.register_forward_hook(lambda m, inp, out: seen.append((tuple(inp[0].shape), tuple(out.shape))))
    images, targets = _batch(model, sizes=((64, 96), (72, 64)))           # padded to 80 x 96
    model.eval()
    with torch.no_grad():
        preds, losses = model(images, targets)
    assert seen == [((2, 3, 40, 48), (2, K, 40, 48))]
    assert [tuple(p["sem_seg"].shape) for p in preds] == [(64, 96), (72, 64)] and torch.isfinite(losses["loss_seg"])
    with pytest.raises(ValueError, match=r"input_scale = 0.3 must be in \(0, 1\] and turn the network's size "
                                         r"divisibility 8 into a whole number"):
        build_model(ModelConfig(arch="unet", unet_width=8, unet_depth=3, input_scale=0.3), K)


def test_mirror_pad_reflects_each_image_into_its_padding():
    from segmentation.segmentor import mirror_pad

    a = torch.arange(9.0).view(1, 3, 3)                                    # (C=1, h=3, w=3)
    b = torch.full((1, 1, 1), 7.0)                                         # (C=1, h=1, w=1): too small to reflect
    batch = ImageList.from_tensors([a, b], size_divisibility=4, pad_value=-1.0)  # (2, 1, 4, 4)
    out = mirror_pad(batch.tensor, batch.image_sizes)
    assert out[0, 0].tolist() == [[0, 1, 2, 1], [3, 4, 5, 4], [6, 7, 8, 7], [3, 4, 5, 4]]
    assert out[1, 0].tolist() == [[7] * 4] * 4                              # replicated
    assert batch.tensor[0, 0, 3, 3] == -1                                  # the input is not changed
    full = torch.rand(1, 3, 4, 4)
    assert mirror_pad(full, [(4, 4)]) is full
