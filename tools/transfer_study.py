#!/usr/bin/env python
"""Transfer-learning study: scratch vs linear probe vs fine-tune vs partial freeze, as the data grows.

    python tools/train_cls.py --output runs/cls_r18                     # a pretrained backbone first
    python tools/transfer_study.py --weights runs/cls_r18/classifier.pth --output runs/study
    python tools/transfer_study.py --weights W --output runs/study_small --sizes 50,200 \
        --arms scratch,probe,finetune --max-iters 200 --val-size 100
    python tools/transfer_study.py --task seg --weights W --output runs/study_seg   # mIoU, train_seg.py
    python tools/transfer_study.py ... --data /work/data/variety                    # another dataset

For each training-set size (``--sizes``, default 50,200,800,all: fixed, seeded and nested subsets of
the training images, each written as a COCO JSON into STUDY/subsets/) and each arm (``--arms``):

    scratch   random init, BN, nothing frozen (the toolkit's from-scratch recipe)
    probe     the pretrained backbone frozen whole (freeze_at=5, FrozenBN): only FPN, RPN and
              heads train -- a linear probe of the backbone's features
    finetune  the pretrained backbone trains at 0.1x the head learning rate, FrozenBN
              (solver.lr_mults={backbone.body: 0.1})
    freeze2   stem and c2 frozen, the rest as finetune
    freeze3   stem, c2 and c3 frozen, the rest as finetune

it trains one ordinary run folder, STUDY/cells/<arm>_<size>/, through tools/train_det.py (or
tools/train_seg.py with ``--task seg``) and evaluates on the val set: bbox AP (mIoU for
segmentation). The study prints one table (arms x sizes), writes STUDY/study.json (every cell's
metric, seconds and run folder) and STUDY/learning_curves.png (metric against the number of
training images, log x); ``--val-size`` evaluates on a seeded subset of the val images. Run again
with the same arguments to resume: finished cells are read, not retrained; an interrupted cell
continues from its last checkpoint. Any cell can be re-evaluated like any run
(tools/eval_coco.py --checkpoint STUDY/cells/<cell>/model_final.pth ...).

Every cell trains ``--max-iters`` steps (default 200, whatever its arm costs per step) and is
evaluated once, at the end. A detection cell has the mask and keypoint heads off (its metric is box
AP; ``model.mask_on=true`` puts them back). Every extra ``key=value`` goes to every cell (after
these and the arm's own settings). ``--max-iters``, ``--sizes`` and ``--arms`` size the study for
a CPU budget: the default (5 arms x 4 sizes, detection at 160 px) took 46 minutes on 2 CPU cores
(README). Errors: one line, exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402


class Arm(NamedTuple):
    pretrained: bool  # start the backbone from --weights
    freeze_at: int  # 0 trains all; k freezes stem and c2..ck; 5 freezes the whole body
    norm: str  # norm of the backbone stages that train
    backbone_lr: float  # LR multiplier of the backbone body (1 = the head LR)


ARMS = {
    "scratch": Arm(pretrained=False, freeze_at=0, norm="BN", backbone_lr=1.0),
    "probe": Arm(pretrained=True, freeze_at=5, norm="FrozenBN", backbone_lr=1.0),
    "finetune": Arm(pretrained=True, freeze_at=0, norm="FrozenBN", backbone_lr=0.1),
    "freeze2": Arm(pretrained=True, freeze_at=2, norm="FrozenBN", backbone_lr=0.1),
    "freeze3": Arm(pretrained=True, freeze_at=3, norm="FrozenBN", backbone_lr=0.1),
}
# per task: the training tool, its default config, the backbone's config key and module path,
# the metric and where a finished run keeps it
# ``study`` holds the settings every cell gets before the arm's and the user's: a detection cell
# measures box AP, so the mask and keypoint heads (half of a default step) are off, and neither task
# evaluates during training (only the final evaluation is the cell's metric)
TASKS = {
    "det": dict(tool="train_det", config=ROOT / "configs" / "detection" / "shapes_R18_FPN.yaml",
                backbone_key="model.backbone", body="backbone.body", metric="bbox AP",
                study=("model.mask_on=false", "model.keypoint_on=false", "solver.eval_period=0")),
    "seg": dict(tool="train_seg", config=ROOT / "configs" / "segmentation" / "fcn8s_R18.yaml",
                backbone_key="model.backbone", body="net.backbone.body", metric="mIoU",
                study=("solver.eval_period=0",)),
}
DEFAULT_SIZES = "50,200,800,all"
DEFAULT_MAX_ITERS = 200  # per cell: the default study (5 arms x 4 sizes, detection) took 46 min on 2 CPU cores (63 at 300)
DEFAULT_ARMS = "scratch,probe,finetune,freeze2,freeze3"
CELL_RECORD = "study_cell.json"  # written into a cell's run folder when it has finished


class StudyError(ValueError):
    """A study that cannot run as asked; the message says which argument or cell and why."""


def parse_args(argv=None) -> argparse.Namespace:
    from common.tooling import tool_parser

    p = tool_parser(__doc__)
    p.add_argument("--weights", help="pretrained backbone (a torchvision-format .pth, e.g. RUN/classifier.pth "
                   "of tools/train_cls.py, or 'imagenet'); needed by every arm but scratch")
    p.add_argument("--output", required=True, help="study folder (subsets/, cells/, study.json, learning_curves.png)")
    p.add_argument("--task", choices=sorted(TASKS), default="det", help="det (bbox AP) or seg (mIoU)")
    p.add_argument("--data", help="dataset folder: train.json, train/, val.json, val/ (default: the built-in shapes)")
    p.add_argument("--config", help="config of every cell (default: the task's CPU recipe)")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="training-set sizes, 'all' for every image "
                   "(default: %(default)s)")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"arms among {', '.join(ARMS)} (default: %(default)s)")
    p.add_argument("--max-iters", type=int, default=DEFAULT_MAX_ITERS, help="training steps of every cell "
                   "(default: %(default)s; every arm the same steps, whatever each costs)")
    p.add_argument("--val-size", type=int, help="evaluate on this many val images (a seeded subset; "
                   "default: all of them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset selection (default: %(default)s)")
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every cell")
    return p.parse_intermixed_args(argv)


# ----------------------------------------------------------------------------------- subsets

def parse_sizes(text: str) -> list[int | str]:
    """"50,200,all" -> [50, 200, "all"] (increasing, 'all' last)."""
    sizes: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            sizes.append("all")
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise StudyError(f"--sizes {text!r}: {part!r} is neither a positive number of images nor 'all'")
    numbers = [s for s in sizes if s != "all"]
    if numbers != sorted(set(numbers)) or sizes.count("all") > 1 or ("all" in sizes and sizes[-1] != "all"):
        raise StudyError(f"--sizes {text!r} must increase, without repeats, 'all' last")
    return sizes


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms or len(set(arms)) != len(arms):
        raise StudyError(f"--arms {text!r}: choose distinct arms among {', '.join(ARMS)}")
    return arms


def select_subsets(image_ids: list[int], sizes: list[int | str], seed: int) -> dict[str, list[int]]:
    """Size label ("50", "all") -> image ids: prefixes of one seeded permutation of the sorted ids,
    so each subset is fixed by (ids, seed) and every smaller subset lies inside every larger one.
    A size at or above the number of images is the whole set (and is then labelled by its size)."""
    order = np.random.default_rng([seed, len(image_ids)]).permutation(sorted(image_ids))
    subsets = {}
    for size in sizes:
        n = len(order) if size == "all" else min(int(size), len(order))
        subsets[str(size)] = sorted(int(i) for i in order[:n])
    return subsets


def write_subset(coco: dict, image_ids: list[int], path: Path) -> None:
    """A COCO JSON holding only ``image_ids`` and their annotations; categories (so the number of
    classes) and everything else stay those of the full set."""
    keep = set(image_ids)
    subset = dict(coco)
    subset["images"] = [im for im in coco["images"] if im["id"] in keep]
    subset["annotations"] = [a for a in coco.get("annotations", []) if a["image_id"] in keep]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(subset, separators=(",", ":")))
    os.replace(tmp, path)


def prepare_subsets(data: Path, study: Path, sizes: list[int | str], seed: int,
                    val_size: int | None = None) -> dict[str, dict]:
    """Write STUDY/subsets/train_<size>.json (+ a link train_<size>/ to the image folder) and
    val.json (+ val/: all val images, or a seeded subset of ``val_size``); return {size label:
    {"json", "images", "num_images"}}.

    A subset file that already exists must hold the same images: a study is not resumed with
    another seed or dataset.
    """
    for name in ("train.json", "val.json", "train", "val"):
        if not (data / name).exists():
            raise StudyError(f"dataset folder {data} has no {name} (it needs train.json, train/, val.json, val/)")
    coco = json.loads((data / "train.json").read_text())
    folder = study / "subsets"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for label, ids in select_subsets([im["id"] for im in coco["images"]], sizes, seed).items():
        path = folder / f"train_{label}.json"
        if path.is_file():
            old = sorted(im["id"] for im in json.loads(path.read_text())["images"])
            if old != ids:
                raise StudyError(f"{path} holds other images than --seed {seed} selects from {data}; "
                                 "use a new --output for another dataset or seed")
        else:
            write_subset(coco, ids, path)
        _link(folder / f"train_{label}", data / "train")
        out[label] = {"json": path, "images": folder / f"train_{label}", "num_images": len(ids)}
    val_coco = json.loads((data / "val.json").read_text())
    val_ids = select_subsets([im["id"] for im in val_coco["images"]], [val_size or "all"], seed)
    write_subset(val_coco, next(iter(val_ids.values())), folder / "val.json")  # the same on every call
    _link(folder / "val", data / "val")
    return out


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (the subsets share the dataset's image folder)."""
    if not link.is_symlink():
        link.symlink_to(target.resolve(), target_is_directory=True)


