"""tools/compute_proposals.py: a proposal file for a split, recall printed, stale files refused."""
import json

import tool_helpers

from detection.proposals import load_proposals, read_header


def test_writes_proposals_reuses_them_and_refuses_a_stale_file(shapes_dir, tmp_path, capsys):
    tool = tool_helpers.load_tool("compute_proposals")
    out = tmp_path / "val_fast.json"
    args = ["--data", str(shapes_dir), "--split", "val", "--limit", "2", "--out", str(out), "--no-progress"]
    assert tool.main(args) == 0
    text = capsys.readouterr().out
    assert "2 images in" in text and "recall@0.5" in text and "MABO" in text
    proposals = load_proposals(out)
    val = json.loads((shapes_dir / "val.json").read_text())
    ids = sorted(im["id"] for im in val["images"])[:2]
    assert sorted(proposals) == ids
    sizes = {im["id"]: (im["width"], im["height"]) for im in val["images"]}
    for i, p in proposals.items():
        assert 0 < len(p["boxes"]) <= 2000
        assert (p["boxes"][:, 2] <= sizes[i][0]).all() and (p["boxes"][:, 3] <= sizes[i][1]).all()
    header = read_header(out)
    assert header["mode"] == "fast" and header["image_ids"] == ids and header["max_proposals"] == 2000

    assert tool.main(args) == 0  # same settings: reused
    assert "reusing it" in capsys.readouterr().out
    assert tool.main(args + ["--mode", "quality"]) == 2
    assert "was made in mode 'fast', not 'quality'" in capsys.readouterr().err
    assert tool.main(args[:4] + ["--limit", "3"] + args[6:]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compute_proposals: error: proposal file") and "made for another image set: it lacks image id" in err


def test_bad_data_folder_is_one_line(tmp_path, capsys):
    tool = tool_helpers.load_tool("compute_proposals")
    assert tool.main(["--data", str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2
    assert capsys.readouterr().err == (f"compute_proposals: error: annotation file {tmp_path / 'val.json'} does not "
                                       "exist (--data must hold val.json and val/)\n")


def test_does_not_load_torch(shapes_dir, tmp_path):
    """Its wall time, start-up included, is what the benchmark compares with OpenCV: torch's import
    (seconds) has no part in selective search."""
    import subprocess
    import sys

    code = ("import runpy, sys; tool = runpy.run_path(sys.argv[1]); "
            "rc = tool['main'](sys.argv[2:]); print(rc, 'torch' in sys.modules)")
    tool = tool_helpers.ROOT / "tools" / "compute_proposals.py"
    args = ["--data", str(shapes_dir), "--split", "val", "--limit", "1", "--out", str(tmp_path / "p.json"),
            "--no-progress"]
    done = subprocess.run([sys.executable, "-c", code, str(tool), *args], capture_output=True, text=True,
                          cwd=tool_helpers.ROOT)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr
