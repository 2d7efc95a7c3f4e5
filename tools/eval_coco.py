#!/usr/bin/env python
"""Official COCO metrics (pycocotools) for a results file against a ground-truth JSON.

    python tools/eval_coco.py --gt datasets/shapes/val.json --results results.json \
        [--iou-types bbox segm keypoints] [--out metrics.json]

Prints pycocotools' summaries and a per-category AP table for each iou type, and writes
``metrics.json`` (``{"bbox": {"AP", ...}, "segm": {...}, "keypoints": {...}, "per_category":
{...}}``, percent, ``null`` where undefined; see ``detection/evaluation.py``). Iou types the
results do not carry (no ``segmentation``, no ``keypoints``) are skipped with a note.
Bad input prints one line to stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is not a package

from detection.evaluation import IOU_TYPES, EvaluationError, evaluate_coco, metrics_to_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    files = parser.add_argument_group("evaluate a results file")
    files.add_argument("--gt", required=True, help="ground-truth COCO JSON")
    files.add_argument("--results", required=True, help="COCO results JSON (a list of detections)")
    # A second mode, `--config C --checkpoint W [--data DIR]`, belongs here as its own argument
    # group (making --results optional); `main` then calls `results_from_model(args)` instead
    # of reading --results.
    parser.add_argument("--iou-types", nargs="+", choices=IOU_TYPES, default=list(IOU_TYPES),
                        help="which metrics to compute (default: all the results support)")
    parser.add_argument("--out", help="write the metrics here as JSON")
    return parser.parse_args(argv)


def results_from_model(args: argparse.Namespace) -> tuple[str, list[dict]]:
    """(ground-truth JSON, COCO results) from running a trained model over a dataset.

    The place for the model mode: build the model from ``args.config``, load
    ``args.checkpoint``, run it over the split in ``args.data`` with
    ``detection.evaluation.CocoEvaluator`` and return ``(gt_json, evaluator.results)``
    (also worth writing as results.json next to the metrics).
    """
    raise NotImplementedError("evaluating a model checkpoint is not implemented yet")


def write_metrics(metrics: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics_to_json(metrics), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", DeprecationWarning)  # library internals, not the data
            metrics = evaluate_coco(args.gt, args.results, args.iou_types)
        for w in caught:
            print(f"eval_coco: warning: {w.message}", file=sys.stderr)
        if args.out:
            write_metrics(metrics, args.out)
            print(f"metrics written to {args.out}")
    except (EvaluationError, OSError) as e:
        print(f"eval_coco: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