# ----------------------------------------------------------------------------------- cells

def arm_overrides(arm: Arm, task: str, weights: str | None) -> list[str]:
    """The config overrides that make ``arm`` (after the config, before the user's overrides)."""
    key = TASKS[task]["backbone_key"]
    body = TASKS[task]["body"]
    over = [f"{key}.weights={weights if arm.pretrained else 'null'}", f"{key}.freeze_at={arm.freeze_at}",
            f"{key}.norm={arm.norm}", "solver.time_budget_min=0"]  # every arm the same steps, whatever each costs
    over.append(f"solver.lr_mults={{{body}: {arm.backbone_lr}}}" if arm.backbone_lr != 1.0 else "solver.lr_mults={}")
    return over


def cell_argv(task: str, run: Path, subset: dict, study: Path, args, arm_over: list[str]) -> list[str]:
    """The command line of one cell's training tool (tools/train_det.py or tools/train_seg.py)."""
    argv = ["--output", str(run), "--config", str(args.config or TASKS[task]["config"]),
            "--max-iters", str(args.max_iters)]
    if args.device:
        argv += ["--device", args.device]
    if task == "det":
        argv += ["--train-json", str(subset["json"]), "--train-images", str(subset["images"]),
                 "--val-json", str(study / "subsets" / "val.json"), "--val-images", str(study / "subsets" / "val"),
                 "--no-progress"]
        data = []
    else:  # COCO instances painted into label maps; root/<split>.json with root/<split>/ images
        data = ["data.format=coco", f"data.root={study / 'subsets'}", f"data.train_split={subset['json'].stem}",
                "data.val_split=val"]
    return argv + list(TASKS[task]["study"]) + arm_over + data + list(args.overrides)


