"""Writing an exportable wrapper (``detection.export``, ``segmentation.export``) to ONNX or
TorchScript, and running the written file (the parity test and users' smoke checks).

Both formats trace the wrapper on one example image (3, H, W); the wrappers take every size
from the input's shape, so the traced graph serves other sizes and other numbers of detections.
ONNX goes through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``; the
dynamo exporter does not handle detection models yet, pytorch/vision#9306) at opset 17
(RoiAlign with ``aligned`` needs >= 16), with the image's height and width and every output's
first axis (the number of detections; the height of ``labels``) dynamic.
Needs ``onnx`` (and ``onnxruntime`` to run the file): ``pip install .[export]``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

FORMATS = ("onnx", "torchscript")
OPSET = 17
INPUT_NAME = "image"
OUTPUTS_FILE = "outputs.txt"  # inside a TorchScript file: the output names, comma-separated


def dynamic_axes(outputs: tuple[str, ...]) -> dict[str, dict[int, str]]:
    """ONNX dynamic axes: the image's height and width, each output's sizes."""
    axes = {INPUT_NAME: {1: "height", 2: "width"}}
    for name in outputs:
        if name == "labels":
            axes[name] = {0: "height", 1: "width"}
        elif name == "masks":
            axes[name] = {0: "detections", 1: "height", 2: "width"}
        else:
            axes[name] = {0: "detections"}
    return axes


@torch.no_grad()
def export(wrapper: nn.Module, example: Tensor, fmt: str, out: str | Path) -> Path:
    """Trace ``wrapper`` (an ``Exportable*`` module with ``.outputs``) on ``example`` (3, H, W)
    float32 and write it to ``out`` as ``fmt`` (onnx | torchscript)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = wrapper.eval().cpu()
    with warnings.catch_warnings():
        # the tracer warns about every Python value it sees; the wrappers keep sizes as tensors
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)   # the ONNX exporter's notes on ops and constants
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still the path that works
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export": chosen
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            traced.save(str(out), _extra_files={OUTPUTS_FILE: ",".join(wrapper.outputs)})
        else:
            try:
                import onnx  # noqa: F401  (torch.onnx needs it to write the file)
            except ImportError:
                raise ImportError("ONNX export needs the onnx package: pip install 'rcnn-toolkit[export]' "
                                  "(or pip install onnx onnxruntime)") from None
            torch.onnx.export(wrapper, (example,), str(out), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=list(wrapper.outputs),
                              dynamic_axes=dynamic_axes(tuple(wrapper.outputs)))
    return out


class ExportedModel:
    """An exported file run on numpy images: ``model(image (3, H, W) float32) -> {name: array}``.

    ONNX files run in onnxruntime (CPU), TorchScript files through ``torch.jit.load``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"exported model {self.path} does not exist")
        self.format = "onnx" if self.path.suffix == ".onnx" else "torchscript"
        if self.format == "onnx":
            import onnxruntime

            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            self.outputs = tuple(o.name for o in self.session.get_outputs())
        else:
            extra = {OUTPUTS_FILE: ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            self.outputs = tuple(extra[OUTPUTS_FILE].decode().split(","))

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        image = np.ascontiguousarray(image, dtype=np.float32)
        if self.format == "onnx":
            return dict(zip(self.outputs, self.session.run(None, {INPUT_NAME: image})))
        with torch.no_grad():
            values = self.module(torch.from_numpy(image))
        return dict(zip(self.outputs, (v.numpy() for v in values)))
