"""Load medops.yaml into a validated :class:`MedopsConfig`, with errors a person can act on."""

from __future__ import annotations

import difflib
import math
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
    return parse_config(raw, origin=str(path), overrides=overrides)


def parse_config(raw: dict[str, Any], origin: str = CONFIG_FILE,
                 overrides: dict[str, Any] | None = None) -> MedopsConfig:
    """Validate an already-parsed mapping; ``overrides`` (the --set values applied to ``raw``)
    are named in place of ``origin`` when they hold the bad value."""
    try:
        return MedopsConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err, overrides or {}) for err in exc.errors()]
    if all(line.startswith("--set ") for line in lines):
        # the file is fine: naming it would send the user looking for a mistake it does not hold
        raise ConfigError("\n".join(lines))
    where = f"{origin} (with the --set overrides)" if overrides else origin
    raise ConfigError(f"{where} is invalid:\n  " + "\n  ".join(lines))


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


def _describe(err: Any, overrides: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    key = ".".join(p for p in loc if not p.isdigit()) or "(top level)"
    # an override of the key itself, or of a whole section holding it
    dotted = next((d for d in overrides if key == d or key.startswith(d + ".")), None)
    if dotted is None:
        return f"{key}: {_problem(err, loc)}"
    problem = _problem(err, loc) if key == dotted else f"{key}: {_problem(err, loc)}"
    return f"--set {dotted}={_yaml_text(overrides[dotted])}: {problem}"


def _problem(err: Any, loc: list[str]) -> str:
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        options = _field_names(loc[:-1])
        hint = _nearest(loc[-1], options)
        return f"unknown key{hint}"
    choices = _enum_choices(loc)
    if choices and isinstance(value, str):
        return f"{value!r} is not one of {sorted(choices)}{_nearest(value, choices)}"
    if err["type"] == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
        # medops's own validators mostly name the value already, and a section's validator
        # names its fields: a "(got ...)" would repeat it or dump the whole section
        if isinstance(value, dict) or "(got " in msg or repr(value) in msg:
            return msg
        return f"{msg} (got {value!r})"
    return f"{err['msg']} (got {value!r})"


def _yaml_text(value: Any) -> str:
    """``value`` written as on the command line (the inverse of :func:`parse_override`)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix(
        "\n...\n").strip()


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
    if not loc:  # a validator of the whole config (one that relates several sections)
        return []
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
