#!/usr/bin/env python
"""The R-CNN lineage on one dataset: R-CNN -> Fast R-CNN -> Faster R-CNN -> Mask R-CNN.

    python tools/lineage.py --data DIR [--max-iters N | --train-min M] [--eval-images M] \
        [--train-images T] [--out lineage.json] [--output-dir runs/lineage] [--workers W] \
        [--only rcnn fast_rcnn ...] [--weights PATH|imagenet] [--norm FrozenBN|BN|GN] [--size S] \
        [--set DETECTOR:KEY=VALUE ...]

Every detector uses ResNet-18 and the same images at the same size (its config's, 160 px short
side, or ``--size`` px for all: a short side of S, a long side of at most 4/3 S, in training and
test alike, so that small objects can be given more pixels: the papers enlarge their images, Fast and
Faster R-CNN VOC's ~375-px short side to 600 px and Mask R-CNN COCO's 480 to 800, about x1.6); each
is trained by tools/train_det.py (a subprocess) for ``--max-iters`` steps of its own recipe (a step of R-CNN
is 128 warped windows, of Fast R-CNN 2 images, of Faster and Mask R-CNN 4), or for ``--train-min``
minutes of network training each (``solver.time_budget_min``: each run times its steps and
stops when the minutes are spent; R-CNN's feature, SVM and regressor stages come on top), or by
default as each config says; each is evaluated on the first ``--eval-images`` val images by
tools/eval_coco.py's evaluation. ``--weights`` starts every backbone from the
same pretrained weights (``model.backbone.weights``), as the papers' detectors all start from
ImageNet; Fast, Faster and Mask R-CNN then keep its BatchNorm statistics
(``model.backbone.norm=FrozenBN``, detectron2's choice for pretrained backbones: batch statistics
of 2-4 images per step are noisy), R-CNN trains them on its 128 warped windows per step (its
config's BN). Without ``--weights`` every detector trains from random initialisation with each config's
norm (BN). ``--norm`` sets the backbone's norm of all four instead. ``--set DETECTOR:KEY=VALUE``
adds a config setting to one detector's training command (e.g. ``fast_rcnn:model.roi_heads.bg_iou_floor=0.1``,
the Fast R-CNN paper's background band). Selective-search proposals
for R-CNN and Fast R-CNN come from tools/compute_proposals.py (``--mode fast``): the training
split with ``--workers`` processes, the evaluated val images with one (that run is timed: the
proposal seconds per image, start-up included). Faster and Mask R-CNN make their proposals
with the RPN inside the network.

Printed: the papers' table, the steps trained, box AP / AP50 / AP75 and AP of small and medium
objects (COCO's areas), mask AP where there is one, training seconds and test seconds per image
split into proposals and network, the network speed-up over R-CNN, and how well the val proposals
each detector scored cover the objects (selective search's, as many per image as the detector
reads; a Faster / Mask R-CNN's RPN's, written by tools/compute_proposals.py --checkpoint after
its training): recall at IoU 0.7 and 0.9, since a detector's boxes end up about as tight as its
proposals. ``--out`` gets one row per detector: ``name``, ``box_AP``, ``box_AP50``, ``box_AP75``,
``box_AP_small``, ``box_AP_medium``, ``mask_AP`` (null without masks; any AP null where COCOeval
leaves it undefined), ``train_s`` (wall seconds of train_det less its final evaluation, which the
row's own evaluation timing stands in for), ``test_s_per_img`` (proposals + network),
``proposal_s_per_img``, ``net_s_per_img``, ``iters`` (the steps run), ``config``, ``proposals``
(``source``, ``boxes_per_image``, ``recall@0.5``, ``recall@0.7``, ``recall@0.9``, ``MABO``, in %). A detector whose run
directory already holds model_final.pth and lineage_train.json is not trained again (delete
the directory to redo it); proposal files are likewise reused. A run trained by another command
(another --size, --weights, --norm, budget...) is refused, before any work, with what differs.

Timings are wall-clock on whatever else the machine is doing: say which machine, and how busy.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: OpenMP threads sleep when idle; see common/tooling.py

from common.backbones.norm import pretrained_bn_warning  # noqa: E402
from common.config import load_config  # noqa: E402
from common.tooling import ToolError, run_tool, tool_parser  # noqa: E402
from detection.config import DetConfig  # noqa: E402


BUDGET_STEP_CAP = 100_000  # solver.max_iters under --train-min: the minutes, not the steps, end a run


@dataclass(frozen=True)
class Detector:
    name: str  # row name (and run directory)
    title: str  # as the table prints it
    config: str  # relative to configs/detection/
    overrides: tuple[str, ...] = ()
    proposals: bool = False  # reads selective-search proposals (data.train_proposals / val_proposals)


DETECTORS = (
    Detector("rcnn", "R-CNN", "rcnn_R18.yaml", proposals=True),
    Detector("fast_rcnn", "Fast R-CNN", "fast_rcnn_R18.yaml", proposals=True),
    Detector("faster_rcnn", "Faster R-CNN", "shapes_R18_FPN.yaml", ("model.mask_on=false", "model.keypoint_on=false")),
    Detector("mask_rcnn", "Mask R-CNN", "shapes_R18_FPN.yaml", ("model.keypoint_on=false",)),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = tool_parser(__doc__)
    p.add_argument("--data", required=True, help="dataset folder (train.json, val.json, train/, val/)")
    p.add_argument("--max-iters", type=int, default=None, help="training steps of every detector "
                   "(default: each config's solver.max_iters)")
    p.add_argument("--train-min", type=float, default=None, help="minutes of network training for every "
                   "detector, each at its own step cost (instead of --max-iters)")
    p.add_argument("--eval-images", type=int, default=0, help="evaluate on the first M val images (0 = all)")
    p.add_argument("--train-images", type=int, default=0, help="train on the first T train images (0 = all)")
    p.add_argument("--out", default="lineage.json", help="the rows as JSON (default: %(default)s)")
    p.add_argument("--output-dir", default=str(ROOT / "runs" / "lineage"), help="runs, proposals and the "
                   "data subset go here (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="selective-search processes for the training split")
    p.add_argument("--device", default="cpu", help="device for training and evaluation (default: %(default)s)")
    p.add_argument("--weights", default=None, help="backbone weights every detector starts from "
                   "(model.backbone.weights: a torchvision .pth, tools/train_cls.py's classifier.pth, or "
                   "'imagenet'; default: random initialisation; see --norm)")
    p.add_argument("--norm", choices=("FrozenBN", "BN", "GN"), default=None, help="the backbones' norm "
                   "(model.backbone.norm; default: with --weights FrozenBN for the detectors with a few images per step, "
                   "BN for R-CNN's 128 windows; else each config's)")
    p.add_argument("--size", type=int, default=None, help="short side in px of the training and test images of "
                   "every detector (data.min_size, data.test_min_size; long side at most 4/3 of it; default: "
                   "each config's; the papers enlarge images about x1.6)")
    p.add_argument("--only", nargs="+", choices=[d.name for d in DETECTORS], help="a subset of the detectors")
    p.add_argument("--set", action="append", default=[], metavar="DETECTOR:KEY=VALUE", help="a config setting "
                   "for one detector's training, after the lineage's own (repeatable; e.g. "
                   "fast_rcnn:model.roi_heads.bg_iou_floor=0.1, the Fast R-CNN paper's background band)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class Row:
    name: str
    box_AP: float | None
    box_AP50: float | None
    mask_AP: float | None
    train_s: float
    proposal_s_per_img: float
    net_s_per_img: float
    iters: int | None = None
    config: str = ""
    box_AP75: float | None = None
    box_AP_small: float | None = None  # COCO's areas: under 32^2 px
    box_AP_medium: float | None = None  # 32^2 to 96^2 px
    proposals: dict | None = None  # the val proposals the detector scored (:func:`proposal_quality`)
    test_s_per_img: float = field(init=False)

    def __post_init__(self):
        self.test_s_per_img = self.proposal_s_per_img + self.net_s_per_img


def format_table(rows: list[Row], titles: dict[str, str] | None = None) -> str:
    """The papers' table as Markdown: AP, training time, test time split, network speed-up over R-CNN."""
    titles = titles or {d.name: d.title for d in DETECTORS}
    base = next((r.net_s_per_img for r in rows if r.name == "rcnn"), None)

    def num(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    lines = ["| detector | steps | box AP | AP50 | AP75 | AP small | AP medium | mask AP | train s "
             "| test s/img (proposals + network) | network speed-up | val proposals: boxes/img, recall@0.7 / 0.9 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        split = (f"{r.test_s_per_img:.3f} ({r.proposal_s_per_img:.3f} + {r.net_s_per_img:.3f})"
                 if r.proposal_s_per_img else f"{r.test_s_per_img:.3f} (RPN in the network)")
        speed = f"{base / r.net_s_per_img:.0f}x" if base and r.net_s_per_img > 0 else "-"
        aps = " | ".join(num(v) for v in (r.box_AP, r.box_AP50, r.box_AP75, r.box_AP_small, r.box_AP_medium,
                                          r.mask_AP))
        q = r.proposals
        props = (f"{q['source']} {q['boxes_per_image']:.0f}, {num(q['recall@0.7'])} / {num(q['recall@0.9'])}"
                 if q else "-")
        lines.append(f"| {titles.get(r.name, r.name)} | {num(r.iters, '{}')} | {aps} | {r.train_s:.0f} | {split} | {speed} "
                     f"| {props} |")
    return "\n".join(lines)


def write_rows(rows: list[Row], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([vars(r) for r in rows], indent=2) + "\n")


def row_from_metrics(name: str, metrics: dict, train_s: float, proposal_s: float, net_s: float,
                     iters: int | None, config: str) -> Row:
    """A row from an evaluation's metrics (detection.evaluation: percent, None where undefined)."""
    box, segm = metrics.get("bbox") or {}, metrics.get("segm")
    return Row(name, box.get("AP"), box.get("AP50"), segm.get("AP") if segm else None, train_s, proposal_s, net_s,
               iters, config, box_AP75=box.get("AP75"), box_AP_small=box.get("APs"), box_AP_medium=box.get("APm"))


# ---------------------------------------------------------------------------------------------
# running the tools


def write_subset(data: Path, out: Path, train_images: int, eval_images: int) -> Path:
    """``out`` in the dataset layout: the first T train and M val images (0 = all) of ``data``,
    image folders linked, not copied."""
    out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_images), ("val", eval_images)):
        ann = json.loads((data / f"{split}.json").read_text())
        if count:
            ann["images"] = sorted(ann["images"], key=lambda im: im["id"])[:count]
            keep = {im["id"] for im in ann["images"]}
            ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in keep]
        (out / f"{split}.json").write_text(json.dumps(ann))
        link = out / split
        if not link.exists():
            link.symlink_to((data / split).resolve(), target_is_directory=True)
    return out


