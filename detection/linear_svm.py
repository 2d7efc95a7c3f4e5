"""Linear SVMs with hard-negative mining, as R-CNN trains its per-class classifiers.

Shape shorthand: P positives, Q negatives, D feature dimensions.

:func:`fit_linear_svm` minimises liblinear's L2-regularised squared-hinge objective
    0.5 * |w'|^2 + C * sum_i c_i * max(0, 1 - y_i * w' . x'_i)^2
where x' = [x, bias_mult] (so the bias b = bias_mult * w'_D is regularised, as in liblinear),
c_i = pos_weight for positives and 1 for negatives. The objective is smooth and convex; L-BFGS
in float64 solves it.

:func:`mine_hard_negatives` is the loop of R-CNN's code (after Felzenszwalb et al.'s DPM): the
negatives arrive in chunks (one image at a time); those the current SVM scores above
``HARD_THRESH`` (inside the margin or misclassified) join a cache; when ``retrain_limit`` new ones
have joined, the SVM is retrained on the positives and the cache and the cached negatives it
then scores below ``EASY_THRESH`` are evicted. After the last chunk it is retrained once more.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

HARD_THRESH = -1.0001  # a negative scoring above this violates the margin (R-CNN's code)
EASY_THRESH = -1.2  # a cached negative scoring below this is evicted after a retrain (R-CNN's code)


def fit_linear_svm(x_pos: Tensor, x_neg: Tensor, C: float, pos_weight: float = 1.0,
                   bias_mult: float = 10.0, max_iter: int = 200) -> tuple[Tensor, float]:
    """(P, D) positives, (Q, D) negatives -> (w (D,) float32, bias b); the score is x . w + b."""
    if x_pos.shape[0] == 0 or x_neg.shape[0] == 0:
        raise ValueError(f"fit_linear_svm needs positives and negatives, got {x_pos.shape[0]} and {x_neg.shape[0]}")
    x = torch.cat([x_pos, x_neg]).double()
    x = torch.cat([x, x.new_full((len(x), 1), bias_mult)], dim=1)  # (P + Q, D + 1): the bias feature
    y = torch.cat([x.new_ones(len(x_pos)), -x.new_ones(len(x_neg))])
    cost = torch.cat([x.new_full((len(x_pos),), C * pos_weight), x.new_full((len(x_neg),), C)])
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        margin = (1 - y * (x @ w)).clamp(min=0)
        loss = 0.5 * w.dot(w) + (cost * margin * margin).sum()
        loss.backward()
        return loss

    opt.step(objective)
    w = w.detach()
    return w[:-1].float(), float(w[-1] * bias_mult)


@dataclass
class MiningLog:
    """What :func:`mine_hard_negatives` did: hard negatives added and cache size at each retrain."""

    added: list[int] = field(default_factory=list)  # new hard negatives since the previous retrain
    cache_sizes: list[int] = field(default_factory=list)  # cached negatives after each retrain's eviction
    seen: int = 0  # negatives scored in all


def mine_hard_negatives(x_pos: Tensor, negative_chunks: Iterable[Tensor], C: float, pos_weight: float = 2.0,
                        bias_mult: float = 10.0, retrain_limit: int = 2000
                        ) -> tuple[Tensor, float, Tensor, MiningLog]:
    """One pass of hard-negative mining over the chunks (Q_j, D) of negatives.

    Returns (w (D,), b, the final cache of hard negatives (Q', D), MiningLog). The SVM starts at
    w = 0, b = 0, which scores every negative 0 > HARD_THRESH, so the first chunk is taken
    whole (R-CNN's code does the same on its first image). A class without positives is an error.
    """
    if x_pos.shape[0] == 0:
        raise ValueError("mine_hard_negatives: no positives (a class without ground-truth boxes cannot "
                         "have an SVM)")
    w, b = x_pos.new_zeros(x_pos.shape[1]), 0.0
    cache = x_pos.new_zeros((0, x_pos.shape[1]))
    log, new = MiningLog(), 0
    for chunk in negative_chunks:
        log.seen += len(chunk)
        hard = chunk[chunk @ w + b > HARD_THRESH]
        cache, new = torch.cat([cache, hard]), new + len(hard)
        if new >= retrain_limit:
            w, b, cache = _retrain(x_pos, cache, C, pos_weight, bias_mult)
            log.added.append(new)
            log.cache_sizes.append(len(cache))
            new = 0
    if len(cache) == 0:
        raise ValueError(f"mine_hard_negatives: no negatives among {log.seen} (every chunk was empty)")
    if new or not log.added:
        w, b, cache = _retrain(x_pos, cache, C, pos_weight, bias_mult)
        log.added.append(new)
        log.cache_sizes.append(len(cache))
    return w, b, cache, log


def _retrain(x_pos: Tensor, cache: Tensor, C: float, pos_weight: float, bias_mult: float):
    """Fit on positives + cache, then evict the cached negatives the new SVM finds easy."""
    w, b = fit_linear_svm(x_pos, cache, C, pos_weight, bias_mult)
    return w, b, cache[cache @ w + b >= EASY_THRESH]
