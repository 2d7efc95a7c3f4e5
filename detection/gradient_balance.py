"""No RoI head takes the shared backbone from the others.

The box, mask and keypoint branches pool from the same features, so the backbone learns from
the sum of their gradients. A branch whose loss stays large (a keypoint heatmap softmax over
S*S cells starts at ln(S^2) = 8 nats for S = 56, and stays high when labels are noisy: sides
swapped by flips without a flip map, occluded points guessed) sends a gradient many times the
box branch's. Then the total is clipped (``solver.clip_grad_norm``) and AdamW divides every
backbone weight's step by the root mean square of that sum: the box branch's part of the step
shrinks by the ratio of the norms, and the classifier learns nothing (seen: keypoint gradient
~50 against a clip of 10; ``loss_cls`` flat at 0.6 for 1000 iterations).

The remedy here is gradient balancing at the boundary between trunk and branch: the gradient
an auxiliary branch (mask, keypoint) sends back into its pooled features is scaled down, when
needed, to the norm that the box branch sent into its own pooled features. The box branch's
norm is a running mean over the previous iterations (both branches' gradients arrive in the same
backward pass, in no fixed order). The branch's own weights still learn from its full loss;
only its pull on the shared features is capped. Nothing in this depends on the dataset, the
number of keypoints or the heatmap size, and where a branch's gradient is already smaller than
the box branch's (the usual case for masks) nothing changes.

Shape shorthand: R RoIs, C channels, S pooled size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class _Cap(torch.autograd.Function):
    """Identity forward; backward scales the gradient to norm <= ``reference * ratio``."""

    @staticmethod
    def forward(ctx, x: Tensor, reference: Tensor, ratio: float) -> Tensor:
        ctx.reference, ctx.ratio = reference, ratio
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        limit = ctx.reference * ctx.ratio
        norm = grad.float().norm()
        if limit > 0 and norm > limit:
            grad = grad * (limit / norm).to(grad.dtype)
        return grad, None, None


class TrunkGradientBalance(nn.Module):
    """Keeps a running mean of the gradient norm the box branch sends into its pooled features,
    and caps each auxiliary branch's at ``ratio`` times that.

    Usage (training only): ``box_feats = balance.reference(box_feats)`` on the (R, C, S, S)
    pooled box features, ``mask_feats = balance.cap(mask_feats)`` on each auxiliary branch's.
    ``ratio`` <= 0 turns it off (both calls return their input unchanged).
    """

    def __init__(self, ratio: float = 1.0, momentum: float = 0.9):
        super().__init__()
        self.ratio = float(ratio)
        self.momentum = float(momentum)
        # running mean of the box branch's gradient norm (0 until the first backward pass);
        # a buffer, so a resumed run continues with the same value
        self.register_buffer("box_grad_norm", torch.zeros(()))

    optional_state = ("box_grad_norm",)  # common.engine.checkpoint.load_model_state: may be absent

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before this module existed have no running mean: start from 0, as a
        # fresh run does (the first backward pass sets it)
        state_dict.setdefault(prefix + "box_grad_norm", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reference(self, x: Tensor) -> Tensor:
        if self.ratio <= 0 or not (self.training and x.requires_grad):
            return x
        x = x.view_as(x)
        x.register_hook(self._update)
        return x

    @torch.no_grad()
    def _update(self, grad: Tensor) -> None:
        norm = grad.float().norm()
        if not torch.isfinite(norm):
            return
        if self.box_grad_norm > 0:
            self.box_grad_norm.mul_(self.momentum).add_((1 - self.momentum) * norm)
        else:
            self.box_grad_norm.copy_(norm)

    def cap(self, x: Tensor) -> Tensor:
        if self.ratio <= 0 or not (self.training and x.requires_grad):
            return x
        return _Cap.apply(x, self.box_grad_norm, self.ratio)