def run_script(args: list[str], log: Path) -> float:
    """Run ``python tools/...`` with its output in ``log``; wall seconds. A failure stops the lineage
    with the log's last line (the tool's one-line error) and the log's path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    if code != 0:
        last = (log.read_text().strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"{args[0]} failed (exit {code}): {last}; its log is {log}")
    return seconds


def proposal_file(out_dir: Path, split: str) -> Path:
    """Where the lineage keeps a split's selective-search proposals."""
    return out_dir / f"proposals_{split}.json"


def make_proposals(data: Path, out_dir: Path, workers: int) -> float:
    """Selective search (fast mode) over both splits into :func:`proposal_file`; the val seconds per
    image with one process."""
    per_image = 0.0
    for split, n_workers in (("train", workers), ("val", 1)):
        path = proposal_file(out_dir, split)
        timing = path.with_suffix(".seconds")
        if not (path.is_file() and timing.is_file()):
            path.unlink(missing_ok=True)  # an untimed file of an earlier run: time a fresh one
            seconds = run_script(["tools/compute_proposals.py", "--data", str(data), "--split", split, "--mode", "fast",
                                "--workers", str(n_workers), "--out", str(path)], path.with_suffix(".log"))
            timing.write_text(f"{seconds}\n")
        if split == "val":
            images = len(json.loads((data / "val.json").read_text())["images"])
            per_image = float(timing.read_text()) / max(images, 1)
    return per_image


