#!/usr/bin/env python
"""Our Mask R-CNN against torchvision's, each trained through tools/train_det.py's ``fit``.

    python tools/benchmark.py --iters 200 --out b.json          # equal iterations, CPU, one table
    python tools/benchmark.py --budget-s 900 --data DIR         # equal wall-clock on a dataset folder
    python tools/benchmark.py --anatomy runs/x/model_final.pth  # backbone-only vs whole-model time
    python tools/benchmark.py --gpu-r50 --iters 100             # R50-FPN, 800 px, batch 2, on CUDA

Equal iterations: each column trains --iters steps from scratch, same seed, batches and solver
(shapes_R18_FPN_wide.yaml at --size px, no keypoints): ours; torchvision with every setting its
constructor exposes copied from it; torchvision stock on ResNet-18-FPN. Rows: train s/iter (median
after --warmup, data loading included), inference img/s (batch 1), box and mask AP, and with
--gpu-r50 (ours: mask_rcnn_R50_FPN.yaml vs maskrcnn_resnet50_fpn) peak CUDA memory. --budget-s:
ours is tools/train_det.py --data DIR (own schedule, wall reported), torchvision's lean recipe S s.
"""
from __future__ import annotations

import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import train_det  # noqa: E402  (tools/: the training tool's fit is what every column runs)
from common.backbones.backbone import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from common.config import load_config  # noqa: E402
from common.engine import Trainer, WarmupSchedule, build_optimizer, seed_everything  # noqa: E402
from common.tooling import RunDir, parse_device, run_tool, tool_parser  # noqa: E402
from detection import torchvision_ref as tv  # noqa: E402
from detection.build import build_datasets, build_detector, build_model, check_data, read_checkpoint  # noqa: E402
from detection.build import resolve_data_paths  # noqa: E402
from detection.config import DetConfig  # noqa: E402
from common.loaders import build_test_loader  # noqa: E402
from detection.data import build_train_loader  # noqa: E402
from detection.inference import anatomy, evaluate_detector, time_inference  # noqa: E402

CPU_RECIPE = ROOT / "configs" / "detection" / "shapes_R18_FPN_wide.yaml"
GPU_RECIPE = ROOT / "configs" / "detection" / "mask_rcnn_R50_FPN.yaml"
PAD = dict(size_divisibility=32, pad_value=IMAGENET_MEAN)  # how torchvision's batches are padded
# (key, label, how): "lower"/"higher" is better -> ratio ours vs them (> 1: ours better); "points" -> ours - them
ROWS = (("train_s_per_iter", "train s/iter", "lower"), ("infer_img_per_s", "inference img/s (batch 1)", "higher"),
        ("box_AP", "box AP", "points"), ("mask_AP", "mask AP", "points"))
GPU_ROWS = ROWS + (("train_peak_MiB", "peak memory, training (MiB)", "lower"),
                   ("infer_peak_MiB", "peak memory, inference (MiB)", "lower"))
ANATOMY_ROWS = (("backbone_ms", "backbone + FPN ms/img (batch 1)", "lower"),
                ("full_ms", "whole prediction ms/img (batch 1, masks pasted at the size on disk)", "lower"),
                ("ratio", "whole / backbone", "lower"), ("detections_per_image", "detections per image", "higher"))
BUDGET_ROWS = (("wall_s", "training + evaluation wall s", "lower"), ("iterations", "iterations", "higher"),
               ("box_AP", "box AP", "points"), ("mask_AP", "mask AP", "points"))


def compare_config(args):
    """The shared recipe of the equal-iteration modes, then the user's overrides."""
    run = [f"solver.max_iters={args.iters}", "solver.time_budget_min=0",  # equal iterations, not equal time
           f"solver.warmup_iters={min(args.iters, 50)}", f"solver.seed={args.seed}",
           "solver.log_period=1", "solver.checkpoint_period=0", "solver.eval_period=0", "solver.best_metric=null",
           f"data.num_workers={args.workers}", "model.keypoint_on=false", "test.num_vis=0", "test.val_loss_batches=0",
           "test.eval_images=1"]  # the trainer's end-of-run evaluation: 1 image; fit's full one follows
    if args.gpu_r50:  # from scratch with trainable BN like torchvision's, 800 px; batch 2 at LR 0.02 x 2/16
        return load_config(DetConfig, GPU_RECIPE, [
            "model.backbone.weights=null", "model.backbone.norm=BN", "model.backbone.freeze_at=0",
            "data.min_size=[800]", "solver.ims_per_batch=2", "solver.base_lr=0.0025", *run, *args.overrides])
    n = args.size  # the long side capped at 4/3 of the short one
    size = [f"data.min_size=[{n}]", f"data.test_min_size={n}", f"data.max_size={math.ceil(n * 4 / 3)}"]
    return load_config(DetConfig, CPU_RECIPE, [*size, *run, *args.overrides])


