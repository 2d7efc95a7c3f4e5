"""Generate the built-in synthetic shapes dataset (COCO format + semantic label maps).

    python datasets/prepare_shapes.py --out datasets/shapes
    python datasets/prepare_shapes.py --out /tmp/shapes_small --train 100 --val 20 --size 128 --seed 1

The directory is written next to its final place and renamed, so an interrupted run leaves no
half dataset. See datasets/README.md for the layout and conventions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: OpenMP threads sleep when idle; see common/tooling.py

from common.shapes import ensure_shapes_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="datasets/shapes", help="output directory (must not exist or be empty)")
    parser.add_argument("--train", type=int, default=2000, help="number of training images")
    parser.add_argument("--val", type=int, default=200, help="number of validation images")
    parser.add_argument("--size", type=int, default=192, help="long side of every image in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the output depends only on the arguments")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory is replaced by the finished dataset
    elif out.exists():
        parser.error(f"--out {out} already exists and is not empty; delete it or choose another directory")
    try:
        ensure_shapes_dataset(out, num_train=args.train, num_val=args.val, size=args.size, seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {args.train} train and {args.val} val images of long side {args.size} to {out}")
    return out


if __name__ == "__main__":
    main()