def make_rpn_proposals(data: Path, out_dir: Path, det: Detector, run: Path, device: str) -> Path:
    """The val proposals of ``run``'s RPN as the detector makes them at test time
    (tools/compute_proposals.py --checkpoint; remade every time: a retrained run has another RPN)."""
    path = out_dir / f"proposals_val_{det.name}.json"
    run_script(["tools/compute_proposals.py", "--data", str(data), "--split", "val", "--checkpoint",
                str(run / "model_final.pth"), "--out", str(path), "--device", device, "--no-progress", "--overwrite"],
               path.with_suffix(".log"))
    return path


def proposals_scored(run: Path) -> int:
    """Best proposals per image the file-reading detector of ``run`` scores (0 = all): its
    config's data.max_proposals, for R-CNN at most model.rcnn.proposals_per_image."""
    from detection.build import proposals_to_read

    return proposals_to_read(load_config(DetConfig, run / "config.yaml"))


def proposal_quality(data: Path, path: Path, source: str, max_proposals: int = 0) -> dict:
    """How well a val proposal file covers ``data``'s val boxes: ``source`` (its name in the table),
    ``boxes_per_image`` and ``recall@0.5`` / ``recall@0.7`` / ``recall@0.9`` / ``MABO`` in percent
    (detection.proposals.proposal_recall), over each image's first ``max_proposals`` (0 = all)."""
    from detection.proposals import ground_truth, load_proposals, proposal_recall

    ann = json.loads((data / "val.json").read_text())
    gt = ground_truth(ann, [im["id"] for im in ann["images"]])
    boxes = {i: p["boxes"] for i, p in load_proposals(path, gt, max_proposals).items()}
    r = proposal_recall(boxes, gt, thresholds=(0.5, 0.7, 0.9))
    return {"source": source, **{k: round(r[k], 1) for k in ("boxes_per_image", "recall@0.5", "recall@0.7",
                                                             "recall@0.9", "MABO")}}


