"""Where the parallel work runs: ``make_executor`` picks a backend by ``executor.kind``."""

from __future__ import annotations

from collections.abc import Callable

from medops.config.enums import ExecutorKind
from medops.config.schema import ExecutorConfig
from medops.errors import ConfigError
from medops.executor.base import Executor
from medops.executor.local import LocalExecutor
from medops.executor.serial import SerialExecutor

__all__ = ["Executor", "LocalExecutor", "SerialExecutor", "make_executor"]


def _local(cfg: ExecutorConfig) -> Executor:
    return LocalExecutor(workers=cfg.workers)


def _serial(cfg: ExecutorConfig) -> Executor:
    return SerialExecutor()


def _spark(cfg: ExecutorConfig) -> Executor:
    from medops.executor.spark import SparkExecutor  # pyspark itself loads on first use

    return SparkExecutor(cfg.master, cfg.conf, parallelism=cfg.workers)


# One builder per kind; a new backend registers here and imports its heavy parts lazily.
_BACKENDS: dict[str, Callable[[ExecutorConfig], Executor]] = {
    ExecutorKind.LOCAL.value: _local,
    ExecutorKind.SERIAL.value: _serial,
    ExecutorKind.SPARK.value: _spark,
}


def make_executor(cfg: ExecutorConfig) -> Executor:
    """The executor ``cfg.kind`` names; ConfigError listing the known kinds otherwise."""
    kind = str(cfg.kind)
    builder = _BACKENDS.get(kind)
    if builder is None:
        known = ", ".join(sorted(_BACKENDS))
        raise ConfigError(f"unknown executor.kind {kind!r}; known kinds: {known}")
    return builder(cfg)
