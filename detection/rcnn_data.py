"""Precomputed proposals for R-CNN: the proposal file and the dataset that adds them to targets.

Shape shorthand: R proposals of one image.

The file is the one ``tools/compute_proposals.py`` writes (documented in datasets/README.md):
``{"<COCO image id>": {"boxes": [[x0, y0, x1, y1], ...], "scores": [...]}, ...}``, boxes in
pixels of the image on disk, best first; keys starting with ``_`` are reserved and skipped.
This reader is R-CNN's own until the shared reader (``detection/proposals.py``) and the
dataset's ``proposal_boxes`` path replace it.

:class:`WithProposals` maps the boxes of an image from the frame on disk to the frame the
model sees by the resize alone, so it serves pipelines without flips (R-CNN's configs set
``data.hflip_prob: 0``; ``tools/train_det.py`` refuses a flip with file proposals).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from detection.data import DatasetError


def read_proposals(path: str | Path) -> dict[int, np.ndarray]:
    """``{image id: (R, 4) float32 xyxy boxes on disk, best first}`` from a proposal file
    (``detection.proposals.load_proposals``: a bad file or box is a DatasetError naming the file,
    the image id and the value)."""
    from detection.proposals import ProposalError, load_proposals

    try:
        return {i: p["boxes"] for i, p in load_proposals(path).items()}
    except ProposalError as e:
        raise DatasetError(str(e)) from None


def proposals_to_model_frame(boxes: np.ndarray, orig_size: tuple[int, int],
                             size: tuple[int, int]) -> torch.Tensor:
    """(R, 4) boxes in the image on disk (h0, w0) -> (R', 4) float32 boxes in the resized image
    (h, w), clipped to it; boxes narrower or lower than 1 px there are dropped."""
    (h0, w0), (h, w) = orig_size, size
    scale = np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
    b = boxes * scale
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
    return torch.from_numpy(np.ascontiguousarray(b[keep]))


class WithProposals(Dataset):
    """``dataset[i]`` with ``target["proposal_boxes"]`` (R, 4) float32 in the frame of the image the
    model sees: the first ``top`` boxes of the file for that image (0 = all)."""

    def __init__(self, dataset, proposals: dict[int, np.ndarray], source: str | Path, top: int = 0):
        missing = [i for i in dataset.ids if i not in proposals]
        if missing:
            raise DatasetError(f"proposal file {source} has no entry for image id {missing[0]} "
                               f"({len(missing)} of {len(dataset.ids)} images missing); was it made for "
                               f"{dataset.ann_file}?")
        self.dataset = dataset
        self.proposals = proposals
        self.top = top

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # ids, meta, coco, ann_file, aspect_ratios() ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        boxes = self.proposals[int(target["image_id"])]
        if self.top:
            boxes = boxes[: self.top]
        orig = tuple(int(v) for v in target["orig_size"])
        target["proposal_boxes"] = proposals_to_model_frame(boxes, orig, tuple(image.shape[-2:]))
        return image, target
