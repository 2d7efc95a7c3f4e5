"""Shared by the tool tests (tests/ is on sys.path through its conftest.py): load a script from
tools/ as a module, the tiny detector and segmenter recipes, a read-only file system, a folder's files."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the default detection config (Mask + Keypoint R-CNN, R18-FPN) shrunk for tests: 64 px images,
# thin heads, few proposals, no periodic evaluation; a training run takes seconds on one thread
TINY_DET = ["--no-progress", "--device", "cpu",
            "model.backbone.fpn_channels=32", "model.box_head.fc_dim=64",
            "model.mask_head.conv_dim=16", "model.mask_head.num_convs=1",
            "model.keypoint_head.conv_dim=16", "model.keypoint_head.num_convs=1",
            "model.rpn.batch_size_per_image=32", "model.rpn.pre_nms_topk_train=100",
            "model.rpn.post_nms_topk_train=50", "model.rpn.pre_nms_topk_test=50",
            "model.rpn.post_nms_topk_test=20",
            "model.roi_heads.batch_size_per_image=16", "model.roi_heads.detections_per_img=10",
            "data.min_size=[64]", "data.test_min_size=64", "data.max_size=96", "data.num_workers=0",
            "solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.eval_period=0",
            "solver.checkpoint_period=0", "test.val_loss_batches=0", "test.num_vis=1"]

# the default U-Net of tools/train_seg.py shrunk for tests: 4 channels, 2 levels, 48 px crops, no
# periodic checkpoints or evaluation, nothing drawn
TINY_SEG = ["--device", "cpu", "model.unet_width=4", "model.unet_depth=2", "data.crop_size=48",
            "solver.ims_per_batch=2", "solver.warmup_iters=0", "solver.checkpoint_period=0",
            "solver.eval_period=0", "solver.log_period=1", "data.num_vis=0"]


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses of a tool look their module up there
    spec.loader.exec_module(module)
    return module


def read_only_filesystem(monkeypatch) -> None:
    """Make every write check of ``common.tooling.check_writable`` fail as on a read-only mount
    (chmod does not stop root, who runs the tests in CI)."""
    import errno
    import os
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (to assert that a refused run left it as it was)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_output_checked_first(run, tool: str, foreign: Path, capsys, monkeypatch) -> None:
    """The run-folder checks every training tool makes before any work (``common.tooling.prepare_run_dir``).

    ``run(output, *extra)`` starts ``tool`` with ``--output output`` on data that would fail later;
    ``foreign`` is a non-empty folder that is not a run of ``tool``: refused with and without
    ``--resume``, one line each, its files untouched. Then, on a read-only file system, a fresh
    folder is one line too.
    """
    before = files_of(foreign)
    held = sorted(p.name for p in foreign.iterdir())
    assert len(held) <= 4  # the message lists up to four names
    assert run(foreign) == 2
    assert capsys.readouterr().err == (f"{tool}: error: --output {foreign} is not empty ({', '.join(held)}); "
                                       "choose another --output\n")
    assert run(foreign, "--resume") == 2
    assert capsys.readouterr().err == (f"{tool}: error: --output {foreign} holds no {tool} run to resume (no {tool} "
                                       f"config.yaml; it has {', '.join(held)}); choose another --output\n")
    assert files_of(foreign) == before

    read_only_filesystem(monkeypatch)
    out = foreign.parent / "read_only"
    assert run(out) == 2
    assert capsys.readouterr().err == f"{tool}: error: cannot write to --output {out}: Read-only file system\n"


def train_tiny_detector(shapes_dir, out: Path, *extra: str, iters: int = 2) -> Path:
    """A seeded tools/train_det.py run of the tiny recipe; returns its model_final.pth."""
    import torch

    torch.manual_seed(0)
    assert load_tool("train_det").main(["--data", str(shapes_dir), "--output", str(out), "--max-iters", str(iters),
                                        *TINY_DET, *extra]) == 0
    return out / "model_final.pth"
def write_jittered_proposals(ann_json, out, seed=0, per_gt=4, random_boxes=12):
    """A proposal file (tools/compute_proposals.py's format) for the images of ``ann_json``: each gt
    box jittered ``per_gt`` times plus ``random_boxes`` random boxes, with descending scores.
    Stands in for selective search in tests."""
    import json

    import numpy as np

    data = json.loads(Path(ann_json).read_text())
    rng = np.random.default_rng(seed)
    by_image = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a["bbox"])
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    out_data = {}
    for image_id, gts in by_image.items():
        w, h = sizes[image_id]
        boxes = []
        for x, y, bw, bh in gts:
            for _ in range(per_gt):
                dx, dy, dw, dh = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
                boxes.append([x + dx, y + dy, x + bw + dx + dw, y + bh + dy + dh])
        for _ in range(random_boxes):
            x0, y0 = rng.uniform(0, w - 8), rng.uniform(0, h - 8)
            boxes.append([x0, y0, rng.uniform(x0 + 4, w), rng.uniform(y0 + 4, h)])
        boxes = [[float(min(max(v, 0), lim)) for v, lim in zip(b, (w, h, w, h))] for b in boxes]
        out_data[str(image_id)] = {"boxes": boxes, "scores": list(np.linspace(1, 0, len(boxes)))}
    Path(out).write_text(json.dumps(out_data))
    return Path(out)
