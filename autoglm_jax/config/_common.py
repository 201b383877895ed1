"""Helpers shared by the config dataclasses: strict construction from dicts and validation."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config file or dict is invalid; the message names the source and the field."""


def check(condition: bool, source: str, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: field `{field}`: {message}")


def _coerce(value: Any, annotation: Any, source: str, field: str) -> Any:
    """Turn TOML/JSON values into the annotated type (lists to tuples, nested dataclasses)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], source, field)
        return value
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return from_dict(annotation, value, source=f"{source}.{field}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: field `{field}`: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, source, field) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, bool, str):
        if annotation is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(
                f"{source}: field `{field}`: expected {annotation.__name__}, got {value!r}"
            )
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and coercing types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown} for {cls.__name__}")
    kwargs = {k: _coerce(v, hints[k], source, k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{source}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass to a TOML/JSON-friendly dict (tuples become lists, None dropped)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        out[f.name] = v
    return out


def read_toml(path: str | Path, what: str = "file") -> dict[str, Any]:
    """A TOML file as a dict; a missing file ("PATH: <what> not found") or bad syntax names
    the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