def evaluate(run: Path, data: Path, device: str, log: Path) -> tuple[dict, float]:
    """(metrics, wall seconds) of tools/eval_coco.py's evaluation of ``run``/model_final.pth on
    ``data``'s val split, in this process (no start-up in the time); its printout goes to ``log``."""
    spec = importlib.util.spec_from_file_location("eval_coco_tool", ROOT / "tools" / "eval_coco.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse_args(["--checkpoint", str(run / "model_final.pth"), "--data", str(data), "--device", device])
    with open(log, "w") as f, contextlib.redirect_stdout(f):
        t0 = time.perf_counter()
        metrics, _ = tool.evaluate_checkpoint(args)
        seconds = time.perf_counter() - t0
    return metrics, seconds


def steps_run(run: Path) -> int | None:
    """The steps a finished run trained: solver.max_iters of the config.yaml its trainer wrote (a
    time budget rewrites it with the steps that fit); R-CNN's trainer is its fine-tuning stage's."""
    import yaml

    for path in (run / "finetune" / "config.yaml", run / "config.yaml"):
        if path.is_file():
            return int((yaml.safe_load(path.read_text()).get("solver") or {}).get("max_iters", 0)) or None
    return None


def size_overrides(size: int | None) -> list[str]:
    """The image size every detector gets from --size (none: its config's)."""
    if size is None:
        return []
    return [f"data.min_size=[{size}]", f"data.test_min_size={size}", f"data.max_size={math.ceil(size * 4 / 3)}"]


def detector_settings(items: list[str], chosen: list[Detector]) -> dict[str, list[str]]:
    """--set DETECTOR:KEY=VALUE items -> {detector name: [KEY=VALUE, ...]}, each checked against
    its detector's config before any work."""
    settings: dict[str, list[str]] = {d.name: [] for d in chosen}
    names = [d.name for d in DETECTORS]
    for item in items:
        name, colon, setting = item.partition(":")
        if not colon or name not in names or "=" not in setting:
            raise ToolError(f"--set {item}: expected DETECTOR:KEY=VALUE with DETECTOR one of {', '.join(names)}")
        if name not in settings:
            raise ToolError(f"--set {item}: {name} is not among the detectors this run trains (--only)")
        settings[name].append(setting)
    for det in chosen:
        if settings[det.name]:
            try:
                load_config(DetConfig, ROOT / "configs" / "detection" / det.config,
                            list(det.overrides) + settings[det.name])
            except ValueError as e:
                raise ToolError(f"--set for {det.name}: {e}") from None
    return settings


def train_command(det: Detector, data: Path, out_dir: Path, args: argparse.Namespace,
                  weights: str | Path | None, settings: list[str] | None = None) -> list[str]:
    """tools/train_det.py's command line for ``det`` (its run directory is ``out_dir``/runs/<name>)
    with ``settings`` (--set) after the lineage's own."""
    overrides = list(det.overrides) + size_overrides(args.size)
    settings = settings or []
    # train_det's BN rule sees the run's own settings (a --set batch of 16 images keeps BN trained)
    norm = args.norm or ("FrozenBN" if weights and bn_too_few(det, overrides + settings, weights) else None)
    if weights:
        overrides.append(f"model.backbone.weights={weights}")
    if norm:
        overrides.append(f"model.backbone.norm={norm}")
    if det.proposals:
        overrides += [f"data.{split}_proposals={proposal_file(out_dir, split)}" for split in ("train", "val")]
    overrides += settings
    return ["tools/train_det.py", "--config", f"configs/detection/{det.config}", "--data", str(data),
            "--output", str(out_dir / "runs" / det.name), "--device", args.device, "--no-progress", *overrides,
            *budget_overrides(args)]


def bn_too_few(det: Detector, overrides: list[str], weights: str | Path) -> bool:
    """Whether ``det``'s config, started from ``weights``, would train its BatchNorm on too few
    samples per step (train_det's warning: Fast R-CNN's 2 images, Faster and Mask R-CNN's 4, not
    R-CNN's 128 warped windows); the lineage then keeps the pretrained statistics (FrozenBN), as
    detectron2 does with pretrained backbones."""
    cfg = load_config(DetConfig, ROOT / "configs" / "detection" / det.config, overrides)
    backbone = cfg.model.backbone
    return pretrained_bn_warning(backbone.norm, str(weights), backbone.freeze_at, cfg.bn_samples_per_step()) is not None


def finished_run(run_dir: Path) -> dict | None:
    """The record (lineage_train.json: wall_s, iters, command) of a run trained to its end in
    ``run_dir``, or None."""
    timing = run_dir / "lineage_train.json"
    if (run_dir / "model_final.pth").is_file() and timing.is_file():
        return json.loads(timing.read_text())
    return None


def check_reusable(run_dir: Path, cmd: list[str]) -> None:
    """A finished run in ``run_dir`` is reused only when its recorded command is ``cmd`` (runs of
    lineages older than the record are taken as they are); otherwise a ToolError says what differs."""
    trained = finished_run(run_dir)
    if trained is None:
        return
    before = trained.get("command")
    if before is None or before == cmd:
        return
    then, now = [a for a in before if a not in cmd], [a for a in cmd if a not in before]
    raise ToolError(f"{run_dir} holds a run trained with other settings (then: {' '.join(then) or '-'}; now: "
                    f"{' '.join(now) or '-'}); delete it or choose another --output-dir")


def budget_overrides(args: argparse.Namespace) -> list[str]:
    """The training length every detector gets from --max-iters or --train-min (none: its config's)."""
    if args.train_min is not None:
        # the budget never runs a schedule past solver.max_iters: make that a cap no run reaches in its minutes
        return [f"solver.time_budget_min={args.train_min:g}", f"solver.max_iters={BUDGET_STEP_CAP}"]
    return ["--max-iters", str(args.max_iters)] if args.max_iters else []


def run(args: argparse.Namespace) -> int:
    if args.max_iters is not None and args.train_min is not None:
        raise ToolError("--max-iters and --train-min are two ways to size the training: give one")
    if args.train_min is not None and args.train_min <= 0:
        raise ToolError(f"--train-min {args.train_min:g} must be above 0 minutes")
    if args.size is not None and args.size < 32:
        raise ToolError(f"--size {args.size} is too small: the short side of the images in px, at least 32")
    if args.norm == "FrozenBN" and not args.weights:
        raise ToolError("--norm FrozenBN needs --weights: the frozen statistics of a randomly initialised "
                        "backbone are the identity; use BN or GN from scratch")
    weights = args.weights  # as model.backbone.weights reads it: 'imagenet' in any case, else a file
    if weights and weights.lower() != "imagenet":
        weights = Path(weights).resolve()  # the tools run from the project root
        if not weights.is_file():
            raise ToolError(f"--weights {args.weights}: no such file (a torchvision .pth, tools/train_cls.py's "
                            f"classifier.pth, or 'imagenet')")
    chosen = [d for d in DETECTORS if not args.only or d.name in args.only]
    settings = detector_settings(args.set, chosen)
    out_dir = Path(args.output_dir)
    data = write_subset(Path(args.data), out_dir / "data", args.train_images, args.eval_images)
    val_images = len(json.loads((data / "val.json").read_text())["images"])
    commands = {d.name: train_command(d, data, out_dir, args, weights, settings[d.name]) for d in chosen}
    for det in chosen:  # before any work: a run trained otherwise is not passed off as this one
        check_reusable(out_dir / "runs" / det.name, commands[det.name])
    proposal_s = 0.0
    if any(d.proposals for d in chosen):
        print("selective search (tools/compute_proposals.py --mode fast)")
        proposal_s = make_proposals(data, out_dir, args.workers)
        print(f"  {proposal_s:.3f} s per val image")
    rows = []
    for det in chosen:
        run_dir = out_dir / "runs" / det.name
        trained = finished_run(run_dir)
        if trained is None:
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = commands[det.name]
            print(f"training {det.title}: {' '.join(cmd)}")
            wall = run_script(cmd, out_dir / f"train_{det.name}.log")
            trained = {"wall_s": wall, "iters": steps_run(run_dir) or args.max_iters, "command": cmd}
            (run_dir / "lineage_train.json").write_text(json.dumps(trained))
        print(f"evaluating {det.title} on {val_images} val images")
        metrics, eval_s = evaluate(run_dir, data, args.device, out_dir / f"eval_{det.name}.log")
        net_s = eval_s / max(val_images, 1)
        row = row_from_metrics(det.name, metrics, max(trained["wall_s"] - eval_s, 0.0),
                               proposal_s if det.proposals else 0.0, net_s, trained["iters"], det.config)
        if det.proposals:
            row.proposals = proposal_quality(data, proposal_file(out_dir, "val"), "selective search",
                                             proposals_scored(run_dir))
        else:
            row.proposals = proposal_quality(data, make_rpn_proposals(data, out_dir, det, run_dir, args.device), "RPN")
        rows.append(row)
    print(format_table(rows))
    write_rows(rows, args.out)
    print(f"rows written to {args.out}")
    return 0


def main(argv=None) -> int:
    return run_tool("lineage", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
