"""Micro-benchmark: detection.roi_ops.roi_align vs torchvision.ops.roi_align on CPU.

    python tools/bench_roi_align.py [--reps 3] [--threads 2]

Times forward and forward+backward (gradient w.r.t. the features) for shapes of our CPU recipe
and of torchvision's, interleaving the two implementations run by run (the CPU may be shared),
and prints medians and the speed-up (torchvision time / ours).

OMP_WAIT_POLICY defaults to PASSIVE here (set it to override): on a CPU shared with other
processes, OpenMP worker threads that spin between parallel ops steal the core the main thread
needs, which makes any multi-threaded torch code (ours; not torchvision's serial kernel) erratic.
On a dedicated machine the policy makes little difference.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, like the other tools
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool, tool_parser  # noqa: E402

start_tool()  # before torch: OpenMP threads sleep when idle; see common/tooling.py

import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

from detection.roi_ops import roi_align

# name, features (N, C, H, W), stride, RoIs, output size, sampling_ratio, aligned, box sizes (px)
CASES = [
    ("box  p2@192px  7x7 sr2", (4, 256, 48, 48), 4, 512, 7, 2, False, (8, 112)),
    ("mask p2@192px 14x14 sr2", (4, 256, 48, 48), 4, 64, 14, 2, False, (8, 112)),
    ("box  p2@512px  7x7 sr2", (2, 256, 128, 128), 4, 1024, 7, 2, False, (8, 112)),
    ("box  p3@512px  7x7 sr0 aligned", (2, 256, 64, 64), 8, 512, 7, 0, True, (112, 224)),
    ("mask targets: 20 gt masks 800px", (20, 1, 800, 800), 1, 64, 28, 0, True, (20, 300)),
]


def random_rois(n: int, image_size: int, r: int, sizes: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """(R, 5) [batch_idx, x1, y1, x2, y2] boxes of side in `sizes`, centred inside the image."""
    wh = torch.empty(r, 2).uniform_(*sizes, generator=gen)
    ctr = torch.rand(r, 2, generator=gen) * image_size
    batch = torch.randint(0, n, (r, 1), generator=gen).float()
    return torch.cat([batch, (ctr - wh / 2).clamp(min=0), (ctr + wh / 2).clamp(max=image_size)], dim=1)


def time_once(fn, x, rois, size, scale, sr, aligned, backward: bool) -> float:
    x = x.detach().requires_grad_(backward)
    t0 = time.perf_counter()
    y = fn(x, rois, size, scale, sr, aligned)
    if backward:
        y.backward(torch.ones_like(y))
    return time.perf_counter() - t0


def main():
    parser = tool_parser(__doc__)
    parser.add_argument("--reps", type=int, default=3, help="timed runs per implementation and mode")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    impls = {"ours": roi_align, "torchvision": torchvision.ops.roi_align}
    print(f"threads={args.threads} reps={args.reps} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} "
          f"(median ms; speed-up = torchvision / ours)")
    print(f"{'case':32s} {'mode':8s} {'ours':>9s} {'tv':>9s} {'speed-up':>9s}")
    for name, shape, stride, r, size, sr, aligned, sizes in CASES:
        x = torch.randn(shape, generator=gen)
        rois = random_rois(shape[0], shape[2] * stride, r, sizes, gen)
        for mode, backward in (("fwd", False), ("fwd+bwd", True)):
            times = {k: [] for k in impls}
            time_once(roi_align, x, rois, size, 1 / stride, sr, aligned, backward)  # warm-up
            for _ in range(args.reps):  # interleaved
                for k, fn in impls.items():
                    times[k].append(time_once(fn, x, rois, size, 1 / stride, sr, aligned, backward))
            ours, tv = (statistics.median(times[k]) * 1e3 for k in impls)
            print(f"{name:32s} {mode:8s} {ours:9.1f} {tv:9.1f} {tv / ours:8.1f}x", flush=True)


if __name__ == "__main__":
    main()
