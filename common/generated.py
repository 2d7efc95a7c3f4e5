"""Generated datasets appear whole or not at all: made in a temporary sibling, then renamed.

    generate_once(Path("datasets/shapes"), lambda tmp: generate_shapes_dataset(tmp, **kwargs))

Used by the built-in shapes data (common/shapes.py) and the classification source task
(classification/source_data.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def generate_once(root: Path, generate: Callable[[Path], object]) -> None:
    """If ``root`` does not exist, run ``generate(tmp)`` on an empty temporary directory next to
    it and rename that to ``root``: an interrupted run never leaves a half dataset, and two
    processes racing here both end up with one complete dataset."""
    root = Path(root)
    if root.exists():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate(tmp)
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():  # not a lost race with another process: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
