"""Variants of a shapes dataset for the check set: data the default recipe was not tuned on.

    python datasets/make_variants.py --src datasets/shapes --out /tmp/variants
        -> /tmp/variants/kp3_noflip/   stars carry 3 keypoints named apex, left, right and the
                                       category has no flip_map (sided names, no pairs given)
        -> /tmp/variants/longtail/     the training split keeps all images without circles and
                                       only enough with circles that circles are 20x rarer than
                                       the most common class; val is unchanged

``--src`` is any dataset in the shapes layout (generated first with ``--generate`` when it does
not exist). Images are hard-linked when the file system allows it, else copied. The output
depends only on the source and ``--seed``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

KP3 = {"apex": "top", "left": "lower_left", "right": "lower_right"}  # new name -> shapes name
RARE_CATEGORY = 1  # circle in the shapes data
RARE_FACTOR = 20


def _link_images(src: Path, dst: Path, file_names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in file_names:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / name, target)
        except OSError:
            shutil.copy2(src / name, target)


def kp3_noflip(coco: dict) -> dict:
    """Stars keep 3 of their 5 keypoints, renamed apex / left / right, with no flip_map."""
    out = copy.deepcopy(coco)
    for cat in out["categories"]:
        if cat.get("keypoints"):
            old = list(cat["keypoints"])
            keep = [old.index(KP3[n]) for n in KP3]
            cat["keypoints"] = list(KP3)
            cat["skeleton"] = [[1, 2], [1, 3], [2, 3]]
            cat.pop("flip_map", None)
    for ann in out["annotations"]:
        kp = ann.get("keypoints")
        if kp:
            triples = [kp[3 * i:3 * i + 3] for i in range(len(kp) // 3)]
            ann["keypoints"] = [v for i in keep for v in triples[i]]
            ann["num_keypoints"] = sum(1 for i in keep if triples[i][2] > 0)
    return out


def longtail(coco: dict, seed: int) -> dict:
    """Drop training images holding the rare class until it has 1/RARE_FACTOR of the instances
    of the most common class (counted after the drop)."""
    rng = np.random.default_rng(seed)
    by_image: dict[int, Counter] = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            by_image.setdefault(ann["image_id"], Counter())[ann["category_id"]] += 1
    with_rare = [i for i, c in by_image.items() if c[RARE_CATEGORY] > 0]
    rng.shuffle(with_rare)
    keep_ids = {img["id"] for img in coco["images"]} - set(with_rare)
    common = Counter()
    for i in keep_ids:
        common.update(by_image.get(i, Counter()))
    rare = 0
    for i in with_rare:
        c = by_image[i]
        top = max((common + c)[k] for k in common + c if k != RARE_CATEGORY)
        if (rare + c[RARE_CATEGORY]) * RARE_FACTOR > top:
            continue
        keep_ids.add(i)
        common.update(c)
        rare += c[RARE_CATEGORY]
    out = copy.deepcopy(coco)
    out["images"] = [img for img in out["images"] if img["id"] in keep_ids]
    out["annotations"] = [a for a in out["annotations"] if a["image_id"] in keep_ids]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default="datasets/shapes", help="a dataset in the shapes layout")
    p.add_argument("--out", required=True, help="folder that receives one sub-folder per variant")
    p.add_argument("--generate", action="store_true", help="generate the built-in dataset at --src first")
    p.add_argument("--seed", type=int, default=0, help="seed of the long-tail image selection")
    args = p.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    if not (src / "train.json").is_file():
        if not args.generate:
            p.error(f"{src} holds no train.json; pass --generate to make the built-in dataset there")
        from common.shapes import ensure_shapes_dataset

        ensure_shapes_dataset(src)
    splits = {s: json.loads((src / f"{s}.json").read_text()) for s in ("train", "val")}
    variants = {
        "kp3_noflip": {s: kp3_noflip(c) for s, c in splits.items()},
        "longtail": {"train": longtail(splits["train"], args.seed), "val": splits["val"]},
    }
    for name, data in variants.items():
        folder = out / name
        if folder.exists():
            p.error(f"{folder} already exists; choose another --out")
        for split, coco in data.items():
            _link_images(src / split, folder / split, [img["file_name"] for img in coco["images"]])
            (folder / f"{split}.json").write_text(json.dumps(coco))
        counts = Counter(a["category_id"] for a in data["train"]["annotations"] if not a.get("iscrowd", 0))
        print(f"{folder}: {len(data['train']['images'])} train / {len(data['val']['images'])} val images; "
              f"train instances per category id {dict(sorted(counts.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
