"""Configs are dataclasses with defaults, a YAML file that holds only what differs, and
``key=value`` overrides from the command line.

    cfg = load_config(DetConfig, "configs/detection/mask_rcnn_R18_FPN_shapes.yaml",
                      ["solver.max_iters=100", "model.backbone.freeze_at=2"])

Rules:
- an unknown key (in the YAML or in an override) is an error naming the key and where it came from;
- a value of the wrong type is an error naming the key, the value and the expected type;
- override values are parsed as YAML scalars/lists (``lr=1e-3``, ``sizes=[32,64]``, ``x=null``);
- only ``build.py`` modules read configs; everything else takes plain arguments.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says which key and why."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls()`` then apply the YAML at ``path`` (if any) and the ``key=value`` overrides."""
    cfg = cls()
    if path is not None:
        for data, source in _read_yaml(Path(path)):
            cfg = merge(cfg, data, source=source)
    for item in overrides or []:
        cfg = apply_override(cfg, item)
    return cfg


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[dict, str]]:
    """The mappings to merge for the YAML at ``path``, with their sources: those of the file named
    by its ``_base_`` key (relative to it) first, recursively, then its own."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the _base_ of {chain[-1]})" if chain else ""))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return [(data, str(path))]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: _base_ must be the path of another YAML, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in chain + (path,)}:
        raise ConfigError(f"{path}: _base_ {base!r} leads back to a file already in the chain")
    return _read_yaml(base_path, chain + (path,)) + [(data, str(path))]


def apply_override(cfg: T, item: str) -> T:
    """Apply one ``a.b.c=value`` override."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return merge(cfg, nested, source="command line")


def merge(cfg: T, data: dict, source: str, prefix: str = "") -> T:
    """Return a copy of dataclass ``cfg`` with the mapping ``data`` applied, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown config key '{full}' (known keys here: {known})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, source, prefix=full + ".")
        else:
            changes[key] = _coerce(value, hints[key], full, source)
    return dataclasses.replace(cfg, **changes)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against a type hint; int->float and list->tuple are converted."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            try:
                return _coerce(value, a, key, source)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{source}: '{key}' = {value!r} does not match {_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: '{key}' = {value!r} must be null")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: '{key}' = {value!r} must be one of {list(args)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a list ({_name(hint)})")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{source}: '{key}' = {value!r} must have {len(args)} items")
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a mapping")
        return dict(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be an integer")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a string")
        return value
    return value


def _name(hint: Any) -> str:
    """How a type reads in an error message: 'int', "bool | 'eval'"."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def stored_config(cls: type[T], state: dict, checkpoint: str | Path, config: str | Path | None = None,
                  overrides: list[str] | tuple[str, ...] = (), retired_keys: tuple[str, ...] = ()) -> T:
    """The config of a checkpoint: ``config`` (a YAML path) if given, else the YAML text the
    training tool stored in ``state["config_yaml"]``; the ``key=value`` overrides on top.
    Top-level ``retired_keys`` (settings older versions stored) are dropped from the stored text."""
    if config is not None:
        return load_config(cls, config, list(overrides))
    if not state.get("config_yaml"):
        from common.engine.checkpoint import CheckpointError

        raise CheckpointError(f"checkpoint {checkpoint} stores no config; pass --config")
    source = f"the config stored in {checkpoint}"
    try:
        data = yaml.safe_load(state["config_yaml"]) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a mapping")
    cfg = merge(cls(), {k: v for k, v in data.items() if k not in retired_keys}, source=source)
    for item in overrides:
        cfg = apply_override(cfg, item)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a dataclass config (tuples become lists, for YAML)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, loadable again by :func:`load_config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))
