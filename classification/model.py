"""A torchvision classification network behind the engine's model contract, and top-k accuracy.

Shape shorthand: N images, K classes, S image side.

The network is torchvision's own (``torchvision.models.resnet18(num_classes=K)`` ...), so its
``state_dict()`` is a checkpoint in torchvision's classification format: ``tools/train_cls.py``
saves it as ``classifier.pth`` and ``model.backbone.weights=classifier.pth`` loads it into any
detector or segmenter (the K-class head is left out there, see common/backbones/weights.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.backbones import IMAGENET_MEAN, IMAGENET_STD


class ImageClassifier(nn.Module):
    """forward(images (N, 3, S, S) in [0, 1], labels (N,) | None) -> (predictions, losses).

    losses: {"loss_cls": cross entropy} whenever labels are given (train and eval mode);
    predictions: in eval mode one dict per image, {"scores": (K,) softmax, "pred_classes": ()
    argmax}; an empty list in train mode.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.pixel_mean = IMAGENET_MEAN
        self.pixel_std = IMAGENET_STD

    def forward(self, images: Tensor, labels: Tensor | None = None) -> tuple[list[dict], dict[str, Tensor]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"classifier input must be (N, 3, H, W) images, got shape {tuple(images.shape)}")
        mean = torch.tensor(self.pixel_mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        logits = self.net((images - mean) / std)  # (N, K)
        losses = {} if labels is None else {"loss_cls": F.cross_entropy(logits, labels)}
        predictions = []
        if not self.training:
            scores = logits.softmax(dim=1)
            predictions = [{"scores": s, "pred_classes": s.argmax()} for s in scores]
        return predictions, losses


def topk_correct(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """How many of the N images have their label among the k best of ``scores`` (N, K), per k.

    k larger than K counts every image (top-5 of a 3-class problem is always right).
    """
    k_max = min(max(ks), scores.shape[1])
    best = scores.topk(k_max, dim=1).indices  # (N, k_max), best first
    hit = best == labels[:, None]              # (N, k_max)
    return {k: int(hit[:, :min(k, k_max)].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate_classifier(model: ImageClassifier, loader, device) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and the mean loss over ``loader``: {"top1", "top5", "loss"}."""
    was_training = model.training
    model.eval()
    correct = {1: 0, 5: 0}
    total, loss_sum = 0, 0.0
    try:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            predictions, losses = model(images, labels)
            scores = torch.stack([p["scores"] for p in predictions])  # (N, K)
            for k, n in topk_correct(scores, labels).items():
                correct[k] += n
            total += len(labels)
            loss_sum += float(losses["loss_cls"]) * len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_classifier: the evaluation set is empty")
    return {"top1": 100.0 * correct[1] / total, "top5": 100.0 * correct[5] / total, "loss": loss_sum / total}
