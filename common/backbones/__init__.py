"""Pretrained backbones shared by detection and segmentation (see ARCHITECTURE.md, "Backbones").

    build_backbone(name, *, weights=None, freeze_at=0, norm="FrozenBN",
                   out_features=("c2", "c3", "c4", "c5"), fpn=False, fpn_channels=256,
                   fpn_top_block=True, fpn_norm=None) -> Backbone

Files: ``backbone.py`` (the contract and the builder), ``stages.py`` (how networks are cut into
stem/c2..c5), ``resnet.py``, ``vgg.py`` (also fc6/fc7 for FCN), ``mobilenet.py``, ``fpn.py``,
``norm.py`` (FrozenBN/BN/GN/SyncBN), ``weights.py`` (ImageNet or local .pth weights).
"""
from .backbone import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, Backbone, build_backbone
from .fpn import FPN
from .norm import NORMS, FrozenBatchNorm2d, adapt_bn_statistics, convert_norm, gn_groups
from .vgg import load_vgg16_classifier
from .weights import WeightsError, load_pretrained, read_state_dict

__all__ = [
    "ARCHITECTURES", "IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "build_backbone", "FPN",
    "NORMS", "FrozenBatchNorm2d", "adapt_bn_statistics", "convert_norm", "gn_groups", "load_vgg16_classifier",
    "WeightsError", "load_pretrained", "read_state_dict",
]
