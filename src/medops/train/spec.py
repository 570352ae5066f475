"""What it takes to rebuild a network (not its weights): stored with every model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medops.config.enums import Task
from medops.config.models import check_architecture
from medops.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """``architecture`` is a built-in name, ``txv:NAME`` or an entry point (see
    :mod:`medops.config.models`); ``args`` are the entry point's keyword arguments
    (``model.args``); ``origin`` says where an entry point's code came from (a project file or
    an installed package and its version), for lineage and for loading elsewhere.

    ``code_root`` is where this machine finds an entry point's project code (a
    ``path/in/project.py:factory`` file, or a package folder of the project): the project root
    when training, ``<model>/code`` in a packaged model. It is local, so :meth:`to_dict` leaves
    it out and equality ignores it."""

    architecture: str
    in_channels: int
    num_classes: int
    small_input: bool
    flip_tta: bool = False
    # models saved before the small-input stem kept the max-pool were built without it
    small_input_pool: bool = True
    task: Task = Task.MULTICLASS
    args: Mapping[str, Any] = field(default_factory=dict)
    origin: Mapping[str, str] = field(default_factory=dict)
    code_root: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3 (got {self.in_channels})")
        least = 1 if self.task is Task.MULTILABEL else 2
        if self.num_classes < least:
            what = "findings" if self.task is Task.MULTILABEL else "classes"
            raise ConfigError(f"a {self.task} model needs at least {least} {what} "
                              f"(got {self.num_classes})")
        try:
            # a plain str, even when given an Architecture member
            object.__setattr__(self, "architecture", check_architecture(str(self.architecture)))
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` reads it back."""
        return {"architecture": self.architecture, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "small_input": self.small_input,
                "flip_tta": self.flip_tta, "small_input_pool": self.small_input_pool,
                "task": self.task.value, "args": dict(self.args), "origin": dict(self.origin)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, code_root: Path | None = None) -> ModelSpec:
        """Read a dict written by :meth:`to_dict` (or by an older medops); ``code_root``: where
        an entry point's project code lies on this machine."""
        try:
            return cls(
                architecture=str(data["architecture"]),
                in_channels=int(data["in_channels"]),
                num_classes=int(data["num_classes"]),
                small_input=bool(data["small_input"]),
                # absent from specs written before test-time flips existed
                flip_tta=bool(data.get("flip_tta", False)),
                small_input_pool=bool(data.get("small_input_pool", False)),
                task=Task(data.get("task", Task.MULTICLASS.value)),
                args=dict(data.get("args") or {}),
                origin=dict(data.get("origin") or {}),
                code_root=code_root,
            )
        except KeyError as e:
            raise ConfigError(f"model spec {dict(data)!r} lacks the key {e}") from e
        except ValueError as e:
            raise ConfigError(f"model spec {dict(data)!r} is invalid: {e}") from e