def build_side(side: str, cfg, num_classes: int, gpu: bool):
    """(model, pad) of one column; pad None: the model's own (ours)."""
    d = cfg.data
    if side == "ours":
        return build_model(cfg.model, num_classes), None
    if gpu:
        return tv.torchvision_r50_fpn(num_classes), PAD
    if side == "torchvision_stock":
        return tv.torchvision_r18_fpn_stock(num_classes, d.test_min_size, d.max_size, IMAGENET_MEAN, IMAGENET_STD), PAD
    return tv.torchvision_r18_fpn(cfg.model, num_classes, d.test_min_size, d.max_size, IMAGENET_MEAN, IMAGENET_STD), PAD


def val_batches(val_set, count: int, pad: dict) -> list:
    loader = build_test_loader(val_set, batch_size=1, num_workers=0, **pad)
    return [batch for _, batch in zip(range(count), loader)]


def measure(side: str, cfg, train_set, val_set, device, args, out_dir: Path) -> dict:
    """Train one column through train_det.fit, then time its inference. Returns the column."""
    seed_everything(args.seed)
    model, pad = build_side(side, cfg, train_set.meta.num_classes, args.gpu_r50)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    print(f"{side}: training {cfg.solver.max_iters} iterations ...", file=sys.stderr, flush=True)
    summary = train_det.fit(cfg, model, train_set, val_set, device, RunDir(out_dir / side), tensorboard=False,
                            pad=pad)
    with open(out_dir / side / "metrics.csv") as f:
        times = [float(r["time_per_iter"]) for r in csv.DictReader(f) if r["phase"] == "train"]
    m = summary["metrics"]
    col = {"params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
           "train_s_per_iter": statistics.median(times[min(args.warmup, len(times) - 1):]),
           "box_AP": m.get("bbox", {}).get("AP"), "mask_AP": m.get("segm", {}).get("AP")}
    if cuda:
        col["train_peak_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    batches = val_batches(val_set, args.infer_images, pad or dict(size_divisibility=model.backbone.size_divisibility,
                                                                  pad_value=model.backbone.pixel_mean))
    col["infer_img_per_s"] = 1.0 / time_inference(model, batches, device, warmup=min(2, len(batches) - 1))
    if cuda:
        col["infer_peak_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    return col


def run_compare(args, device) -> tuple[dict, dict, tuple]:
    cfg = compare_config(args)
    paths = resolve_data_paths(cfg.data, args.data)
    train_set, val_set = build_datasets(cfg, paths, check_data(cfg, paths, None))  # every image, first
    if not train_set.has_masks:
        raise ValueError(f"{train_set.ann_file} has no instance masks; this benchmark compares Mask R-CNNs")
    sides = ("ours", "torchvision") if args.gpu_r50 else tuple(args.sides.split(","))
    if cfg.solver.lr_mults and sides != ("ours",):  # prefixes of our module names; torchvision's differ
        raise ValueError("solver.lr_mults names our modules, not torchvision's; measure it with --sides ours")
    with tempfile.TemporaryDirectory() as tmp:
        columns = {side: measure(side, cfg, train_set, val_set, device, args, Path(tmp)) for side in sides}
    precision = {f"{k}.amp": str(getattr(cfg, k).amp) for k in ("solver", "test") if hasattr(getattr(cfg, k), "amp")}
    settings = {"mode": "gpu-r50" if args.gpu_r50 else "iterations", "size": cfg.data.test_min_size,
                "batch": cfg.solver.ims_per_batch, "iters": cfg.solver.max_iters, "precision": precision,
                "overrides": list(args.overrides)}
    return settings, columns, GPU_ROWS if args.gpu_r50 else ROWS


def train_by_clock(model: nn.Module, cfg, train_set, device, budget_s: float) -> int:
    """Train until ``budget_s`` seconds have passed: ``cfg.solver``'s optimizer, a linear warm-up over
    its warmup_iters, the LR x0.1 for the last 15% of the budget. Returns the iterations run."""
    s = cfg.solver
    optimizer = build_optimizer(model, s)
    schedule = WarmupSchedule(optimizer, base_lr=s.base_lr, max_iters=10**9, schedule="constant",
                              warmup_iters=s.warmup_iters, warmup_factor=s.warmup_factor)

    def make_data_iter(start: int):
        return build_train_loader(train_set, batch_size=s.ims_per_batch, num_workers=cfg.data.num_workers,
                                  seed=s.seed, start_iter=start, **PAD)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, optimizer, schedule, make_data_iter, output_dir=tmp, max_iters=10**9, device=device,
                          clip_grad_norm=s.clip_grad_norm, checkpoint_period=0, progress=False, tensorboard=False)
        model.train()
        data, t0 = make_data_iter(0), time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < budget_s:
            schedule.base_lr = s.base_lr * (0.1 if elapsed >= 0.85 * budget_s else 1.0)  # from the next step
            trainer.run_step(data)
    return trainer.iter


