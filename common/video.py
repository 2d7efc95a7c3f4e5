"""Mapping a function over the frames of a video file (OpenCV), written back as a video of the
same frame rate and size (tools/predict.py draws predictions with it)."""
from __future__ import annotations

from pathlib import Path

import cv2


def map_video(source: str | Path, target: str | Path, fn, batch_size: int = 1, progress=None) -> int:
    """Read ``source`` frame by frame, pass batches of ``batch_size`` (H, W, 3) uint8 RGB frames to
    ``fn`` (-> as many (H, W, 3) RGB frames), write them to ``target`` (mp4v) at the source's frame
    rate and size. ``progress``: a tqdm-like bar (``total``, ``update``). Returns the frames written."""
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise FileNotFoundError(f"video {source} could not be opened")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if progress is not None:
        progress.total = total if total > 0 else None
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        cap.release()
        raise OSError(f"cannot write video {target} (OpenCV has no mp4v encoder here)")
    written = 0
    try:
        while True:
            frames = []
            while len(frames) < batch_size:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if not frames:
                break
            for drawn in fn(frames):
                if drawn.shape[1::-1] != size:
                    raise ValueError(f"a frame of {source} came back as {drawn.shape[1]}x{drawn.shape[0]}, "
                                     f"not {size[0]}x{size[1]}")
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                written += 1
            if progress is not None:
                progress.update(len(frames))
    finally:
        cap.release()
        writer.release()
    if written == 0:
        raise ValueError(f"video {source} has no frames that could be read")
    return written
