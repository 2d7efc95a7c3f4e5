"""Shared by the tool tests: load a script from tools/ as a module, and the tiny detector recipe."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

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


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_tiny_detector(shapes_dir, out: Path, *extra: str, iters: int = 2) -> Path:
    """A seeded tools/train_det.py run of the tiny recipe; returns its model_final.pth."""
    import torch

    torch.manual_seed(0)
    assert load_tool("train_det").main(["--data", str(shapes_dir), "--output", str(out), "--max-iters", str(iters),
                                        *TINY_DET, *extra]) == 0
    return out / "model_final.pth"
