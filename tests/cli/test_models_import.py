"""`medops models fetch` + `medops models import txv:NAME`, then a real `medops serve` answers
for a real chest X-ray with TorchXRayVision's 18 findings (real subprocesses, real HTTP)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from medops.project import Project
from medops.train import txv
from tests.agent.conftest import MEDOPS
from tests.e2e.conftest import ServeProcess, servers
from tests.train.txv_files import write_weights

pytest.importorskip("torchxrayvision", reason="the txv extra is not installed")
pytestmark = pytest.mark.slow  # three CLI processes and a server: about a minute on two cores

__all__ = ["servers"]
NAME = "densenet121-res224-all"
XRAYS = (Path(__file__).parents[2] / "../shared/data/xray").resolve()


def medops(root: Path, *args: str) -> Any:
    done = subprocess.run([MEDOPS, *args, "-C", str(root), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_import_then_serve_answers_with_18_findings(
        tmp_path: Path, servers: Callable[[Path], ServeProcess]) -> None:
    root = tmp_path / "proj"
    Project.init(root, name="xray-seed")
    weights = write_weights(NAME, tmp_path / "downloads")
    info = txv.weights_info(f"txv:{NAME}")

    fetched = medops(root, "models", "fetch", str(weights))
    imported = medops(root, "models", "import", f"txv:{NAME}", "--approve", "--by", "Dr. Lee",
                      "--note", "the seed X-ray model")
    assert imported["weights_sha256"] == fetched["sha256"]
    assert imported["findings"] == info.findings and len(info.findings) == 18
    assert imported["approval"] == "approved" and imported["version"] == "1"
    (listed,) = medops(root, "models", "ls")
    assert listed["live"] and listed["tags"]["source"] == f"txv:{NAME}"

    server = servers(root)
    thresholds = imported["thresholds"]
    for path, kind in ((XRAYS / "00000001_000.png", "image/png"),
                       (XRAYS / "Fake_MONOHR1.dcm", "application/dicom")):
        r = httpx.post(f"{server.url}/v1/models/{imported['name']}/predict",
                       content=path.read_bytes(), headers={"content-type": kind}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == "1"
        (answer,) = body["predictions"]
        probs = answer["probabilities"]
        assert list(probs) == info.findings
        assert all(0.0 <= p <= 1.0 for p in probs.values())
        # the positive findings at the stored thresholds (TorchXRayVision's operating points)
        positive = [f for f in info.findings if probs[f] >= thresholds[f]]
        assert answer["findings"] == positive
        assert answer["label"] == ("|".join(sorted(positive)) if positive else "No Finding")
