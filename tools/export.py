#!/usr/bin/env python
"""Export a trained detector or segmenter to ONNX or TorchScript.

    python tools/export.py --checkpoint runs/x/model_final.pth --format onnx --out model.onnx
    python tools/export.py --checkpoint runs/seg/model_best.pth --format torchscript --out seg.pt \
        [--config C] [--data DIR] [--size 640] [key=value ...]

The file takes one input ``image``: a (3, H, W) float32 RGB tensor in [0, 1] of any size. A
detector resizes it inside (short side ``data.test_min_size``, long side at most
``data.max_size``, bilinear) unless ``--no-resize`` (then the model sees it as given); outputs
are in pixels of the input either way. Detectors return ``boxes`` (R, 4)
xyxy pixels of that image, ``scores`` (R), ``classes`` (R, the dataset's COCO category ids) and,
where the model has them, ``masks`` (R, H, W) probabilities and ``keypoints`` (R, K, 3)
(x, y, score); segmenters return ``labels`` (H, W) class indices. Zero detections give R = 0.
ONNX: opset 17, dynamic height, width and R (``pip install .[export]`` for onnx and
onnxruntime); TorchScript: ``torch.jit.load(FILE)(image)`` returns the outputs as a tuple in
that order (the names are stored in the file as ``outputs.txt``).

A detector checkpoint (tools/train_det.py: it carries the dataset's classes) is told from a
segmenter's (tools/train_seg.py: classes come from its val split, ``--data`` or the config's)
by its metadata. The tracing example is a seeded random image of ``--size`` pixels (default:
the config's test size). The written file is run once on an image of another size and compared
with PyTorch; the largest difference is printed.

Bad input prints one line to stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is not a package
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from common.export import FORMATS
    from common.tooling import tool_parser

    p = tool_parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="written by tools/train_det.py or tools/train_seg.py")
    p.add_argument("--config", help="YAML config of the model (default: the config stored in the checkpoint)")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    p.add_argument("--out", required=True, help="the file to write (.onnx / .pt)")
    p.add_argument("--data", help="segmenters: dataset folder whose val split names the classes")
    p.add_argument("--size", type=int, help="side of the square tracing example (default: the test size)")
    p.add_argument("--no-resize", action="store_true", help="detectors: the model sees the image at the size "
                   "given (default: resized inside to data.test_min_size / data.max_size, as tools/predict.py does)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_intermixed_args(argv)


def build_wrapper(args: argparse.Namespace):
    """(exportable wrapper, default example side, what it is) for ``args.checkpoint``."""
    from common.engine.checkpoint import checkpoint_task, load_checkpoint

    if checkpoint_task(load_checkpoint(args.checkpoint), args.checkpoint,
                           "detection" if args.config else None) == "detection":
        from detection.build import build_detector, read_checkpoint
        from detection.export import ExportableDetector

        state, cfg, meta = read_checkpoint(args.checkpoint, args.config, args.overrides)
        model, cfg = build_detector(state, cfg, meta, args.checkpoint, "cpu")
        sizes = (0, 0) if args.no_resize else (cfg.data.test_min_size, cfg.data.max_size)
        return ExportableDetector(model, meta.category_ids, *sizes), cfg.data.test_min_size, "detector"
    from segmentation.export import ExportableSegmentor, load_segmentor

    model, cfg, val = load_segmentor(args.checkpoint, args.config, args.overrides, args.data)
    return ExportableSegmentor(model), cfg.data.crop_size or 256, f"segmenter ({val.num_classes} classes)"


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from common.export import ExportedModel, export

    wrapper, side, kind = build_wrapper(args)
    side = args.size or side
    if side < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {side}")
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(3, side, side, generator=gen)
    out = export(wrapper, example, args.format, args.out)
    print(f"exported the {kind} to {out} ({args.format}, outputs: {', '.join(wrapper.outputs)})")
    check = torch.rand(3, side + 24, max(side - 16, 32), generator=gen)  # another size than traced
    with torch.no_grad():
        expected = [v.numpy() for v in wrapper(check)]
    try:
        got = ExportedModel(out)(check.numpy())
    except ImportError:
        print("note: onnxruntime is not installed; the file was not run (pip install onnxruntime)")
        return 0
    diffs = [float(np.abs(got[n].astype(np.float64) - e).max()) if e.size else 0.0
             for n, e in zip(wrapper.outputs, expected) if got[n].shape == e.shape]
    if len(diffs) != len(expected):
        shapes = {n: (got[n].shape, e.shape) for n, e in zip(wrapper.outputs, expected)}
        raise RuntimeError(f"the exported file's outputs differ in shape from PyTorch's: {shapes}")
    print(f"checked on a {tuple(check.shape)} image: largest difference to PyTorch {max(diffs, default=0):.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from common.tooling import ToolError, run_tool

    def run_or_say_what_is_missing(args):
        try:
            return run(args)
        except ImportError as e:  # onnx / onnxruntime not installed: the [export] extra
            raise ToolError(str(e)) from None

    return run_tool("export", run_or_say_what_is_missing, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
