"""Which keypoints swap under a horizontal flip, found from their names.

COCO leaves the flip map out of its annotation files (torchvision and detectron2 hard-code
COCO's person pairs). A dataset without one still needs it: a flipped image whose "left_hand"
keeps its name teaches the keypoint head that left and right are the same point, a loss that
can never fall. So the pairs are read off the names: a name with a side token (``left`` /
``right``, ``l`` / ``r``, in any case, as a ``_`` / ``-`` / ``.`` / space separated token or a
camelCase part: ``left_eye``, ``eye_l``, ``LeftEye``, ``l-knee``, ``left``) is paired with the
name that has the other side in the same place and is otherwise identical.
"""
from __future__ import annotations

import re

_SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}
# tokens: runs of letters split at separators and camelCase boundaries, digits kept apart
_TOKEN = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _mirror(name: str) -> list[str]:
    """Every name obtained by swapping one side token of ``name`` (case style kept)."""
    out = []
    for m in _TOKEN.finditer(name):
        token = m.group(0)
        other = _SIDES.get(token.lower())
        if other is None:
            continue
        if token.isupper():
            other = other.upper()
        elif token[0].isupper():
            other = other.capitalize()
        out.append(name[:m.start()] + other + name[m.end():])
    return out


def sided_keypoints(names: list[str]) -> list[str]:
    """The names that carry a side token (whether or not their mirror exists)."""
    return [n for n in names if _mirror(n)]


def derive_flip_map(names: list[str]) -> list[tuple[str, str]]:
    """(left, right) pairs of ``names`` whose names differ only in the side token, each name in
    at most one pair, in the order of ``names``."""
    known = set(names)
    taken: set[str] = set()
    pairs = []
    for name in names:
        if name in taken:
            continue
        for other in _mirror(name):
            if other in known and other not in taken and other != name:
                pairs.append((name, other))
                taken.update((name, other))
                break
    return pairs
