"""The linear SVM and the hard-negative mining loop on toy feature sets."""
import pytest
import torch

from detection.linear_svm import EASY_THRESH, HARD_THRESH, fit_linear_svm, mine_hard_negatives


def toy_set(seed=0, chunks=20, per_chunk=200):
    """Separable 2-D data: positives around (3, 3), many easy negatives around (-4, -4) and a few
    hard ones near the boundary x + y = 2.5 on the negative side, scattered over the chunks."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(40, 2, generator=g) * 0.3 + 3.0
    negs, hard = [], []
    for k in range(chunks):
        easy = torch.randn(per_chunk, 2, generator=g) * 0.5 - 4.0
        if k % 4 == 1:
            h = torch.tensor([[0.6, 0.9], [1.0, 0.5]]) + 0.05 * torch.randn(2, 2, generator=g)
            hard.append(h)
            easy = torch.cat([easy, h])
        negs.append(easy)
    return pos, negs, torch.cat(hard)


def test_fit_linear_svm_separates_and_weights_positives():
    pos, negs, _ = toy_set()
    neg = torch.cat(negs)
    w, b = fit_linear_svm(pos, neg, C=1.0, pos_weight=2.0, bias_mult=10.0)
    assert (pos @ w + b > 0).all() and (neg @ w + b < 0).all()
    # with cost only on positives' violations the boundary moves away from them
    w1, b1 = fit_linear_svm(pos, neg, C=1.0, pos_weight=1.0)
    w2, b2 = fit_linear_svm(pos, neg, C=1.0, pos_weight=50.0)
    assert (pos @ w2 + b2).min() >= (pos @ w1 + b1).min() - 1e-4
    with pytest.raises(ValueError, match="needs positives and negatives, got 40 and 0"):
        fit_linear_svm(pos, neg[:0], C=1.0)


def test_hard_negative_mining_converges_and_keeps_the_hard_negatives():
    pos, negs, hard = toy_set()
    w, b, cache, log = mine_hard_negatives(pos, iter(negs), C=1.0, pos_weight=2.0, retrain_limit=150)
    neg = torch.cat(negs)
    assert log.seen == len(neg)
    # the first chunk is taken whole (w = 0 scores everything 0), later ones only their hard part
    assert log.added[0] >= len(negs[0]) and len(log.added) >= 2
    assert sum(log.added) < len(neg) / 2
    # converged: separable data is separated, and a second pass would find no new hard negative
    assert (pos @ w + b > 0).all() and (neg @ w + b < 0).all()
    scores = neg @ w + b
    in_cache = (neg[:, None, :] == cache[None]).all(-1).any(1)
    assert not ((scores > HARD_THRESH) & ~in_cache).any()
    # the boundary negatives are in the cache; what remains there is not easy
    assert (hard[:, None, :] == cache[None]).all(-1).any(1).all()
    assert (cache @ w + b >= EASY_THRESH).all()
    assert len(cache) < len(neg) / 10


def test_mining_errors_name_the_problem():
    pos, negs, _ = toy_set(chunks=2)
    with pytest.raises(ValueError, match="no positives"):
        mine_hard_negatives(pos[:0], iter(negs), C=1.0)
    with pytest.raises(ValueError, match="no negatives among 0"):
        mine_hard_negatives(pos, iter([pos[:0]]), C=1.0)
