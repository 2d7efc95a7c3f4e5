"""The toy model of the engine tests (test_engine_trainer, test_engine_ddp): it follows the model
contract ``forward(images, targets) -> (predictions, losses)`` on (N, 4) inputs."""
import torch
import torch.nn.functional as F
from torch import nn


class ToyImages:
    """ImageList-like: a (N, 4) tensor with ``.to``."""

    def __init__(self, tensor):
        self.tensor = tensor

    def to(self, device):
        return ToyImages(self.tensor.to(device))


class ToyModel(nn.Module):
    """(N, 4) -> (N, 2) regression with two loss terms, following the model contract."""

    def __init__(self, dropout=0.0, bad_loss_at=None, bad_value=float("nan")):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(8, 2)
        self.bad_loss_at, self.bad_value, self.calls = bad_loss_at, bad_value, 0

    def forward(self, images, targets=None):
        out = self.head(self.body(images.tensor))  # (N, 2)
        predictions = [] if self.training else [{"out": o} for o in out]
        losses = {}
        if targets is not None:
            y = torch.stack([t["y"] for t in targets])  # (N, 2)
            losses = {"loss_a": F.mse_loss(out[:, 0], y[:, 0]), "loss_b": F.mse_loss(out[:, 1], y[:, 1])}
            if self.training:
                self.calls += 1
                if self.calls == self.bad_loss_at:
                    losses["loss_b"] = losses["loss_b"] + self.bad_value
        return predictions, losses
