"""Every YAML in configs/segmentation/ loads and builds; bad keys are rejected."""
from pathlib import Path

import pytest
import torch

from common.config import ConfigError, load_config
from segmentation.build import build_model
from segmentation.config import SegConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "segmentation").glob("*.yaml"))


def test_there_are_configs():
    names = {p.stem for p in CONFIGS}
    assert {"fcn8s_vgg16", "fcn32s_R18", "fcn16s_R18", "fcn8s_R18", "unet", "unet_resnet18",
            "unet_shapes_cpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_yaml_builds(path):
    # no network here: pretrained weights are replaced by random init
    cfg = load_config(SegConfig, path, ["model.backbone.weights=null"])
    if cfg.model.backbone.name == "vgg16":  # keep the 4096-wide fc6 out of a CPU test
        cfg = load_config(SegConfig, path, ["model.backbone.weights=null", "model.head_channels=64"])
    model = build_model(cfg.model, 5)
    model.eval()
    with torch.no_grad():
        logits = model.net(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 5, 64, 64)


def test_unknown_key_and_bad_value_rejected():
    with pytest.raises(ConfigError, match="unknown config key 'model.depth'"):
        load_config(SegConfig, None, ["model.depth=3"])
    with pytest.raises(ConfigError, match=r"'model.arch' = 'segnet' must be one of"):
        load_config(SegConfig, None, ["model.arch=segnet"])
