#!/usr/bin/env python
"""Our selective search against OpenCV-contrib's, on the same images, one core each.

    python tools/bench_selective_search.py --data datasets/shapes /work/data/variety --split val \
        --limit 50 [--mode fast] [--repeats 2] [--out bench_ss.json]

OpenCV-contrib is not a dependency of the toolkit (its ``cv2`` would shadow the one albumentations
installs), so the benchmark makes a throw-away virtual environment (a plain ``python -m venv``,
not ``--system-site-packages``, which would see the project's cv2), installs
``opencv-contrib-python-headless`` and numpy into it with pip, and runs
``cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`` there in "fast" (or "quality")
mode with ``cv2.setNumThreads(1)``. ``--venv DIR`` keeps and reuses the environment; without it a
temporary one is deleted at the end.

Per dataset and method it reports boxes per image, recall of the ground-truth boxes at IoU 0.5
and 0.7 and MABO with at most ``--max-proposals`` boxes (OpenCV's first ones: its output is
ranked), and seconds per image: for ours the wall time of the whole
``tools/compute_proposals.py --workers 1`` command (interpreter start-up included) divided by the
number of images; for OpenCV the time of its loop over the same files (reading them included).
``--repeats R`` runs both R times, alternating, and keeps each one's fastest time (the machine
may be shared). CPU seconds are reported beside the wall time (same scopes), as they are less
disturbed by other processes on a shared machine. Bad input prints one line to stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool, tool_parser  # noqa: E402

start_tool()  # before torch: OpenMP threads sleep when idle; see common/tooling.py

from detection.proposals import ProposalError, load_proposals, proposal_recall  # noqa: E402

# run inside the throw-away environment: argv = [list file (JSON [[id, path], ...]), mode, out file]
OPENCV_RUNNER = r'''
import json, sys, time
import cv2
cv2.setNumThreads(1)
items, mode, out = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
result = {}
t0, c0 = time.perf_counter(), time.process_time()
for image_id, path in items:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(img)
    ss.switchToSelectiveSearchFast() if mode == "fast" else ss.switchToSelectiveSearchQuality()
    rects = ss.process()  # (R, 4) x, y, w, h, ranked
    result[str(image_id)] = {"boxes": [[int(x), int(y), int(x + w), int(y + h)] for x, y, w, h in rects]}
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
json.dump(result, open(out, "w"))
print(json.dumps({"seconds": seconds, "cpu": cpu, "version": cv2.__version__}))
'''


def parse_args(argv=None) -> argparse.Namespace:
    p = tool_parser(__doc__)
    p.add_argument("--data", nargs="+", required=True, help="dataset folders (each with <split>.json and <split>/)")
    p.add_argument("--split", default="val", help="split to run on (default: %(default)s)")
    p.add_argument("--limit", type=int, default=50, help="first N images of each split (0 = all; default: %(default)s)")
    p.add_argument("--mode", choices=("fast", "quality"), default="fast", help="both methods' mode (default: %(default)s)")
    p.add_argument("--max-proposals", type=int, default=2000, help="boxes per image evaluated (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each method, alternating; the fastest counts")
    p.add_argument("--venv", default=None, help="where to make (or reuse) the OpenCV-contrib environment "
                   "(default: a temporary one, deleted afterwards)")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    return p.parse_args(argv)


def ensure_opencv_venv(venv: Path) -> Path:
    """The python of a plain virtualenv at ``venv`` with opencv-contrib-python-headless (made if needed)."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import cv2; cv2.ximgproc.segmentation.createSelectiveSearchSegmentation"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"making a throw-away virtualenv with opencv-contrib-python-headless in {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "opencv-contrib-python-headless", "numpy"],
                         capture_output=True, text=True)
    if pip.returncode != 0 or subprocess.run(check, capture_output=True).returncode != 0:
        raise RuntimeError(f"could not install opencv-contrib-python-headless into {venv}: "
                           f"{(pip.stderr or pip.stdout).strip().splitlines()[-1:] or 'import failed'}")
    return python


