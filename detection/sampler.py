"""Balanced sampling of positive and negative training examples (anchors or proposals).

Shape shorthand: R candidates.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sample_balanced(is_positive: Tensor, is_negative: Tensor, batch_size: int,
                    positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Pick at most ``batch_size`` candidates, at most ``positive_fraction`` of them positive.

    is_positive, is_negative: (R,) bool (candidates that are neither are never picked).
    Returns (pos_idx, neg_idx), int64 indices into R. Negatives fill what positives leave.
    Random, and deterministic under ``torch.manual_seed``.
    """
    pos = is_positive.nonzero().squeeze(1)
    neg = is_negative.nonzero().squeeze(1)
    num_pos = min(pos.numel(), int(batch_size * positive_fraction))
    num_neg = min(neg.numel(), batch_size - num_pos)
    # randperm on CPU keeps the random stream identical on every device
    pos = pos[torch.randperm(pos.numel())[:num_pos].to(pos.device)]
    neg = neg[torch.randperm(neg.numel())[:num_neg].to(neg.device)]
    return pos, neg
