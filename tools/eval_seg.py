#!/usr/bin/env python
"""Evaluate a trained segmentation model on a val split: mIoU, per-class IoU, pixel accuracy,
frequency-weighted IoU and boundary IoU (percent), a confusion-matrix PNG and drawn predictions.

    python tools/eval_seg.py --checkpoint runs/seg/model_best.pth [--data DIR] [--output DIR] \
        [--config C] [--device cpu] [key=value ...]

The model is built from the config the checkpoint stores (train_seg's resolved config) unless
``--config`` is given, with the ``key=value`` overrides on top; nothing is downloaded. Writes
``OUT/metrics.json``, ``OUT/plots/confusion_matrix.png`` and ``OUT/vis/*.jpg``; ``OUT`` defaults
to ``eval_<checkpoint name>/`` beside the checkpoint. The val split gets the training tools'
start-up dataset check first (``data.skip_bad_images=true`` leaves bad images out and lists them
in ``OUT/skipped_images.txt``). Errors: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py


def parse_args(argv=None) -> argparse.Namespace:
    from common.tooling import add_arguments, tool_parser

    p = tool_parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="model_best.pth / model_final.pth / model_XXXXXXX.pth")
    add_arguments(p, "config", "output", "device", "overrides",
                  shown={"config": "the config stored in the checkpoint",
                         "output": "eval_<checkpoint name>/ beside the checkpoint"})
    p.add_argument("--data", help="dataset directory (default: the config's data.root, else the shapes dataset)")
    return p.parse_intermixed_args(argv)


def default_output(checkpoint: str | Path) -> Path:
    """``RUN/eval_model_best/`` for ``RUN/model_best.pth``."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / f"eval_{checkpoint.stem}"


def run(args) -> dict:
    from common.engine import load_model_state
    from common.loaders import build_test_loader
    from common.tooling import RunDir, check_writable, parse_device
    from segmentation.build import build_dataset, build_model, check_data, read_checkpoint, resolve_root
    from segmentation.metrics import PredictionDrawer, SemSegEvaluator, evaluate_model

    device = parse_device(args.device)
    out = RunDir(Path(args.output) if args.output else default_output(args.checkpoint))
    check_writable(out.root)  # before the evaluation, not after it
    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    state, cfg = read_checkpoint(args.checkpoint, args.config, overrides)
    root = resolve_root(cfg.data)
    checked = check_data(cfg.data, root, out.root, splits=(cfg.data.val_split,))  # every image, first
    val_ds = build_dataset(cfg.data, cfg.data.val_split, train=False, root=root, checked=checked)
    model = build_model(cfg.model, val_ds.num_classes, ignore_index=val_ds.ignore_index)
    load_model_state(model, state["model"], str(args.checkpoint))
    model.to(device)
    loader = build_test_loader(val_ds, size_divisibility=model.size_divisibility, pad_value=model.pixel_mean)
    evaluator = SemSegEvaluator(val_ds.num_classes, val_ds.class_names, val_ds.ignore_index)
    draw = PredictionDrawer(out.vis, val_ds.class_names, val_ds.ignore_index, cfg.data.num_vis)
    metrics = evaluate_model(model, loader, evaluator, device, on_batch=draw)
    metrics = {k: v for k, v in metrics.items() if k != "val"}
    out.write_metrics(metrics)
    evaluator.save_confusion(out.plots / "confusion_matrix.png")
    print(json.dumps({k: round(v, 2) for k, v in metrics.items() if isinstance(v, float)}))
    print(f"metrics in {out.metrics}")
    return metrics


def main(argv=None) -> int:
    from common.tooling import run_tool

    return run_tool("eval_seg", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