def run_budget(args, device) -> tuple[dict, dict, tuple]:
    n = 160  # torchvision's lean recipe: min_size = max_size
    cfg = load_config(DetConfig, None, [
        f"data.min_size=[{n}]", f"data.max_size={n}", f"data.test_min_size={n}", "data.hflip_prob=0.5",
        f"data.num_workers={args.workers}", "model.mask_on=true", "solver.optimizer=adamw", "solver.base_lr=0.001",
        "solver.weight_decay=0.0001", "solver.clip_grad_norm=10", "solver.ims_per_batch=4", "solver.warmup_iters=100",
        f"solver.seed={args.seed}"])
    train_set, val_set = build_datasets(cfg, resolve_data_paths(cfg.data, args.data))
    if not train_set.has_masks:
        raise ValueError(f"{train_set.ann_file} has no instance masks; this benchmark compares Mask R-CNNs")
    sides, columns = args.sides.split(","), {}
    if "ours" in sides:
        columns["ours"] = train_ours_by_clock(args)
    if "torchvision" in sides:
        columns["torchvision_lean"] = train_lean_by_clock(args, cfg, train_set, val_set, device, n)
    settings = {"mode": "budget", "data": str(Path(args.data).resolve()), "budget_s": args.budget_s,
                "overrides": list(args.overrides)}
    return settings, columns, BUDGET_ROWS


def train_ours_by_clock(args) -> dict:
    """Our default recipe, its own time budget: tools/train_det.py on the folder, then its metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        t0, run = time.perf_counter(), Path(args.ours_output or Path(tmp) / "ours")
        if train_det.main(["--data", args.data, "--output", str(run), "--no-progress", *args.overrides]) != 0:
            raise ValueError("tools/train_det.py failed (its error is printed above)")
        m, wall = json.loads((run / "metrics.json").read_text()), time.perf_counter() - t0
        with open(run / "metrics.csv") as f:
            iters = max(int(r["iter"]) for r in csv.DictReader(f))
    return {"wall_s": wall, "iterations": iters, "box_AP": (m.get("bbox") or {}).get("AP"),
            "mask_AP": (m.get("segm") or {}).get("AP")}


def train_lean_by_clock(args, cfg, train_set, val_set, device, n: int) -> dict:
    """Torchvision's lean Mask R-CNN trained for ``args.budget_s`` seconds, then evaluated."""
    print(f"torchvision lean: training for {args.budget_s:.0f} s ...", file=sys.stderr, flush=True)
    seed_everything(args.seed)
    model = tv.torchvision_r18_lean(train_set.meta.num_classes, n, IMAGENET_MEAN, IMAGENET_STD)
    t0 = time.perf_counter()
    iters = train_by_clock(model, cfg, train_set, device, args.budget_s)
    loader = build_test_loader(val_set, batch_size=cfg.test.ims_per_batch, num_workers=0, **PAD)
    m, _ = evaluate_detector(model, loader, val_set.coco, val_set.meta.category_ids, ("bbox", "segm"), device)
    return {"wall_s": time.perf_counter() - t0, "iterations": iters, "box_AP": m["bbox"]["AP"],
            "mask_AP": m.get("segm", {}).get("AP")}


