"""Dataclass configs: strict dict/YAML loading, dotted overrides, and dumping.

Every component owns a small `@dataclass` config. This module turns plain dicts (from JSON, YAML
or a checkpoint) into those dataclasses and back, with two rules users rely on:

* an unknown key is an error that names its full dotted path and suggests the closest field;
* a value of the wrong type is an error naming the field, what was expected and what was found.

Overrides use the dotted form of litgpt/nanoGPT recipes: ``--model.image.mode=anyres``; the value
is parsed as YAML, so ``3``, ``1e-5``, ``true``, ``[1, 2]`` and ``null`` all mean what they say.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from .errors import ConfigError
from .registry import suggest

C = TypeVar("C")


def from_dict(cls: type[C], data: Any, path: str = "") -> C:
    """Build dataclass `cls` from `data`, strictly (unknown keys and wrong types raise)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping for {cls.__name__}, got {_kind(data)}")
    if callable(getattr(cls, "variant", None)):  # a registry of config classes, chosen by the data
        cls = cls.variant(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        where = f"{path}.{key}" if path else key
        raise ConfigError(f"unknown config key {where!r}{suggest(key, list(fields))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{path}.{name}" if path else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"{path}.{missing[0]}" if path else missing[0]
        raise ConfigError(f"missing required config key {where!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a class's own check: "field: what is wrong" gets the path
        text = str(err)
        if text.split(":", 1)[0] in fields:
            raise ConfigError(f"{path}.{text}" if path else text) from None
        raise ConfigError(f"{path or cls.__name__}: {err}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain JSON/YAML-able dict; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict:
    """Read a YAML recipe; a missing file or a non-mapping top level is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such recipe file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {_kind(data)}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (a copy); values are parsed as YAML."""
    out = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = _child(node, part, key)
        value = yaml.safe_load(raw) if raw else ""
        if isinstance(node, list):
            node[_index(node, parts[-1], key)] = value
        else:
            node[parts[-1]] = value
    return out


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {key!r}: {part!r} is not an index of a {len(node)}-item list")
    return int(part)


def _child(node, part: str, key: str):
    """The section `part` of `node` (a dict key, created if missing, or a list index)."""
    if isinstance(node, list):
        return node[_index(node, part, key)]
    child = node.setdefault(part, {})
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"override {key!r}: {part!r} is not a section")
    return child


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def _kind(value: Any) -> str:
    return (
        f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__
    )


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check/convert `value` against annotation `tp`; raise ConfigError naming `path`."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {_kind(value)} fits none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(repr, typing.get_args(tp)))
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_kind(value)}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_kind(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    return _coerce_scalar(tp, value, path)


def _coerce_scalar(tp: type, value: Any, path: str) -> Any:
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{path}: expected int, got {_kind(value)}")
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {tp.__name__}, got {_kind(value)}")
