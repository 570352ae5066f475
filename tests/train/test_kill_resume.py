"""A training process killed with SIGKILL resumes from its last checkpoint when started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from medops.config.enums import Architecture, Device
from medops.config.schema import ModelConfig, TrainConfig
from medops.train import ArrayData, ModelSpec, train_model

def data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 1, 16, 16)).astype(np.float32)
    x[:, :, 2:7, 2:7] += 1.5 * y[:, None, None, None]
    return ArrayData(x, y)

spec = ModelSpec(Architecture.RESNET18, 1, 2, small_input=False)
cfg = TrainConfig(epochs=8, batch_size=16, lr=3e-3, patience=10, device=Device.CPU, num_threads=1,
                  average_best=2)
result = train_model(
    spec, data(64, 0), data(32, 1), cfg, ModelConfig(), checkpoint_dir=Path(sys.argv[1]),
    on_epoch=lambda r: print(f"EPOCH {r.epoch}", flush=True), progress=False,
)
print("RESULT " + json.dumps({
    "resumed": result.resumed_from_epoch,
    "epochs": [h.epoch for h in result.history],
    "losses": [h.train_loss for h in result.history],
    "val_aucs": [h.val_auc for h in result.history],
    "best_epoch": result.best_epoch,
    "averaged": result.averaged_epochs,
    "weights": float(sum(v.double().sum() for v in result.model.state_dict().values())),
}), flush=True)
"""


def _finish(script: Path, ckpt: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ckpt = tmp_path / "ckpt"
    deadline = time.monotonic() + 240
    with subprocess.Popen(
        [sys.executable, str(script), str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            # epoch 2 is reported once epoch 1's checkpoint is on disk (epoch 2's is written in
            # the background while epoch 3 trains); the kill lands during epoch 3
            for line in proc.stdout:
                if line.strip() == "EPOCH 2":
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                assert time.monotonic() < deadline, "the child never finished epoch 2"
            else:
                pytest.fail("the child ended before epoch 2")
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (ckpt / "last.pt").is_file()

    resumed = _finish(script, ckpt)
    assert resumed["resumed"] is not None and 1 <= resumed["resumed"] < 8
    assert resumed["epochs"] == list(range(1, 9))

    # the resumed run saw the same batches and augmentations as one that was never killed
    uninterrupted = _finish(script, tmp_path / "fresh")
    assert uninterrupted["resumed"] is None
    assert resumed["losses"] == pytest.approx(uninterrupted["losses"], rel=1e-4)
    # and it validated the same weight average (the EMA is part of the checkpoint)
    assert resumed["val_aucs"] == pytest.approx(uninterrupted["val_aucs"], abs=1e-6)
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    # and returned the same average of its best epochs (the kept weights are checkpointed too)
    assert resumed["averaged"] == uninterrupted["averaged"] and len(resumed["averaged"]) == 2
    assert resumed["weights"] == pytest.approx(uninterrupted["weights"], rel=1e-5)

    again = _finish(script, ckpt)  # finished: returns at once, nothing trained
    assert again["resumed"] == 8 and again["losses"] == resumed["losses"]
