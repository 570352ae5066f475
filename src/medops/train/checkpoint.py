"""Training checkpoints: written atomically every epoch, resumed only when they match the run.

A checkpoint is a plain dict of tensors and primitives (so it loads with ``weights_only=True``,
which runs no pickled code). Its fingerprint hashes what decides the result of a run: the model
spec, the training and model config (minus the device and thread count, which do not), and the
sizes of the two sets plus a sample of their contents. A checkpoint with another fingerprint
belongs to another run and is ignored.

Writes go through a :class:`CheckpointWriter`: the state is copied (a memory copy, several times
cheaper than the write) and written by a background thread while the next epoch trains, so on
small data sets, where an epoch takes seconds, checkpointing costs almost no training time. The
price: a process killed during epoch N+1 may find epoch N's write unfinished and resume after
epoch N-1.

The weights of the kept best epochs (which the trainer averages) lie beside the checkpoint, one
file per epoch (``last.kept-0007.pt``), each written once, when its epoch joins them; the
checkpoint names them. Rewriting them inside it every epoch would more than double what each
epoch writes (resnet18: 402 MB instead of 180).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medops.config.schema import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
#: Bumped when the checkpoint layout changes, so an old file is ignored rather than misread, or
#: what its scores mean (5: validation without the flip average), so a run does not mix them.
FORMAT_VERSION = 5

#: Rows of the data hashed into the fingerprint: enough to tell data sets apart, cheap for 1e6.
_SAMPLED_ROWS = 64


def _data_digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((x.shape, x.dtype.str)).encode())
    h.update(np.ascontiguousarray(y).tobytes())
    step = max(1, len(x) // _SAMPLED_ROWS)
    h.update(np.ascontiguousarray(x[::step]).tobytes())
    return h.hexdigest()


def fingerprint(
    spec: Mapping[str, Any],
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
) -> str:
    """A hex digest of everything that decides the outcome of a training run."""
    payload = {
        "format": FORMAT_VERSION,
        "spec": dict(spec),
        # applied to the result after training, from the checkpoint: a change needs no retraining
        "train": cfg.model_dump(mode="json", exclude={"device", "num_threads", "recalibrate_bn"}),
        "model": model_cfg.model_dump(mode="json"),
        "n_train": len(train[1]),
        "n_val": len(val[1]),
        "train_data": _data_digest(*train),
        "val_data": _data_digest(*val),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) generator states, as tensors and primitives."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def kept_file(path: Path, epoch: int) -> Path:
    """Where the weights of kept ``epoch`` lie beside the checkpoint ``path``."""
    return path.with_name(f"{path.stem}.kept-{epoch:04d}{path.suffix}")


def save_checkpoint(
    path: Path, payload: Mapping[str, Any], new_kept: Mapping[int, Mapping[str, Any]]
) -> None:
    """Write the weights of the epochs that joined the kept ones (``new_kept``, by epoch), then
    ``payload``, whose ``kept`` entries name every kept epoch; then remove the files of epochs
    no longer kept. Each file is replaced atomically, so a killed process leaves a checkpoint
    whose kept files are all there."""
    for epoch, state in new_kept.items():
        _save_atomic(
            kept_file(path, epoch),
            {"fingerprint": payload["fingerprint"], "epoch": epoch, "state": state},
        )
    _save_atomic(path, payload)
    named = {kept_file(path, int(k["epoch"])) for k in payload["kept"]}
    for old in path.parent.glob(f"{path.stem}.kept-*{path.suffix}"):
        if old not in named:
            old.unlink(missing_ok=True)


def _save_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a killed process leaves the old file or the new.

    There is no fsync: it would cost more than the rest of the write, and after a power cut the
    worst case is an unreadable file, which :func:`load_checkpoint` ignores (training restarts).
    Nor is there a CRC32 of every tensor (half the CPU time of the write): a torn file cannot
    replace a whole one, and an unreadable one is ignored all the same.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _without_crc32():
            torch.save(dict(payload), tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _without_crc32() -> Any:
    try:  # torch >= 2.6; older releases always compute it
        from torch.utils.serialization import config
    except ImportError:
        return nullcontext()
    return config.patch({"save.compute_crc32": False})  # type: ignore[attr-defined]


def snapshot(value: Any) -> Any:
    """A copy of ``value`` whose tensors (on the CPU) no later training step can change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(snapshot(v) for v in value)
    return value


class CheckpointWriter:
    """Writes checkpoints one at a time in a background thread (see the module docstring).

    ``submit`` waits for the previous write, snapshots the payload (not ``new_kept``, which the
    caller promises never to change) and returns; ``wait`` blocks until the last write
    is on disk and raises its error, if any.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(
        self,
        path: Path,
        payload: Mapping[str, Any],
        new_kept: Mapping[int, Mapping[str, Any]],
    ) -> None:
        self.wait()
        copy = {k: snapshot(v) for k, v in payload.items()}
        self._thread = threading.Thread(
            target=self._write, args=(path, copy, new_kept), name="medops-checkpoint", daemon=True
        )
        self._thread.start()

    def _write(
        self, path: Path, payload: Mapping[str, Any], new_kept: Mapping[int, Mapping[str, Any]]
    ) -> None:
        try:
            save_checkpoint(path, payload, new_kept)
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @contextmanager
    def open(self) -> Iterator[CheckpointWriter]:
        """The writer; on leaving, the last write is finished (its error raised only when the
        block itself did not fail, so a training error is never masked by a write error)."""
        try:
            yield self
        except BaseException:
            if self._thread is not None:
                self._thread.join()
            raise
        self.wait()


def load_checkpoint(path: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this run, else None (and why, in the log)."""
    for stale in path.parent.glob(f".{path.stem}*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: start over rather than fail
        log.warning("ignoring checkpoint %s: it cannot be read (%s)", path, e)
        return None
    if not _this_format(payload):
        log.warning("ignoring checkpoint %s: written by another medops version", path)
        return None
    if payload.get("fingerprint") != expected_fingerprint:
        log.warning(
            "ignoring checkpoint %s: it belongs to another run (the model, training config or "
            "data changed since it was written); training starts from scratch",
            path,
        )
        return None
    for kept in payload["kept"]:
        state = _load_kept(path, int(kept["epoch"]), expected_fingerprint)
        if state is None:
            return None
        kept["state"] = state
    return payload


def _load_kept(path: Path, epoch: int, fingerprint: str) -> dict[str, Any] | None:
    file = kept_file(path, epoch)
    try:
        kept = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # deleted or truncated by hand: the run cannot be resumed exactly
        log.warning("ignoring checkpoint %s: its kept weights %s cannot be read (%s); training "
                    "starts from scratch", path, file, e)
        return None
    if not isinstance(kept, dict) or kept.get("fingerprint") != fingerprint \
            or kept.get("epoch") != epoch:
        log.warning("ignoring checkpoint %s: %s belongs to another run; training starts from "
                    "scratch", path, file)
        return None
    state: dict[str, Any] = kept["state"]
    return state


def prune_checkpoints(root: Path, keep: Path) -> list[Path]:
    """Remove the checkpoint folders under ``root`` (one per training) that can no longer be
    resumed, all but ``keep``: those of a finished training, and those this version cannot read
    (another format, or unreadable). A folder still training, or interrupted, stays, so its run
    can be resumed. The folders removed.

    Without this, every training a project ever ran leaves its checkpoint behind: an agent
    retraining on new data accumulates one per run (hundreds of MB each for a resnet18).
    """
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        path = folder / CHECKPOINT_FILE
        if folder.resolve() == keep.resolve() or not path.is_file() or _resumable(path):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def discard_checkpoint(folder: Path) -> bool:
    """Remove the checkpoint folder of a training that will not be resumed. A finished one
    stays: an unchanged re-run reuses it, and :func:`prune_checkpoints` removes it once a newer
    training finishes. Whether the folder was removed."""
    if not folder.is_dir() or _flags(folder / CHECKPOINT_FILE).get("finished"):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def _resumable(path: Path) -> bool:
    flags = _flags(path)
    return bool(flags) and not flags.get("finished")


def _flags(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` if this version can read it, else an empty dict."""
    try:  # mmap: the flags are read without reading the tensors
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    return payload if _this_format(payload) else {}


def _this_format(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT_VERSION
