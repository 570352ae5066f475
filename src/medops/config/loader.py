"""Load medops.yaml into a validated :class:`MedopsConfig`, with errors a person can act on."""

from __future__ import annotations

import difflib
from enum import Enum
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from medops.config.schema import MedopsConfig
from medops.errors import ConfigError

CONFIG_FILE = "medops.yaml"


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> MedopsConfig:
    """Read and validate ``path``; ``overrides`` (dotted keys: ``train.epochs``) go on top."""
    if not path.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} at {path}; create one with `medops init {path.parent}`"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return parse_config(raw, origin=str(path))


def parse_config(raw: dict[str, Any], origin: str = CONFIG_FILE) -> MedopsConfig:
    """Validate an already-parsed mapping."""
    try:
        return MedopsConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``train.epochs=5`` -> ("train.epochs", 5), the value parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=5), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``raw["train"]["epochs"] = value`` for ``dotted`` "train.epochs", sections made as needed."""
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def _describe(err: Any) -> str:
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    key = ".".join(p for p in loc if not p.isdigit()) or "(top level)"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        options = _field_names(loc[:-1])
        hint = _nearest(loc[-1], options)
        return f"{key}: unknown key{hint}"
    choices = _enum_choices(loc)
    if choices and isinstance(value, str):
        return f"{key}: {value!r} is not one of {sorted(choices)}{_nearest(value, choices)}"
    return f"{key}: {err['msg']} (got {value!r})"


def _nearest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = MedopsConfig
    for part in loc:
        field = _field(model, part)
        if field is None:
            return None
        nested = [a for a in _flatten(field.annotation) if isinstance(a, type)]
        sub = next((a for a in nested if issubclass(a, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return model


def _field(model: type[BaseModel], name: str) -> Any:
    for fname, info in model.model_fields.items():
        if name in (fname, info.alias):
            return info
    return None


def _field_names(loc: list[str]) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _enum_choices(loc: list[str]) -> list[str]:
    model = _model_at(loc[:-1])
    field = _field(model, loc[-1]) if model else None
    if field is None:
        return []
    choices: list[str] = []
    for arg in _flatten(field.annotation):
        if isinstance(arg, type) and issubclass(arg, Enum):
            choices += [str(m.value) for m in arg]
        elif isinstance(arg, str):
            choices.append(arg)
    return choices


def _flatten(annotation: Any) -> list[Any]:
    args = get_args(annotation)
    if not args:
        return [annotation]
    out: list[Any] = []
    for a in args:
        out += _flatten(a)
    return out