def schedule_fix(task: str, args) -> list[str]:
    """With --max-iters below the config's warmup, shorten the warmup (and drop later LR steps)."""
    from common.config import load_config
    from common.engine.config import fit_schedule_to_max_iters
    if task == "det":
        from detection.config import DetConfig as Config
    else:
        from segmentation.config import SegConfig as Config
    cfg = load_config(Config, args.config or TASKS[task]["config"], [*TASKS[task]["study"], *args.overrides])
    s = replace(cfg.solver, max_iters=args.max_iters)
    fit_schedule_to_max_iters(s)
    return [f"solver.warmup_iters={s.warmup_iters}", f"solver.steps=[{', '.join(map(str, s.steps))}]"]


def read_metric(task: str, run: Path) -> float | None:
    """The finished cell's metric from its run folder's metrics.json: bbox AP (det) or mIoU (seg)."""
    path = run / "metrics.json"
    if not (run / "model_final.pth").is_file() or not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics["bbox"]["AP"] if task == "det" else metrics["mIoU"]


def run_cell(task: str, argv: list[str], run: Path) -> None:
    """Train (or resume) one cell with the task's own tool, in this process."""
    resume = (run / "last_checkpoint").is_file() or (run / "model_final.pth").is_file()
    tool = load_tool(TASKS[task]["tool"])
    rc = tool.main((["--resume"] if resume else []) + argv)
    if rc != 0:
        raise StudyError(f"cell {run.name} failed (tools/{TASKS[task]['tool']}.py exit status {rc}; its "
                         f"error is printed above); fix it and run the study again to resume")


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------- report

