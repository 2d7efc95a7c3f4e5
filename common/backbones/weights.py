"""Pretrained weights for the torchvision classification models the backbones wrap.

``weights`` is one of
    None        random initialisation (torchvision's own init);
    "imagenet"  torchvision's ImageNet weights enum for the model (downloaded to the torch hub
                cache on first use; offline, the error says where to get the file and how to
                pass it);
    a path      a ``.pth`` state dict in torchvision's classification format (the very file
                torchvision downloads, e.g. ``resnet18-f37072fd.pth``), read with
                ``torch.load(weights_only=True)``.

Weights are loaded into the *whole* torchvision model (classifier included) before the backbone
takes its stages out, so the keys checked are torchvision's own (``layer1.0.conv1.weight``).

The last classification layer (``HEAD_KEYS``: ResNet's ``fc``, VGG16's ``classifier.6``,
MobileNetV3's ``classifier.3``) is not part of any backbone: a file whose head has another number
of classes than 1000 (a classifier pretrained by ``tools/train_cls.py`` on K classes), or none at
all, loads everything else and one line says what was left out. VGG16's fc6/fc7
(``classifier.0`` / ``classifier.3``) are *not* head: the ``vgg16_fc`` box head and FCN use them.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.hub
from torch import nn
from torchvision import models as tvm


class WeightsError(ValueError):
    """Pretrained weights that cannot be found, read or loaded; the message says which and why."""


# the ImageNet weight enum each backbone name uses
IMAGENET_WEIGHTS = {
    "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": tvm.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V1,
    "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1,
    "mobilenet_v3_large": tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
}

# the last classification layer of each torchvision model: the backbones never use it
HEAD_KEYS = {
    "resnet18": ("fc.weight", "fc.bias"),
    "resnet34": ("fc.weight", "fc.bias"),
    "resnet50": ("fc.weight", "fc.bias"),
    "resnet101": ("fc.weight", "fc.bias"),
    "vgg16": ("classifier.6.weight", "classifier.6.bias"),
    "mobilenet_v3_large": ("classifier.3.weight", "classifier.3.bias"),
}

_SHOW = 5  # how many bad keys an error lists


def load_pretrained(model: nn.Module, name: str, weights: str | Path | None) -> None:
    """Load ``weights`` into the torchvision classification ``model`` called ``name``, in place."""
    if weights is None:
        return
    if isinstance(weights, str) and weights.lower() == "imagenet":
        state, source = _download_imagenet(name), f"ImageNet weights for {name}"
    else:
        state, source = read_state_dict(weights), f"weights file {weights}"
    state, note = without_foreign_head(model, name, state, source)
    check_state_dict(model, state, source, name)
    model.load_state_dict(state, strict=False)  # strictness checked above, with better messages
    if note:
        print(note)


def without_foreign_head(model: nn.Module, name: str, state: Mapping, source: str) -> tuple[dict, str]:
    """``state`` minus the classification head (``HEAD_KEYS[name]``) when that head does not fit
    ``model`` (another number of classes) or is absent; returns (state, one-line note or "").

    A head that fits is kept (loading it is harmless: the backbone discards it). Only whole,
    consistent heads are left out (weight (K, D) with the model's D, bias (K,)): half a head or a
    wrong-shaped body still fails the strict check.
    """
    expected = model.state_dict()
    head = HEAD_KEYS[name]
    present = [k for k in head if k in state]
    if present and len(present) < len(head):
        return dict(state), ""  # half a head: check_state_dict names the missing key
    if present and all(tuple(state[k].shape) == tuple(expected[k].shape) for k in head):
        return dict(state), ""
    if present and not _is_head(state[head[0]], state[head[1]], expected[head[0]]):
        return dict(state), ""  # not a K-class version of this head: the strict check names it
    kept = {k: v for k, v in state.items() if k not in head}
    # the model's head keys are not "missing" either: the model keeps its own (unused) head
    kept.update({k: expected[k] for k in head})
    if not present:
        return kept, f"note: {source} has no classification head ({head[0]}); loaded the rest"
    shapes = ", ".join(f"{k} {tuple(state[k].shape)}" for k in head)
    return kept, (f"note: {source}: left out its {state[head[0]].shape[0]}-class classification "
                  f"head ({shapes}); the backbone does not use it")


def _download_imagenet(name: str) -> dict:
    enum = IMAGENET_WEIGHTS[name]
    try:
        return torch.hub.load_state_dict_from_url(enum.url, progress=False, map_location="cpu")
    except (OSError, RuntimeError) as e:  # URLError, timeouts, no network, corrupt cache
        filename = enum.url.rsplit("/", 1)[-1]
        raise WeightsError(
            f"could not download the ImageNet weights for {name} from {enum.url} ({e}); download "
            f"that file on a machine with network access and pass "
            f"model.backbone.weights=/path/{filename}") from None


def read_state_dict(path: str | Path) -> dict:
    """Read a state dict (a mapping of names to tensors) from ``path`` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (pass 'imagenet', a path to a "
                           f"torchvision .pth state dict, or null for random init)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types; all mean "not a state dict"
        raise WeightsError(f"weights file {path} could not be read as a torch state dict: {e}") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict "
                           f"(a mapping of parameter names to tensors)")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"weights file {path} is not a plain state dict: entries "
                           f"{_first(not_tensors)} are not tensors (a training checkpoint? save "
                           f"its model state dict in torchvision's key format instead)")
    return dict(state)


def check_state_dict(model: nn.Module, state: Mapping, source: str, name: str) -> None:
    """Raise :class:`WeightsError` naming ``source`` and the first bad keys if ``state`` does not
    fit ``model`` key for key and shape for shape (BN's ``num_batches_tracked`` may be absent)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys of the wrong shape, file vs model ({_first(wrong_shape)})")
    if problems:
        raise WeightsError(f"{source} does not fit torchvision's {name} classification "
                           f"model: " + "; ".join(problems))


def _is_head(weight: torch.Tensor, bias: torch.Tensor, model_weight: torch.Tensor) -> bool:
    """weight (K, D) and bias (K,) of a K-class linear layer on the model's D features."""
    return (weight.dim() == 2 and bias.dim() == 1 and weight.shape[0] == bias.shape[0]
            and weight.shape[1] == model_weight.shape[1])


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (", ..." if len(items) > _SHOW else "")
