"""Every segmentation model: output shapes at 64-96 px, one train step, one eval step."""
import pytest
import torch
import torch.nn.functional as F

from segmentation.build import build_model
from segmentation.config import BackboneConfig, ModelConfig
from segmentation.data import ImageList
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
