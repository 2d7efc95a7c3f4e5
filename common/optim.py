"""Parameter groups for the optimizer: per-module learning-rate multipliers and no weight decay
on normalisation and bias parameters.

    groups = param_groups(model, base_lr=0.02, weight_decay=1e-4,
                          lr_mults={"backbone.body": 0.1, "backbone.body.c5": 0.5})
    optimizer = torch.optim.SGD(groups, lr=0.02, momentum=0.9)

Each group carries ``lr_mult``; a scheduler sets ``group["lr"] = scheduled_lr * group["lr_mult"]``.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

# modules whose weight and bias are normalisation parameters
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
              nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, *, base_lr: float, weight_decay: float,
                 lr_mults: Mapping[str, float] | None = None, norm_weight_decay: float = 0.0,
                 bias_lr_factor: float = 1.0) -> list[dict]:
    """Group the trainable parameters of ``model`` (``requires_grad`` only) for an optimizer.

    lr_mults:          {name prefix: multiplier}; a parameter takes the multiplier of the longest
                       prefix that names it or one of its parent modules (``"backbone.body"``
                       matches ``backbone.body.c3.0.conv1.weight``, not ``backbone.body2.x``);
                       others get 1.0. A prefix that names no parameter at all is an error.
    norm_weight_decay: weight decay for norm-layer parameters and for every bias (0: none);
                       other parameters get ``weight_decay``.
    bias_lr_factor:    extra LR multiplier for biases.

    Returns one dict per distinct (lr_mult, weight_decay), in order of first appearance:
    ``{"params": [...], "lr": base_lr * lr_mult, "weight_decay": ..., "lr_mult": ...}``.
    """
    lr_mults = dict(lr_mults or {})
    for prefix, mult in lr_mults.items():
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult < 0:
            raise ValueError(f"lr_mults[{prefix!r}] = {mult!r} must be a non-negative number")
    all_names = [n for n, _ in model.named_parameters()]
    for prefix in lr_mults:
        if not any(_under(n, prefix) for n in all_names):
            tops = list(dict.fromkeys(".".join(n.split(".")[:2]) for n in all_names))[:5]
            raise ValueError(f"lr_mults key {prefix!r} names no parameter of the model "
                             f"(parameter names look like {', '.join(tops)}, ...)")

    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES)
                   for p in m.parameters(recurse=False)}
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = name.rsplit(".", 1)[-1] == "bias"
        matches = [k for k in lr_mults if _under(name, k)]
        mult = float(lr_mults[max(matches, key=len)]) if matches else 1.0
        if is_bias:
            mult *= bias_lr_factor
        decay = norm_weight_decay if (is_bias or id(p) in norm_params) else weight_decay
        key = (mult, float(decay))
        if key not in groups:
            groups[key] = {"params": [], "lr": base_lr * mult, "weight_decay": float(decay),
                           "lr_mult": mult}
        groups[key]["params"].append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters (is everything frozen? "
                         "freeze_at=5 freezes the whole backbone body, not the heads)")
    return list(groups.values())


def _under(name: str, prefix: str) -> bool:
    """True if the dotted ``name`` is ``prefix`` or lies inside the module ``prefix``."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")