def format_table(results: list[dict], arms: list[str], sizes: list[str], metric: str) -> str:
    """Markdown table: one row per arm, one column per size; '-' where a cell is missing."""
    value = {(r["arm"], r["size"]): r["metric"] for r in results}
    num = {r["size"]: r["num_images"] for r in results}
    heads = [f"{s} ({num[s]} img)" if s in num and str(num[s]) != s else s for s in sizes]
    lines = [f"| {metric} | " + " | ".join(heads) + " |", "|---" * (len(sizes) + 1) + "|"]
    for arm in arms:
        cells = [f"{value[(arm, s)]:.1f}" if value.get((arm, s)) is not None else "-" for s in sizes]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_learning_curves(results: list[dict], arms: list[str], metric: str, path: Path) -> None:
    """Metric against the number of training images (log x), one line per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in arms:
        points = sorted((r["num_images"], r["metric"]) for r in results
                        if r["arm"] == arm and r["metric"] is not None)
        if points:
            ax.plot(*zip(*points), marker="o", label=arm)
    ax.set_xscale("log")
    sizes = sorted({r["num_images"] for r in results})
    ax.set_xticks(sizes, [str(n) for n in sizes])  # the subset sizes, not powers of ten
    ax.minorticks_off()
    ax.set_xlabel("training images")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(study: Path, results: list[dict], arms: list[str], sizes: list[str], metric: str,
                 info: dict) -> str:
    """study.json, learning_curves.png and the table (returned)."""
    table = format_table(results, arms, sizes, metric)
    (study / "study.json").write_text(json.dumps({**info, "metric": metric, "arms": arms, "sizes": sizes,
                                                  "cells": results, "table": table}, indent=2))
    plot_learning_curves(results, arms, metric, study / "learning_curves.png")
    return table


# ----------------------------------------------------------------------------------- main

def study(args) -> str:
    task = TASKS[args.task]
    sizes, arms = parse_sizes(args.sizes), parse_arms(args.arms)
    if args.max_iters < 1:
        raise StudyError(f"--max-iters {args.max_iters} must be at least 1")
    if any(ARMS[a].pretrained for a in arms) and not args.weights:
        raise StudyError(f"arms {', '.join(a for a in arms if ARMS[a].pretrained)} start from pretrained "
                         "weights: pass --weights RUN/classifier.pth (tools/train_cls.py) or 'imagenet'")
    if args.weights and args.weights != "imagenet" and not Path(args.weights).is_file():
        raise StudyError(f"--weights {args.weights} does not exist")
    weights = args.weights if args.weights == "imagenet" or not args.weights else str(Path(args.weights).resolve())
    out = Path(args.output)
    if args.data:
        data = Path(args.data)
    else:
        from common.shapes import ensure_shapes_dataset
        data = ensure_shapes_dataset("datasets/shapes")  # where train_det.py / train_seg.py make it
    if args.val_size is not None and args.val_size < 1:
        raise StudyError(f"--val-size {args.val_size} must be at least 1")
    subsets = prepare_subsets(data, out, sizes, args.seed, args.val_size)
    labels = list(subsets)
    fix = schedule_fix(args.task, args)

    results = []
    for label in labels:  # small sizes first: their cells are the cheap ones
        for arm in arms:
            run = out / "cells" / f"{arm}_{label}"
            record = run / CELL_RECORD
            if not record.is_file():
                argv = cell_argv(args.task, run, subsets[label], out, args,
                                 arm_overrides(ARMS[arm], args.task, weights) + fix)
                print(f"[study] cell {arm} x {label} ({subsets[label]['num_images']} images) -> {run}", flush=True)
                t0 = time.perf_counter()
                run_cell(args.task, argv, run)
                seconds = time.perf_counter() - t0
                value = read_metric(args.task, run)
                if value is None:
                    raise StudyError(f"cell {run} finished without its {task['metric']} file")
                record.write_text(json.dumps({"arm": arm, "size": label, "num_images": subsets[label]["num_images"],
                                              "metric": value, "seconds": round(seconds, 1), "argv": argv}))
            results.append({k: v for k, v in json.loads(record.read_text()).items() if k != "argv"}
                           | {"run": str(run)})
    info = {"task": args.task, "data": str(data), "weights": weights, "seed": args.seed, "val_size": args.val_size,
            "command": " ".join(sys.argv)}
    table = write_report(out, results, arms, labels, task["metric"], info)
    total = sum(r["seconds"] for r in results)
    print(f"\n{table}\n\ncells: " + ", ".join(f"{r['arm']}_{r['size']} {r['seconds']:.0f} s" for r in results))
    print(f"{len(results)} cells, {total / 60:.1f} min of training and evaluation; "
          f"{out / 'study.json'}, {out / 'learning_curves.png'}")
    return table


def main(argv=None) -> int:
    from common.tooling import run_tool

    return run_tool("transfer_study", study, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
