"""Typed, frozen stage configs read from ``params.yaml``.

Every stage has one frozen dataclass; each field carries a help text in ``metadata["help"]``. Loading a
section checks it strictly: an unknown key, a missing required key or a value of the wrong type raises
``ConfigError`` naming the section and the key. Overrides ``section.key=value`` (the CLI's ``--set``,
Prefect flow parameters) are parsed as YAML scalars and applied before validation.

    cfg = build_config(PrepareConfig, read_params(Path("params.yaml"))["prepare"], "prepare")
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from components.platform.errors import ConfigError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text; mutable defaults (lists, dicts) are copied per instance."""
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(
            default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def section(cls: type, *, help: str) -> Any:
    """A nested config section whose defaults come from ``cls``."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def read_params(path: Path) -> dict[str, Any]:
    """Read params.yaml as a mapping of sections; a missing or malformed file is a ConfigError."""
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``params`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    result = _deep_copy(params)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if len(keys) < 2 or not all(keys):
            raise ConfigError(f"override {item!r}: expected section.key=value")
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:  # an absent or null section (``hf: null``) takes overrides like an empty one
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def build_config(cls: type[T], data: Any, where: str) -> T:
    """Build the frozen dataclass ``cls`` from ``data``, naming ``where`` (e.g. ``prepare.file``) on error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(fields))})")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name in data:
            values[name] = coerce_value(hints[name], data[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    return cls(**values)


def coerce_value(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint``; ints are accepted where floats are expected."""
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(a) for a in get_args(hint))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        errors = []
        for arg in get_args(hint):
            if arg is type(None):
                continue
            try:
                return coerce_value(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_hint, *_) = get_args(hint) or (Any,)
        items = [coerce_value(item_hint, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_hint, val_hint = get_args(hint) or (Any, Any)
        return {
            coerce_value(key_hint, k, where): coerce_value(val_hint, v, f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)  # type: ignore[arg-type]
    return _coerce_scalar(hint, value, where)


_FLOAT_TEXT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _coerce_scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads ``1e-3`` (no dot) as a string
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field of ``cls``, nested sections included.

    An optional section (``FileSourceConfig | None``) gets a row of its own and then its keys.
    """
    rows: list[tuple[str, str, str]] = []
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, key + "."))  # type: ignore[arg-type]
            continue
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, field.metadata.get("help", "")))
        if get_origin(hint) in (typing.Union, types.UnionType):
            for arg in get_args(hint):
                if dataclasses.is_dataclass(arg):
                    rows.extend(describe(arg, key + "."))  # type: ignore[arg-type]
    return rows


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain-dict view of a config (for logging and MLflow params)."""
    return dataclasses.asdict(cfg)
