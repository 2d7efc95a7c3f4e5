import torch

from detection.sampler import sample_balanced


def test_fraction_and_fill():
    pos = torch.zeros(100, dtype=torch.bool)
    pos[:30] = True
    neg = ~pos
    neg[95:] = False  # ignored
    torch.manual_seed(0)
    p, n = sample_balanced(pos, neg, batch_size=40, positive_fraction=0.25)
    assert len(p) == 10 and len(n) == 30
    assert pos[p].all() and neg[n].all()
    assert len(set(p.tolist())) == 10
    # few positives: negatives fill the rest of the batch
    p, n = sample_balanced(pos & (torch.arange(100) < 3), neg, batch_size=40, positive_fraction=0.25)
    assert len(p) == 3 and len(n) == 37


def test_deterministic_under_seed():
    pos = torch.rand(200, generator=torch.Generator().manual_seed(1)) > 0.5
    torch.manual_seed(3)
    a = sample_balanced(pos, ~pos, 64, 0.5)
    torch.manual_seed(3)
    b = sample_balanced(pos, ~pos, 64, 0.5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_nothing_to_sample():
    none = torch.zeros(5, dtype=torch.bool)
    p, n = sample_balanced(none, none, 8, 0.5)
    assert p.numel() == 0 and n.numel() == 0