def one_core_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_opencv(python: Path, items: list, mode: str, work: Path) -> tuple[float, float, Path, str]:
    """(wall and CPU seconds of OpenCV's loop, its proposal file, OpenCV version)."""
    (work / "items.json").write_text(json.dumps(items))
    (work / "runner.py").write_text(OPENCV_RUNNER)
    out = work / "opencv.json"
    proc = subprocess.run([str(python), str(work / "runner.py"), str(work / "items.json"), mode, str(out)],
                          capture_output=True, text=True, env=one_core_env())
    if proc.returncode != 0:
        raise RuntimeError(f"OpenCV's selective search failed: {proc.stderr.strip()[-500:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info["seconds"], info["cpu"], out, info["version"]


def run_ours(data: Path, split: str, limit: int, mode: str, max_proposals: int, out: Path) -> tuple[float, float]:
    """Wall and CPU time of the whole tools/compute_proposals.py command with one worker."""
    import resource

    cmd = [sys.executable, str(ROOT / "tools" / "compute_proposals.py"), "--data", str(data), "--split", split,
           "--mode", mode, "--workers", "1", "--limit", str(limit), "--max-proposals", str(max_proposals),
           "--out", str(out), "--overwrite", "--no-progress"]
    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=one_core_env())
    seconds, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"tools/compute_proposals.py failed: {proc.stderr.strip()[-500:]}")
    return seconds, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ProposalError, RuntimeError, ValueError, OSError, subprocess.CalledProcessError) as e:
        print(f"bench_selective_search: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    compute = _compute_proposals_tool()
    temp_venv = args.venv is None
    venv = Path(tempfile.mkdtemp(prefix="ss_opencv_venv_")) if temp_venv else Path(args.venv)
    rows = []
    try:
        python = ensure_opencv_venv(venv)
        for data in map(Path, args.data):
            images, gt, _ = compute.read_split(data, args.split, args.limit)
            items = [[i, str(p)] for i, p in images.items()]
            with tempfile.TemporaryDirectory(prefix="ss_bench_") as tmp:
                work = Path(tmp)
                ours_file = work / "ours.json"
                ours_s, ocv_s = [], []  # (wall, cpu) per run
                for _ in range(args.repeats):
                    seconds, cpu, ocv_file, version = run_opencv(python, items, args.mode, work)
                    ocv_s.append((seconds, cpu))
                    ours_s.append(run_ours(data, args.split, args.limit, args.mode, args.max_proposals, ours_file))
                for name, path, runs in ((f"OpenCV {version} {args.mode}", ocv_file, ocv_s),
                                         (f"ours {args.mode}", ours_file, ours_s)):
                    props = {i: p["boxes"] for i, p in load_proposals(path, images, args.max_proposals).items()}
                    r = proposal_recall(props, gt)
                    rows.append({"data": str(data), "method": name, "images": len(images),
                                 "boxes_per_image": r["boxes_per_image"], "recall@0.5": r["recall@0.5"],
                                 "recall@0.7": r["recall@0.7"], "MABO": r["MABO"],
                                 "s_per_image": min(w for w, _ in runs) / len(images),
                                 "cpu_s_per_image": min(c for _, c in runs) / len(images),
                                 "s_per_image_runs": [w / len(images) for w, _ in runs]})
    finally:
        if temp_venv:
            shutil.rmtree(venv, ignore_errors=True)
    print("| data | method | images | boxes/image | recall@0.5 | recall@0.7 | MABO | s/image (wall) | s/image (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['method']} | {r['images']} | {r['boxes_per_image']:.0f} | {r['recall@0.5']:.1f} | "
              f"{r['recall@0.7']:.1f} | {r['MABO']:.1f} | {r['s_per_image']:.3f} | {r['cpu_s_per_image']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _compute_proposals_tool():
    """tools/compute_proposals.py as a module (tools/ is not a package): its split reader."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compute_proposals_tool", ROOT / "tools" / "compute_proposals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
