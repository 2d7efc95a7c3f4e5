#!/usr/bin/env python
"""Evaluate a trained segmentation model on a val split: mIoU, per-class IoU, pixel accuracy,
frequency-weighted IoU and boundary IoU (percent), a confusion-matrix PNG and drawn predictions.

    python tools/eval_seg.py --config configs/segmentation/unet_shapes_cpu.yaml \
        --checkpoint runs/seg/model_best.pth [--data DIR] [--out metrics.json] [key=value ...]

``--out`` gets the metrics; ``plots/`` beside it the confusion matrix (``confusion_matrix.png``
row-normalised, ``confusion_matrix.json`` pixel counts) and the drawn predictions: the layout
tools/eval_coco.py writes. Errors: one line on stderr, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import common  # noqa: E402,F401  (first: lets idle OpenMP threads sleep, see common/__init__.py)

import argparse  # noqa: E402
import json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a semantic segmentation checkpoint.")
    p.add_argument("--config", required=True, help="the YAML the model was trained with")
    p.add_argument("--checkpoint", required=True, help="model_best.pth / model_final.pth / model_XXXXXXX.pth")
    p.add_argument("--data", help="dataset directory (default: the shapes dataset)")
    p.add_argument("--out", default="metrics.json", help="where to write the metrics JSON")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p.parse_args(argv)


def run(args) -> dict:
    import torch

    from common.config import load_config
    from common.engine import load_checkpoint, load_model_state
    from segmentation.build import build_dataset, build_model, resolve_root
    from segmentation.config import SegConfig
    from segmentation.data import build_test_loader
    from segmentation.metrics import PredictionDrawer, SemSegEvaluator, evaluate_model

    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    cfg = load_config(SegConfig, args.config, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    val_ds = build_dataset(cfg.data, cfg.data.val_split, train=False, root=resolve_root(cfg.data))
    model = build_model(cfg.model, val_ds.num_classes, ignore_index=val_ds.ignore_index)
    state = load_checkpoint(args.checkpoint)
    load_model_state(model, state.get("model", state), str(args.checkpoint))
    model.to(device)
    loader = build_test_loader(val_ds, size_divisibility=model.size_divisibility, pad_value=model.pixel_mean)
    evaluator = SemSegEvaluator(val_ds.num_classes, val_ds.class_names, val_ds.ignore_index)
    out = Path(args.out)
    draw = PredictionDrawer(out.parent / "plots", val_ds.class_names, val_ds.ignore_index, cfg.data.num_vis)
    metrics = evaluate_model(model, loader, evaluator, device, on_batch=draw)
    metrics = {k: v for k, v in metrics.items() if k != "val"}
    evaluator.save(out.parent, metrics, json_name=out.name, plots_dir=out.parent / "plots")
    print(json.dumps({k: round(v, 2) for k, v in metrics.items() if isinstance(v, float)}))
    return metrics


def main(argv=None) -> int:
    args = parse_args(argv)
    from common.engine import CheckpointError

    try:
        run(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"eval_seg.py: error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
