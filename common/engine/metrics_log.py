"""Training metrics on disk: ``metrics.csv`` and TensorBoard scalars in the run's output dir.

metrics.csv has one row per logged iteration (phase "train") and per evaluation (phase "eval").
Columns are ``iter, phase`` followed by every key seen so far, in the order first seen; a key
that appears later adds a column at the end (the file is rewritten with the wider header), and
a column never moves. Cells a row does not have are empty. ``iter`` counts finished iterations.

Only the main process writes; on other ranks this object does nothing.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"bbox": {"AP": 41.2}}`` -> ``{"bbox/AP": 41.2}``; non-numeric leaves are dropped."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=name + "/"))
        elif isinstance(value, bool):
            continue
        else:
            try:
                flat[name] = float(value)
            except (TypeError, ValueError):
                continue
    return flat


class MetricsLog:
    """Append rows to ``metrics.csv`` and scalars to TensorBoard.

    ``start_iter`` > 0 (a resumed run) drops rows logged after that iteration by the interrupted
    run, since they are about to be redone, and TensorBoard purges its events after that step.
    """

    FIXED = ("iter", "phase")

    def __init__(self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 start_iter: int = 0):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.csv"
        self.columns: list[str] = list(self.FIXED)
        self.rows: list[dict] = []
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames and list(reader.fieldnames[:2]) == list(self.FIXED):
                    self.columns = list(reader.fieldnames)
                    self.rows = [r for r in reader if r["iter"] and int(r["iter"]) <= start_iter]
        self._rewrite()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed; writing metrics.csv only")
            else:
                self.writer = SummaryWriter(str(self.path.parent), purge_step=start_iter or None)

    def log(self, iteration: int, phase: str, scalars: dict) -> None:
        """Write one row (and one TensorBoard scalar per key, tagged ``phase/key``)."""
        if not self.enabled:
            return
        values = flatten_metrics(scalars)
        row = {"iter": str(iteration), "phase": phase}
        row.update({k: repr(v) if math.isfinite(v) else str(v) for k, v in values.items()})
        self.rows.append(row)
        new = [k for k in values if k not in self.columns]
        if new:
            self.columns.extend(new)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{phase}/{key}", value, iteration)

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
