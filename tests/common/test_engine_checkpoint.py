"""Checkpoints: atomic writes, safe loading, architecture mismatches, RNG states."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from common.engine import (CheckpointError, get_rng_state, load_checkpoint, load_model_state,
                           save_checkpoint, seed_everything, set_rng_state)


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "ckpt.pth"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "iteration": 7, "name": "x"})
    state = load_checkpoint(path)
    assert state["iteration"] == 7 and state["name"] == "x"
    assert torch.equal(state["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temp file left


def test_a_crash_mid_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model_0000010.pth"
    save_checkpoint(path, {"w": torch.ones(4)})

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # some bytes reach the disk, then the crash
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"w": torch.zeros(4)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["model_0000010.pth"]


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nothing\.pth does not exist"):
        load_checkpoint(tmp_path / "nothing.pth")


def test_corrupt_and_truncated_checkpoints_are_named(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"checkpoint .*garbage\.pth is corrupt or not a torch file"):
        load_checkpoint(garbage)
    noise = tmp_path / "noise.pth"  # random bytes: torch's own message suggests weights_only=False
    noise.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(noise)
    assert str(err.value) == (f"checkpoint {noise} is corrupt or not a torch file (not a checkpoint, "
                              "or one cut off while it was written)")
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"w": torch.randn(1000)})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth is corrupt"):
        load_checkpoint(truncated)


class NotAllowed:
    pass


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"obj": NotAllowed()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"checkpoint {path} holds Python objects other than tensors, numbers, "
                                     "strings, lists and dicts (")
    assert str(err.value).endswith("); it was not written by this toolkit")
    assert "weights_only" not in str(err.value) and "NotAllowed" in str(err.value)


def test_other_architecture_lists_missing_unexpected_and_shape_keys():
    saved = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(2, 2)).state_dict()
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    saved.pop("1.bias")
    with pytest.raises(CheckpointError) as err:
        load_model_state(model, saved, "run/model_final.pth")
    msg = str(err.value)
    assert msg.startswith("run/model_final.pth does not fit Sequential (another architecture?)")
    assert "1 missing: 1.bias" in msg
    assert "2 unexpected: 2.weight, 2.bias" in msg
    assert "0.weight (8, 4) vs model (6, 4)" in msg and "1.weight (2, 8) vs model (2, 6)" in msg
    assert "3 with a different shape" in msg


def test_matching_state_loads_and_ddp_prefix_is_stripped():
    src = nn.Linear(3, 2)
    dst = nn.Linear(3, 2)
    load_model_state(dst, {f"module.{k}": v for k, v in src.state_dict().items()}, "x.pth")
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    seed_everything(3)
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint(tmp_path / "rng.pth", {"rng": [state]})
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_seed_everything_deterministic_switch():
    try:
        seed_everything(1, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        # warn, not raise, where a kernel has no deterministic version (CUDA RoIAlign backward)
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
        a = torch.rand(3)
        seed_everything(1)
        assert torch.equal(a, torch.rand(3))
    finally:
        torch.use_deterministic_algorithms(False)


def test_checkpoint_task_tells_detection_from_segmentation():
    from common.engine.checkpoint import CheckpointError, checkpoint_task

    assert checkpoint_task({"metadata": {"dataset": {"class_names": ["a"]}}}, "d.pth") == "detection"
    assert checkpoint_task({"config_yaml": "model:\n  arch: unet\n"}, "s.pth") == "segmentation"
    assert checkpoint_task({"config_yaml": "model:\n  rpn: {}\n"}, "old.pth") == "detection"
    assert checkpoint_task({"model": {}}, "bare.pth", default="detection") == "detection"
    with pytest.raises(CheckpointError, match=r"checkpoint bare.pth has neither dataset metadata"):
        checkpoint_task({"model": {}}, "bare.pth")