def run_anatomy(args, device) -> tuple[dict, dict, tuple]:
    state, cfg, meta = read_checkpoint(args.anatomy, None, args.overrides)
    _, val_set = build_datasets(cfg, resolve_data_paths(cfg.data, args.data))
    model, cfg = build_detector(state, cfg, meta or val_set.meta, args.anatomy, device)
    loader = build_test_loader(val_set, batch_size=1, num_workers=0, size_divisibility=model.backbone.size_divisibility,
                               pad_value=model.backbone.pixel_mean)
    column = anatomy(model, loader, device, n=args.infer_images, amp=cfg.test.amp)
    return {"mode": "anatomy", "checkpoint": str(args.anatomy), "images": column.pop("images"),
            "keypoint_on": cfg.model.keypoint_on, "precision": column.pop("precision")}, {"ours": column}, ANATOMY_ROWS


def format_table(columns: dict, rows) -> str:
    """Markdown: one column per side, then ours vs each other side (ratio > 1 or + points: ours better)."""
    others = [s for s in columns if s != "ours"]
    head = ["", *columns, *(f"ours vs {s}" for s in others if "ours" in columns)]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, label, how in rows:
        vals = [columns[s].get(key) for s in columns]
        cells = [label, *("-" if v is None else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}" for v in vals)]
        ours = columns.get("ours", {}).get(key)
        for s in others if "ours" in columns else ():
            them = columns[s].get(key)
            if ours is None or them is None or (how != "points" and min(ours, them) <= 0):
                cells.append("-")
            elif how == "points":
                cells.append(f"{ours - them:+.1f} pts")
            else:
                cells.append(f"{them / ours if how == 'lower' else ours / them:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = tool_parser(__doc__)
    p.add_argument("--iters", type=int, default=200, help="training iterations per column (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="iterations left out of the s/iter median")
    p.add_argument("--size", type=int, default=192, help="image short side in px (default: %(default)s)")
    p.add_argument("--sides", default="ours,torchvision,torchvision_stock", help="columns of the equal-iteration mode; "
                   "--budget-s: ours and/or torchvision (the lean recipe)")
    p.add_argument("--data", default=None, help="dataset folder (train.json, val.json, train/, val/)")
    p.add_argument("--budget-s", type=float, default=None, help="equal wall-clock mode: torchvision's training seconds")
    p.add_argument("--anatomy", default=None, metavar="CHECKPOINT", help="time backbone + FPN vs the whole model")
    p.add_argument("--gpu-r50", action="store_true", help="R50-FPN at 800 px, batch 2, on CUDA")
    p.add_argument("--seed", type=int, default=0, help="model, data and augmentation seed (one per run)")
    p.add_argument("--infer-images", type=int, default=50, help="val images timed for inference")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (0 keeps the cores for the models)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2 cores)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu; cuda with --gpu-r50)")
    p.add_argument("--out", default=None, help="write this run's settings and columns here as JSON")
    p.add_argument("--ours-output", default=None, help="--budget-s: keep our run folder here (default: a "
                   "temporary one)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="our recipe's overrides (--budget-s: train_det's)")
    return p.parse_args(argv)


def check_args(args) -> None:
    for name, low in (("iters", 1), ("warmup", 0), ("infer_images", 1), ("workers", 0), ("threads", 0), ("size", 32)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if sum(bool(x) for x in (args.budget_s is not None, args.anatomy, args.gpu_r50)) > 1:
        raise ValueError("--budget-s, --anatomy and --gpu-r50 are separate modes; choose one")
    if args.budget_s is not None and (args.budget_s <= 0 or not args.data):
        raise ValueError("--budget-s needs a positive number of seconds and --data DIR (the dataset both train on)")
    if not args.sides or any(s not in ("ours", "torchvision", "torchvision_stock") for s in args.sides.split(",")):
        raise ValueError(f"--sides takes ours, torchvision, torchvision_stock; got {args.sides!r}")
    if args.budget_s is not None and not {"ours", "torchvision"} & set(args.sides.split(",")):
        raise ValueError(f"--budget-s trains ours and/or torchvision (the lean recipe); --sides {args.sides!r} names neither")
    if args.gpu_r50 and not torch.cuda.is_available():
        raise ValueError("--gpu-r50 needs a CUDA GPU and torch sees none")


def run(args) -> int:
    check_args(args)
    device = parse_device(args.device, "cuda" if args.gpu_r50 else "cpu")
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    mode = run_budget if args.budget_s is not None else run_anatomy if args.anatomy else run_compare
    settings, columns, rows = mode(args, device)
    settings.update(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    threads=torch.get_num_threads())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": settings, "columns": columns}, indent=2))
    print(", ".join(f"{k}: {v}" for k, v in settings.items()))
    print(format_table(columns, rows))
    return 0


def main(argv=None) -> int:
    return run_tool("benchmark", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
