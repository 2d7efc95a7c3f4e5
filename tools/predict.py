#!/usr/bin/env python
"""Draw a trained detector's predictions on images (OpenCV).

    python tools/predict.py --checkpoint runs/x/model_final.pth --input photo.jpg --out vis/
    python tools/predict.py --checkpoint runs/x/model_final.pth --input folder/ --out vis/ \
        [--config C] [--score-thresh 0.5] [--device cpu] [key=value ...]
    python tools/predict.py --checkpoint runs/x/model_final.pth --out vis/   # the config's val images

Each image gets ``OUT/<name>.jpg`` with masks, boxes, class names, scores and keypoints (with
the skeleton); ``OUT/predictions.json`` lists what was drawn, per image:
``{"file", "height", "width", "instances": [{"class", "label", "score", "box": [x0, y0, x1, y1]}]}``
(pixels of the image on disk). Class names, keypoints and the skeleton come from the
checkpoint's ``metadata["dataset"]``; the model from ``--config`` or the config stored in the
checkpoint (as in tools/eval_coco.py). Without ``--input`` the images are the config's val
images (the built-in shapes dataset is generated there on first use).

A Fast R-CNN checkpoint (``model.proposal_generator: precomputed``) gets its proposals from
selective search run on each image here ("fast" mode, at most ``data.max_proposals`` boxes).

A bad path prints one line to stderr and exits with status 2; an unreadable image inside a
folder is skipped and counted in one warning.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is not a package
import common  # noqa: E402,F401  (first: lets idle OpenMP threads sleep, see common/__init__.py)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by tools/train_det.py")
    p.add_argument("--config", help="YAML config of the model (default: the config stored in the checkpoint)")
    p.add_argument("--input", help="an image or a folder of images (default: the config's val images)")
    p.add_argument("--out", required=True, help="folder for the drawn images and predictions.json")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw predictions scoring at least this")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. data.test_min_size=640")
    return p.parse_intermixed_args(argv)  # overrides may come before or after the options


def list_images(path: Path) -> list[Path]:
    """``path`` itself, or the image files directly inside the folder ``path``, sorted by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} does not exist")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"input folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def default_images(data_cfg) -> Path:
    """The config's val image folder; the built-in dataset is generated on first use."""
    from detection.config import DataConfig

    if data_cfg.val_images:
        return Path(data_cfg.val_images)
    root = Path(data_cfg.root)
    if data_cfg.root == DataConfig.root and not (root / "val").is_dir():
        from common.shapes import ensure_shapes_dataset

        print(f"generating the built-in synthetic dataset in {root} (first use)")
        ensure_shapes_dataset(root)
    return root / "val"


def instances_json(pred: dict, meta, score_thresh: float) -> list[dict]:
    """What is drawn for one image: class, label, score and xyxy box (pixels on disk) per instance."""
    keep = pred["scores"] >= score_thresh
    return [{"class": meta.class_names[int(label)], "label": int(label), "score": round(float(score), 4),
             "box": [round(float(v), 2) for v in box]}
            for box, label, score in zip(pred["pred_boxes"][keep], pred["pred_classes"][keep], pred["scores"][keep])]


def predict(args: argparse.Namespace) -> int:
    import warnings

    import cv2

    from common.engine.distributed import parse_device
    from detection.build import build_detector, read_checkpoint
    from detection.data import DatasetError, build_transforms, load_coco_json, meta_from_coco, read_image
    from detection.visualize import draw_prediction, predict_image

    if not 0.0 <= args.score_thresh <= 1.0:
        raise ValueError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    device = parse_device(args.device)
    state, cfg, meta = read_checkpoint(args.checkpoint, args.config, args.overrides)
    images = list_images(Path(args.input) if args.input else default_images(cfg.data))
    if meta is None:  # an old checkpoint: the classes of the config's val annotations
        ann = Path(cfg.data.val_json or Path(cfg.data.root) / "val.json")
        if not ann.is_file():
            raise DatasetError(f"checkpoint {args.checkpoint} has no dataset metadata (class names) and "
                               f"{ann} does not exist to read them from")
        print(f"note: {args.checkpoint} has no dataset metadata; class names are read from {ann}")
        meta = meta_from_coco(load_coco_json(ann), str(ann))
    model, cfg = build_detector(state, cfg, meta, args.checkpoint, device)
    transforms = build_transforms(meta, train=False, min_size=cfg.data.test_min_size, max_size=cfg.data.max_size)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    listing, skipped, used_names = [], [], set()
    for path in images:
        try:
            image = read_image(path, path.name)
        except DatasetError as e:
            if len(images) == 1:
                raise
            skipped.append(str(e))
            continue
        proposals = None
        if cfg.model.proposal_generator == "precomputed":  # Fast R-CNN: selective search on the spot
            from detection.selective_search import selective_search

            proposals, _ = selective_search(image, "fast", max_proposals=cfg.data.max_proposals)
        pred = predict_image(model, image, transforms, device, proposals)
        drawn = draw_prediction(image, pred, meta, args.score_thresh)
        name = f"{path.stem}.jpg" if f"{path.stem}.jpg" not in used_names else f"{path.name}.jpg"
        used_names.add(name)
        cv2.imwrite(str(out / name), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        listing.append({"file": str(path), "drawn": name, "height": image.shape[0], "width": image.shape[1],
                        "instances": instances_json(pred, meta, args.score_thresh)})
    (out / "predictions.json").write_text("[\n" + ",\n".join(json.dumps(x) for x in listing) + "\n]\n")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(images)} images that could not be read; first: {skipped[0]}",
                      stacklevel=1)
    found = sum(len(item["instances"]) for item in listing)
    print(f"drew {found} predictions (score >= {args.score_thresh}) on {len(listing)} images in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = parse_args(argv)
    from common.engine.checkpoint import CheckpointError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", DeprecationWarning)  # library internals
            rc = predict(args)
        for w in caught:
            print(f"predict: warning: {w.message}", file=sys.stderr)
        return rc
    except (ValueError, CheckpointError, OSError) as e:  # DatasetError and ConfigError are ValueErrors
        print(f"predict: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
