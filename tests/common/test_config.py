from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from common.config import ConfigError, load_config, to_yaml


@dataclass
class Inner:
    lr: float = 0.1  # learning rate
    steps: tuple[int, ...] = (10, 20)  # decay points
    name: Literal["sgd", "adamw"] = "sgd"
    weights: Optional[str] = None
    layout: bool | Literal["eval"] = False  # a union with a literal: its error names both
    betas: tuple[float, float] = (0.9, 0.999)  # fixed-length tuple


@dataclass
class Outer:
    solver: Inner = field(default_factory=Inner)
    size: int = 160
    mults: dict = field(default_factory=dict)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("solver:\n  lr: 1\n  steps: [5, 7]\nsize: 128\n")
    cfg = load_config(Outer, p, ["solver.betas=[0.5, 1]", "solver.name=adamw", "solver.weights=/w.pth", "mults={a: 0.1}"])
    assert cfg.solver.lr == 1.0 and isinstance(cfg.solver.lr, float)
    assert cfg.solver.steps == (5, 7)
    assert cfg.size == 128
    assert cfg.solver.name == "adamw"
    assert cfg.solver.weights == "/w.pth"
    assert cfg.mults == {"a": 0.1}
    assert cfg.solver.betas == (0.5, 1.0)
    assert load_config(Outer, None, ["solver.lr=1e-3"]).solver.lr == 0.001  # YAML 1.1 reads 1e-3 as text
    with pytest.raises(ConfigError, match="must have 2 items"):
        load_config(Outer, None, ["solver.betas=[1, 2, 3]"])


def test_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["solver.lr=0.5"])
    p = tmp_path / "r.yaml"
    p.write_text(to_yaml(cfg))
    assert load_config(Outer, p) == cfg


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("solver:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'solver.lrr'"):
        load_config(Outer, p)


def test_base_yaml_is_merged_first_and_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("solver:\n  lr: 1\n  name: adamw\nsize: 128\n")
    (tmp_path / "sub" / "mid.yaml").write_text("_base_: ../base.yaml\nsolver:\n  lr: 2\n")
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("_base_: mid.yaml\nsize: 96\n")
    cfg = load_config(Outer, child, ["solver.steps=[3]"])
    assert (cfg.solver.lr, cfg.solver.name, cfg.size, cfg.solver.steps) == (2.0, "adamw", 96, (3,))



@pytest.mark.parametrize("files, message", [
    ({"c.yaml": "_base_: b.yaml\nsolver:\n  lrr: 1\n", "b.yaml": "size: 1\n"}, r"c.yaml: unknown config key 'solver.lrr'"),
    ({"c.yaml": "_base_: gone.yaml\n"}, r"config file not found: .*gone.yaml \(the _base_ of .*c.yaml\)"),
    ({"c.yaml": "_base_: b.yaml\n", "b.yaml": "_base_: c.yaml\n"}, r"b.yaml: _base_ 'c.yaml' leads back"),
    ({"c.yaml": "_base_: 3\n"}, r"c.yaml: _base_ must be the path of another YAML, got 3"),
])
def test_bad_base_yaml_names_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, tmp_path / "c.yaml")


def test_unknown_override_and_bad_types():
    with pytest.raises(ConfigError, match="unknown config key 'sise'"):
        load_config(Outer, None, ["sise=3"])
    with pytest.raises(ConfigError, match=r"'size' = 'big' must be an integer"):
        load_config(Outer, None, ["size=big"])
    with pytest.raises(ConfigError, match=r"must be one of \['sgd', 'adamw'\]"):
        load_config(Outer, None, ["solver.name=adam"])
    assert load_config(Outer, None, ["solver.layout=eval"]).solver.layout == "eval"
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, ["solver.layout=yes please"])
    assert str(e.value) == "command line: 'solver.layout' = 'yes please' does not match bool | 'eval'"
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Outer, None, ["size"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, "/nope.yaml")
