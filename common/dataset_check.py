"""The dataset check every tool runs before any work: all problems of a split, found once.

For each COCO split (an annotation JSON and its image folder):
- every annotation is checked (``common.coco.coco_problems``);
- every image is decoded fully once with PIL, so a missing, empty (0 bytes), truncated
  ("Premature end of JPEG file") or undecodable file, and a file whose size differs from the
  JSON, is a problem naming the file, the image id and the value (files PIL does not know are
  read with OpenCV instead, without the truncation check);
- a summary: images, images without (non-crowd) instances, instances per class, box sizes,
  keypoint visibility.

For each split of images with label-map PNGs (segmentation's semantic_dir and VOC layouts,
:func:`check_label_split`): both files of every pair decoded fully once; a missing, empty,
truncated or unreadable file, a label map that is not single-channel or palette, one whose size
differs from its image's, and class ids outside the classes (the ignore value aside) are problems,
each naming the file, the image id and the value (all bad ids of a map in one line).

Results are cached in ``cache_dir`` (default ``$XDG_CACHE_HOME/rcnn-toolkit/dataset_check``, else
``~/.cache/...``; one JSON per annotation file or label folder + image folder): the annotation
part is reused while the JSON's size and modification time are unchanged, each image's (or
image and label map's) result while its own are. A second run only stats the files. Dataset
folders are never written to (they may be read-only or shared).

:func:`check_splits` (COCO) and :func:`report_checks` (any checks) are what the tools call: they
print one line per split, and either fail with every problem listed (one line each) or, when
skipping, return the image ids to leave out and write what was skipped to
``skipped_images.txt`` in the run folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common.coco import DatasetError, Problem, coco_problems, read_json

CACHE_VERSION = 2  # 2: one entry layout [*key, problems] for images and label maps
SIZE_BINS = [0, 8, 16, 32, 64, 128, 256, 512, 1024, 1 << 30]  # px edges of sqrt(box area) for the histogram


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rcnn-toolkit" / "dataset_check"


@dataclass
class SplitCheck:
    """What the check found in one split."""

    ann_file: Path
    image_root: Path
    problems: list[Problem]
    summary: dict  # see summarize()
    decoded: int = 0  # images decoded this time (0: everything came from the cache)

    @property
    def name(self) -> str:
        return self.ann_file.name


@dataclass
class _Image:
    image_id: Any
    file_name: str
    height: int
    width: int


# ---------------------------------------------------------------------------------------------
# images


def decoded_size(path: Path, where: str) -> tuple[int, int] | str:
    """(height, width) of the image file at ``path`` once every row decoded, or why it cannot be
    used (a sentence starting with ``where``)."""
    from PIL import Image, UnidentifiedImageError

    if path.is_dir():
        return f"{where} is a folder"
    try:
        nbytes = path.stat().st_size
    except OSError:
        return f"{where} does not exist"
    if nbytes == 0:
        return f"{where} is empty (0 bytes)"
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.load()  # decodes every row: a truncated file raises here (PIL's LOAD_TRUNCATED_IMAGES is off)
    except (UnidentifiedImageError, Image.DecompressionBombError):
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            return f"{where} could not be read as an image"
        h, w = img.shape[:2]
    except (OSError, SyntaxError, ValueError) as e:
        return f"{where} is truncated or corrupt ({e})"
    return h, w


def image_problem(path: Path, image_id: Any, height: int, width: int, ann_name: str) -> str | None:
    """Why the image file cannot be used (None: it decodes fully and has the JSON's size)."""
    size = decoded_size(path, f"image file {path} (image id {image_id})")
    if isinstance(size, str):
        return size
    if size != (height, width):
        return (f"image file {path} (image id {image_id}) is {size[0]}x{size[1]} (h x w) but {ann_name} says "
                f"{height}x{width}")
    return None


def label_map_problems(image_path: Path, label_path: Path, image_id: Any, num_classes: int,
                       ignore_index: int) -> list[str]:
    """Why an image and its label map (a single-channel or palette PNG of class ids) cannot be used:
    either file missing, empty, truncated or unreadable, a label map of another mode or size than
    its image, class ids other than 0..num_classes-1 and ``ignore_index`` (all of them, in one
    sentence). Empty: both are fine."""
    from PIL import Image

    image = decoded_size(image_path, f"image file {image_path} (image id {image_id})")
    problems = [image] if isinstance(image, str) else []
    where = f"label file {label_path} (image id {image_id})"
    size = decoded_size(label_path, where)
    if isinstance(size, str):
        return problems + [size]
    with Image.open(label_path) as im:  # decoded once already: this read cannot fail half-way
        if im.mode not in ("P", "L"):
            return problems + [f"{where} is a {im.mode} image; expected single-channel class ids or a palette PNG"]
        values = np.unique(np.asarray(im))  # palette mode gives the indices, not the colours
    if not isinstance(image, str) and size != image:
        problems.append(f"{where} is {size[0]}x{size[1]} (h x w) but its image {image_path.name} is "
                        f"{image[0]}x{image[1]}")
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        problems.append(f"{where} holds class id{'s' if bad.size > 1 else ''} {', '.join(map(str, bad.tolist()))}, "
                        f"outside the {num_classes} classes 0..{num_classes - 1} (ignore index {ignore_index})")
    return problems


# ---------------------------------------------------------------------------------------------
# summary


def summarize(data: dict, problems: list[Problem]) -> dict:
    """Counts over the annotations that passed the checks (the problem ones are left out).

    {"images", "empty_images" (no non-crowd instance), "instances" {class name: n}, "crowd",
    "box_w" [min, max], "box_h" [min, max], "box_size_hist" (counts of sqrt(area) in SIZE_BINS),
    "keypoints" {"v0", "v1", "v2"} (over instances of keypoint categories)}.
    """
    if any(p.image_id is None for p in problems) or not isinstance(data, dict):
        return {}
    images = {im["id"] for im in data["images"]}
    cats = {c["id"]: c for c in data["categories"]}
    bad = {p.image_id for p in problems}
    names = {c["id"]: str(c["name"]) for c in sorted(data["categories"], key=lambda c: c["id"])}
    instances = Counter({n: 0 for n in names.values()})
    with_instance, crowd, ws, hs, vis = set(), 0, [], [], Counter({0: 0, 1: 0, 2: 0})
    for a in data.get("annotations", []):
        if a["image_id"] in bad or a["image_id"] not in images or a["category_id"] not in cats:
            continue
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        instances[names[a["category_id"]]] += 1
        with_instance.add(a["image_id"])
        ws.append(float(a["bbox"][2]))
        hs.append(float(a["bbox"][3]))
        if cats[a["category_id"]].get("keypoints") and a.get("keypoints"):
            vis.update(int(v) for v in a["keypoints"][2::3])
    sizes = np.sqrt(np.clip(np.array(ws) * np.array(hs), 0, None)) if ws else np.zeros(0)
    return {
        "images": len(images), "empty_images": len(images - with_instance),
        "instances": dict(instances), "crowd": crowd,
        "box_w": [min(ws), max(ws)] if ws else None, "box_h": [min(hs), max(hs)] if hs else None,
        "box_size_hist": np.histogram(sizes, bins=SIZE_BINS)[0].tolist(),
        "keypoints": {f"v{k}": vis[k] for k in sorted(vis)} if any(c.get("keypoints") for c in cats.values()) else None,
    }


def format_summary(check: SplitCheck) -> str:
    """A few lines per split, for tools/check_dataset.py."""
    s = check.summary
    lines = [f"{check.ann_file} (images in {check.image_root})"]
    if not s:
        lines.append("  no summary: the file's layout is broken (see the problems)")
        return "\n".join(lines)
    if "classes" in s:  # check_label_split
        lines.append(f"  {s['images']} images with label maps of {s['classes']} classes")
        lines.append(f"  problems: {len(check.problems) or 'none'}")
        return "\n".join(lines)
    total = sum(s["instances"].values())
    lines.append(f"  {s['images']} images, {s['empty_images']} without instances; {total} instances, "
                 f"{s['crowd']} crowd")
    width = max([len(n) for n in s["instances"]] + [5])
    for name, n in s["instances"].items():
        lines.append(f"    {name:<{width}} {n:>8}")
    if s["box_w"]:
        lines.append(f"  box width {s['box_w'][0]:.1f}-{s['box_w'][1]:.1f} px, height {s['box_h'][0]:.1f}-"
                     f"{s['box_h'][1]:.1f} px; sqrt(area): " + ", ".join(
                         f"{_bin_name(i)} {n}" for i, n in enumerate(s["box_size_hist"]) if n))
    if s["keypoints"]:
        k = s["keypoints"]
        lines.append(f"  keypoints: {k['v2']} visible (v=2), {k['v1']} occluded (v=1), {k['v0']} unlabelled (v=0)")
    lines.append(f"  problems: {len(check.problems) or 'none'}")
    return "\n".join(lines)


def _bin_name(i: int) -> str:
    lo, hi = SIZE_BINS[i], SIZE_BINS[i + 1]
    return f">={lo}" if i == len(SIZE_BINS) - 2 else f"<{hi}" if lo == 0 else f"{lo}-{hi}"


def plot_summary(checks: list[SplitCheck], path: Path) -> Path:
    """A PNG: instances per class (one bar per split) and the box size histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = [c for c in checks if c.summary.get("instances") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(checks), 1)
    for j, c in enumerate(checks):
        names = list(c.summary["instances"])
        x = np.arange(len(names)) + j * width
        ax1.bar(x, list(c.summary["instances"].values()), width, label=c.name)
        ax1.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
        bins = np.arange(len(SIZE_BINS) - 1) + j * width
        ax2.bar(bins, c.summary["box_size_hist"], width, label=c.name)
        ax2.set_xticks(np.arange(len(SIZE_BINS) - 1) + 0.4 - width / 2,
                       [_bin_name(i) for i in range(len(SIZE_BINS) - 1)], rotation=45, ha="right")
    ax1.set_title("instances per class")
    ax2.set_title("box size: sqrt(area) in px")
    for ax in (ax1, ax2):
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# one split, with the cache


def _stat(path: Path) -> list[int]:
    """[size, modification time in ns]; [-1, -1] for a file that is not there."""
    try:
        st = path.stat()
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _usable_entry(im: dict) -> bool:
    """An image entry with a file name and a size (one without is already a problem of the JSON)."""
    return "file_name" in im and all(isinstance(im.get(k), (int, float)) and np.isfinite(im[k]) and im[k] >= 1
                                     for k in ("height", "width"))


def _cache_path(cache_dir: Path, ann_file: Path, image_root: Path) -> Path:
    key = hashlib.sha1(f"{ann_file.resolve()}\n{image_root.resolve()}".encode()).hexdigest()[:20]
    return cache_dir / f"{key}.json"


def check_split(ann_file: str | Path, image_root: str | Path, *, cache_dir: Path | None = None,
                workers: int | None = None) -> SplitCheck:
    """Check one split (see the module docstring); ``cache_dir=None``: the default cache."""
    ann_file, image_root = Path(ann_file), Path(image_root)
    cache_file = _cache_path(Path(cache_dir or default_cache_dir()), ann_file, image_root)
    try:
        cache = json.loads(cache_file.read_text())
        if cache.get("version") != CACHE_VERSION:
            cache = {}
    except (OSError, ValueError):
        cache = {}
    ann_stat = _stat(ann_file)
    if -1 not in ann_stat and cache.get("ann_stat") == ann_stat:
        ann_problems = [Problem(str(ann_file), p[0], p[1]) for p in cache["ann_problems"]]
        summary, images = cache["summary"], [_Image(*im) for im in cache["image_list"]]
    else:
        data = read_json(ann_file)
        ann_problems = coco_problems(data, str(ann_file))
        summary = summarize(data, ann_problems)
        layout_ok = not any(p.image_id is None for p in ann_problems)
        images = [_Image(im["id"], str(im["file_name"]), int(im["height"]), int(im["width"]))
                  for im in data["images"] if _usable_entry(im)] if layout_ok else []
    problems = list(ann_problems)
    if not image_root.is_dir():
        problems.append(Problem(str(ann_file), None, f"image folder {image_root} of {ann_file} does not exist"))
        images = []

    def decode(im: _Image) -> list[str]:
        message = image_problem(image_root / im.file_name, im.image_id, im.height, im.width, ann_file.name)
        return [message] if message else []

    old = cache.get("images", {}) if cache.get("ann_stat") == ann_stat else {}
    results, decoded = _cached_checks([(im.file_name, [*_stat(image_root / im.file_name), im.height, im.width],
                                        partial(decode, im)) for im in images], old, workers)
    for im in images:
        problems += [Problem(str(ann_file), im.image_id, m) for m in results[im.file_name][-1]]

    if -1 not in ann_stat:
        _write_cache(cache_file, {
            "version": CACHE_VERSION, "ann_file": str(ann_file.resolve()), "ann_stat": ann_stat,
            "ann_problems": [[p.image_id, p.message] for p in ann_problems],
            "summary": summary, "image_list": [[im.image_id, im.file_name, im.height, im.width] for im in images],
            "images": _kept(results)})
    return SplitCheck(ann_file, image_root, problems, summary, decoded=decoded)


def check_label_split(source: str | Path, image_root: str | Path, items: list[tuple[Any, Path, Path]],
                      num_classes: int, ignore_index: int, *, cache_dir: Path | None = None,
                      workers: int | None = None) -> SplitCheck:
    """Check a split of images with label-map PNGs (segmentation's semantic_dir and VOC layouts):
    ``items`` are (image id, image file, label file); each pair is decoded fully once
    (:func:`label_map_problems`). ``source`` names the split in messages and skip lists (the label
    folder, or VOC's list file). Cached like :func:`check_split`: a pair is decoded again when
    either file's size or modification time, or the classes, change."""
    source, image_root = Path(source), Path(image_root)
    cache_file = _cache_path(Path(cache_dir or default_cache_dir()), source, image_root)
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    old = cache.get("images", {}) if cache.get("version") == CACHE_VERSION else {}
    results, decoded = _cached_checks(
        [(str(image), [*_stat(image), *_stat(label), num_classes, ignore_index],
          partial(label_map_problems, image, label, i, num_classes, ignore_index)) for i, image, label in items],
        old, workers)
    problems = [Problem(str(source), i, m) for i, image, _ in items for m in results[str(image)][-1]]
    _write_cache(cache_file, {"version": CACHE_VERSION, "source": str(source.resolve()), "images": _kept(results)})
    return SplitCheck(source, image_root, problems, {"images": len(items), "classes": num_classes},
                      decoded=decoded)


def _cached_checks(jobs: list[tuple[str, list, Callable[[], list[str]]]], old: dict,
                   workers: int | None) -> tuple[dict[str, list], int]:
    """Run ``jobs`` (name, key, check) in threads, reusing a cached entry ``[*key, problems]``
    while its key (file sizes and modification times, what the file is checked against) is the
    same. Returns ({name: [*key, problems]}, how many checks ran)."""
    results, todo = {}, []
    for name, key, check in jobs:
        entry = old.get(name)
        if entry and entry[:-1] == key:
            results[name] = entry
        else:
            todo.append((name, key, check))
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        results.update(pool.map(lambda job: (job[0], [*job[1], job[2]()]), todo))
    return results, len(todo)


def _kept(results: dict[str, list]) -> dict[str, list]:
    """The entries worth caching: every file they name exists (a missing one is looked at again)."""
    return {k: v for k, v in results.items() if -1 not in v[:-1]}


def _write_cache(path: Path, obj: dict) -> None:
    """Atomic write; a cache that cannot be written only costs the next run the check again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, path)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# what the tools call


@dataclass
class CheckResult:
    """The image ids to leave out, per annotation file (empty when nothing is skipped)."""

    skip: dict[str, set] = field(default_factory=dict)

    def skip_ids(self, ann_file: str | Path) -> set:
        return self.skip.get(str(ann_file), set())


def check_splits(splits: list[tuple[str | Path, str | Path]], *, skip_bad_images: bool = False,
                 run_dir: Path | None = None, cache_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> CheckResult:
    """Check the COCO splits (annotation JSON, image folder) before any work: :func:`report_checks`
    of :func:`check_split` on each."""
    return report_checks(lambda: [check_split(a, i, cache_dir=cache_dir) for a, i in splits],
                         skip_bad_images=skip_bad_images, run_dir=run_dir, log=log)


def report_checks(make_checks: Callable[[], list[SplitCheck]], *, skip_bad_images: bool = False,
                  run_dir: Path | None = None, log: Callable[[str], None] = print) -> CheckResult:
    """Run ``make_checks`` (the splits' :func:`check_split` or :func:`check_label_split`) and act on it.

    Prints one line per split. With problems: unless ``skip_bad_images``, print every problem
    (one line each, to stderr) and raise one DatasetError; when skipping, leave out the images
    concerned and list them in ``run_dir/skipped_images.txt`` (printed when there is no run
    folder). A problem of the whole file (its layout, a missing image folder) cannot be skipped.
    Under torch.distributed rank 0 checks and every rank gets the same answer.
    """
    from common.engine import distributed as dist

    if dist.is_distributed():  # rank 0 checks (and writes); every rank gets its answer or its error
        outcome = None
        if dist.is_main_process():
            try:
                outcome = (_report(make_checks(), skip_bad_images, run_dir, log), None)
            except DatasetError as e:
                outcome = (None, str(e))
        result, problem = dist.broadcast_object(outcome)
        if problem:
            raise DatasetError(problem)
        return result
    return _report(make_checks(), skip_bad_images, run_dir, log)


def _report(checks: list[SplitCheck], skip_bad_images, run_dir, log) -> CheckResult:
    result = CheckResult()
    for c in checks:
        n_images = c.summary.get("images", 0) if c.summary else 0
        how = f"{c.decoded} images decoded" if c.decoded else "cached"
        log(f"dataset check: {c.ann_file}: {n_images} images, {len(c.problems) or 'no'} problem"
            f"{'s' if len(c.problems) != 1 else ''} ({how})")
    problems = [p for c in checks for p in c.problems]
    if not problems:
        return result
    fatal = [p for p in problems if p.image_id is None]
    if fatal or not skip_bad_images:
        for p in problems:
            print(f"problem: {p.message}", file=sys.stderr)
        files = sorted({p.file for p in problems})
        hint = "fix them" if fatal else "fix them or set data.skip_bad_images=true to leave those images out"
        raise DatasetError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {', '.join(files)} "
                           f"(listed above, one per line); {hint}")
    for p in problems:
        result.skip.setdefault(p.file, set()).add(p.image_id)
    lines = [f"{p.message}" for p in problems]
    n = sum(len(v) for v in result.skip.values())
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "skipped_images.txt").write_text("\n".join(lines) + "\n")
        log(f"dataset check: skipping {n} bad image{'s' if n > 1 else ''} (data.skip_bad_images=true); "
            f"the list is in {run_dir / 'skipped_images.txt'}")
    else:
        log(f"dataset check: skipping {n} bad image{'s' if n > 1 else ''} (data.skip_bad_images=true):")
        for line in lines:
            log(f"  skipped: {line}")
    return result
