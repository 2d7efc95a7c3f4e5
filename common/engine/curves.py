"""Training curves from ``metrics.csv``: ``loss_curve.png`` (training losses, solid; validation
losses, dashed) and ``metric_curve.png`` (evaluation metrics), against the iteration.

``metric_curve.png`` has one panel per task: metrics named ``<task>/<name>`` (``bbox/AP``,
``segm/AP50`` ...) are grouped by task, and a task with COCO metrics shows only AP, AP50 and
AP75 (the size breakdowns stay in metrics.csv); metrics without a task prefix (mIoU, pixel
accuracy ...) share one panel."""
from __future__ import annotations

import csv
from pathlib import Path


def _series(rows: list[dict], phase: str, keep) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        if row.get("phase") != phase:
            continue
        for key, cell in row.items():
            if key in ("iter", "phase") or not cell or not keep(key):
                continue
            xs, ys = out.setdefault(key, ([], []))
            xs.append(int(row["iter"]))
            ys.append(float(cell))
    return out


def plot_curves(metrics_csv: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``loss_curve.png`` and ``metric_curve.png`` into ``out_dir``; return their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_csv, out_dir = Path(metrics_csv), Path(out_dir)
    if not metrics_csv.is_file():
        raise FileNotFoundError(f"metrics file {metrics_csv} does not exist (has training logged anything?)")
    with open(metrics_csv, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or list(reader.fieldnames[:2]) != ["iter", "phase"]:
            raise ValueError(f"{metrics_csv} is not a metrics.csv written by the engine "
                             f"(header {reader.fieldnames})")
        rows = list(reader)
    out_dir.mkdir(parents=True, exist_ok=True)

    def is_loss(key: str) -> bool:
        return "loss" in key

    train = _series(rows, "train", is_loss)
    val = _series(rows, "eval", lambda k: k.startswith("val/") and is_loss(k))
    metrics = _series(rows, "eval", lambda k: not k.startswith("val/"))

    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (key, (xs, ys)) in enumerate(sorted(train.items())):
        ax.plot(xs, ys, color=f"C{i % 10}", label=key)
        vxs, vys = val.get(f"val/{key}", ([], []))
        if vxs:
            ax.plot(vxs, vys, "--o", color=f"C{i % 10}", markersize=3, label=f"val/{key}")
    _finish(ax, "loss", bool(train), "no training losses logged yet")
    paths.append(out_dir / "loss_curve.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    panels = metric_panels(metrics)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1) + 1, 4), squeeze=False)
    for ax, (task, keys) in zip(axes[0], panels.items()):
        for key in keys:
            xs, ys = metrics[key]
            ax.plot(xs, ys, "-o", markersize=3, label=key.split("/", 1)[-1])
        ax.set_title(task)
        _finish(ax, "metric", True, "")
    if not panels:
        _finish(axes[0, 0], "metric", False, "no evaluation logged yet")
    paths.append(out_dir / "metric_curve.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


COCO_CURVES = ("AP", "AP50", "AP75")
TASK_ORDER = ("bbox", "segm", "keypoints")  # panels left to right; other tasks follow by name


def metric_panels(metrics: dict) -> dict[str, list[str]]:
    """{panel title: metric keys} in the order drawn: one panel per ``<task>/`` prefix (only
    AP, AP50, AP75 for a task that has them), the unprefixed metrics in one panel "metrics"."""
    panels: dict[str, list[str]] = {}
    for key in sorted(metrics):
        task = key.split("/", 1)[0] if "/" in key else "metrics"
        panels.setdefault(task, []).append(key)
    for task, keys in panels.items():
        if f"{task}/AP" in keys:
            panels[task] = [f"{task}/{name}" for name in COCO_CURVES if f"{task}/{name}" in keys]
    order = {task: i for i, task in enumerate(TASK_ORDER)}
    return dict(sorted(panels.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def _finish(ax, ylabel: str, has_data: bool, empty_note: str) -> None:
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if has_data:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", transform=ax.transAxes)
    ax.figure.tight_layout()
