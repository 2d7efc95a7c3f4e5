#!/usr/bin/env python
"""Segmentation benchmark on the shapes dataset: one table, same data and schedule for every row.

Rows (all trained from scratch with the common engine, ResNet-18 with BN where there is one):
  fcn8s_R18        our FCN-8s (skips from c4 and c3, bilinear-initialised transposed convs)
  tv_fcnhead_R18   torchvision.models.segmentation.fcn_resnet50's FCNHead (3x3 conv-BN-ReLU,
                   dropout, 1x1) on the *same* ResNet-18 c5, upsampled bilinearly as torchvision does
  fcn32s_R18       our FCN-32s (no skips): the coarse baseline for boundary IoU
  unet             the default CPU U-Net of tools/train_seg.py, exactly as that tool trains it

Every row shares the config's data, crops, batches, optimizer, schedule, loss and class
weighting, and starts its classifier bias at the class prior when the config asks for it
(torchvision's head too, on its last 1x1 conv), so the FCN rows differ only in their heads. The
three ResNet rows see the crops at full resolution (``model.input_scale`` is for the U-Net: a
stride-32 network on half-size 128 px crops would have a 2 x 2 top feature map).

    python tools/benchmark_seg.py                       # the full schedule of the default config
    python tools/benchmark_seg.py --max-iters 20 --rows fcn8s_R18,tv_fcnhead_R18   # a quick check

Columns: parameters, seconds per iteration, mIoU, boundary IoU (3 px band), pixel accuracy (%).
The data gets the training tool's start-up dataset check first; errors are one line, exit 2.
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
import dataclasses  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROWS = ("fcn8s_R18", "tv_fcnhead_R18", "fcn32s_R18", "unet")


class TorchvisionFCNHead(nn.Module):
    """torchvision's FCNHead on our backbone's c5, upsampled bilinearly to the input size."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        from torchvision.models.segmentation.fcn import FCNHead

        self.backbone = backbone
        self.head = FCNHead(backbone.out_channels["c5"], num_classes)
        self.score = self.head[-1]  # its 1x1 classifier: where a class-prior bias goes
        self.pixel_mean, self.pixel_std = backbone.pixel_mean, backbone.pixel_std
        self.size_divisibility = backbone.size_divisibility

    def forward(self, x):
        """(N, 3, H, W) normalised -> (N, K, H, W) logits."""
        score = self.head(self.backbone(x)["c5"])                        # (N, K, H/32, W/32)
        return F.interpolate(score, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_row(name: str, cfg, num_classes: int, ignore_index: int, class_stats=None):
    """One row's model; ``class_stats`` (``segmentation.build.class_pixel_stats_of``) feeds the
    class weights and prior bias that ``cfg.model`` asks for, as tools/train_seg.py does."""
    from common.backbones import build_backbone
    from segmentation.build import build_class_prior, build_class_weight, build_model, wrap_net

    r18 = dataclasses.replace(cfg.model.backbone, name="resnet18", weights=None, norm="BN", freeze_at=0)
    if name == "unet":
        model_cfg = cfg.model
    elif name == "tv_fcnhead_R18":  # its loss settings only: the net is built below
        model_cfg = dataclasses.replace(cfg.model, input_scale=1.0)
    elif name in ("fcn8s_R18", "fcn32s_R18"):
        model_cfg = dataclasses.replace(cfg.model, arch="fcn", fcn_variant=name[3:].split("_")[0],
                                        backbone=r18, input_scale=1.0)
    else:
        raise ValueError(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
    loss_args = {"ignore_index": ignore_index,
                 "class_weight": build_class_weight(model_cfg, class_stats) if class_stats else None,
                 "class_prior": build_class_prior(model_cfg, class_stats) if class_stats else None}
    if name != "tv_fcnhead_R18":
        return build_model(model_cfg, num_classes, **loss_args)
    net = TorchvisionFCNHead(build_backbone("resnet18", weights=None, norm="BN", out_features=("c5",)),
                             num_classes)
    return wrap_net(net, model_cfg, num_classes, **loss_args)


def parse_args(argv=None) -> argparse.Namespace:
    from common.tooling import add_arguments, tool_parser

    p = tool_parser(__doc__)
    add_arguments(p, "config", defaults={"config": str(ROOT / "configs" / "segmentation" / "unet_shapes_cpu.yaml")})
    p.add_argument("--data", help="dataset directory (default: the shapes dataset)")
    add_arguments(p, "max_iters", "device", "overrides", defaults={"device": "cpu"})
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2 cores)")
    return p.parse_intermixed_args(argv)


def run(args: argparse.Namespace) -> int:
    import train_seg
    from common.engine import seed_everything
    from common.tooling import RunDir, parse_device
    from segmentation.build import build_datasets, check_data, class_pixel_stats_of, needs_class_stats, resolve_root

    cfg, _ = train_seg.load_cfg(args)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if r not in ROWS:
            raise ValueError(f"unknown row {r!r}; choose from {', '.join(ROWS)}")
    device = parse_device(args.device)
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, checkpoint_period=0, eval_period=0,
                                                              best_metric=None))
    root = resolve_root(cfg.data)
    train_ds, val_ds = build_datasets(cfg.data, root, check_data(cfg.data, root, None))  # every image, first
    stats = class_pixel_stats_of(train_ds) if needs_class_stats(cfg.model) else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in rows:
            seed_everything(cfg.solver.seed)
            model = build_row(name, cfg, train_ds.num_classes, train_ds.ignore_index, stats)
            summary = train_seg.fit(cfg, model, train_ds, val_ds, device, RunDir(Path(tmp) / name),
                                    progress=False, tensorboard=False, report=False)
            m = summary["metrics"]
            params = sum(p.numel() for p in model.parameters()) / 1e6
            results.append((name, params, summary["seconds"] / summary["iteration"], m["mIoU"],
                            m["boundary_IoU"], m["pixel_acc"]))
            print(f"  {name}: mIoU {m['mIoU']:.1f} ({summary['seconds']:.0f} s)", file=sys.stderr)
    print(f"shapes val, {cfg.solver.max_iters} iterations x {cfg.solver.ims_per_batch} images, "
          f"{args.threads} threads on {device}")
    print(f"{'model':<16}{'params (M)':>11}{'s/iter':>8}{'mIoU':>7}{'bIoU':>7}{'pixAcc':>8}")
    for name, params, spi, miou, biou, acc in results:
        print(f"{name:<16}{params:>11.2f}{spi:>8.2f}{miou:>7.1f}{biou:>7.1f}{acc:>8.1f}")
    return 0


def main(argv=None) -> int:
    from common.tooling import run_tool

    return run_tool("benchmark_seg", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
