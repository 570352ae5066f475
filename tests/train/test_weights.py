"""The weights store (real downloads from a loopback HTTP server, then offline), the loader that
never runs pickled code, and how a file's weights fit a network (head or backbone)."""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from medops.config.enums import Architecture
from medops.errors import ConfigError, WeightsUnavailableError
from medops.train import ModelSpec, build_model
from medops.train.weights import (
    WeightsStore,
    head_of,
    load_into,
    load_state_dict,
    resolve,
    sha256_file,
)
from tests.servers.http import serve_in_thread


class _Files(BaseHTTPRequestHandler):
    """GET /NAME answers the bytes the test put under NAME, else 404."""

    fake: dict[str, bytes]

    def do_GET(self) -> None:
        body = self.fake.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "no such file")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _net(width: int = 8, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def _weights_bytes(tmp_path: Path) -> bytes:
    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    torch.save(_net().state_dict(), path)
    return path.read_bytes()


@pytest.fixture
def store(tmp_path: Path) -> WeightsStore:
    return WeightsStore.for_project(tmp_path / "proj")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}
    with serve_in_thread(_Files, files) as url:
        yield url, files


def test_a_pinned_url_is_downloaded_once_then_served_offline(
        tmp_path: Path, store: WeightsStore) -> None:
    blob = _weights_bytes(tmp_path)
    sha = hashlib.sha256(blob).hexdigest()
    with serve_in_thread(_Files, {"net-v1.pt": blob}) as url:
        path = store.fetch(f"{url}/net-v1.pt", sha)
    assert path == tmp_path / "proj" / ".medops" / "weights" / sha
    assert path.read_bytes() == blob
    assert store.find("net-v1.pt") == path  # by its own file name too
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []
    # the server is gone: the store answers
    assert store.fetch(f"{url}/net-v1.pt", sha) == path
    assert torch.equal(load_state_dict(path)["0.weight"], torch.load(path)["0.weight"])


def test_proxies_are_read_at_each_download(tmp_path: Path, store: WeightsStore,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """urlopen's shared opener keeps the proxy settings of its first use in the process (here
    a dead proxy, as another library's download under other settings would leave it); the
    store reads the settings of the moment."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # restored after the test
    with monkeypatch.context() as then:
        for var in ("HTTP_PROXY", "http_proxy"):
            then.setenv(var, "http://127.0.0.1:9")
        urllib.request.install_opener(urllib.request.build_opener())
    blob = _weights_bytes(tmp_path)
    with serve_in_thread(_Files, {"w.pt": blob}) as url:
        path = store.fetch(f"{url}/w.pt", hashlib.sha256(blob).hexdigest(), timeout=5)
    assert path.read_bytes() == blob


def test_offline_the_error_says_which_file_to_place_where(
        tmp_path: Path, store: WeightsStore) -> None:
    with serve_in_thread(_Files, {}) as url:
        pass  # stopped: its port refuses connections
    sha = "ab" * 32
    with pytest.raises(WeightsUnavailableError) as info:
        store.fetch(f"{url}/densenet.pt", sha, timeout=5)
    text = str(info.value)
    assert f"cannot download {url}/densenet.pt" in text and "offline" in text
    assert f"copy it to {store.root / sha}" in text
    assert f"medops models fetch ./densenet.pt --sha256 {sha}" in text
    assert not store.has(sha)


def test_a_wrong_hash_is_refused_and_not_kept(
        tmp_path: Path, store: WeightsStore, server: tuple[str, dict[str, bytes]]) -> None:
    url, files = server
    files["w.pt"] = blob = _weights_bytes(tmp_path)
    pinned = "0" * 64
    with pytest.raises(WeightsUnavailableError) as info:
        store.fetch(f"{url}/w.pt", pinned)
    assert hashlib.sha256(blob).hexdigest() in str(info.value) and pinned in str(info.value)
    assert not store.root.exists() or list(store.root.iterdir()) == []

    with pytest.raises(WeightsUnavailableError, match=r"answered 404"):
        store.fetch(f"{url}/missing.pt", pinned)
    with pytest.raises(ConfigError, match=r"pinned"):
        store.fetch(f"{url}/w.pt")


def test_a_local_file_is_copied_in_and_checked(tmp_path: Path, store: WeightsStore) -> None:
    local = tmp_path / "mine.pt"
    local.write_bytes(_weights_bytes(tmp_path))
    sha = sha256_file(local)
    assert store.fetch(str(local)) == store.path(sha)
    assert store.find("mine.pt") == store.path(sha)
    assert store.add(b"abc", "tiny.bin") == hashlib.sha256(b"abc").hexdigest()
    assert store.find("tiny.bin") == store.path(hashlib.sha256(b"abc").hexdigest())
    assert store.find("nothing.pt") is None
    with pytest.raises(WeightsUnavailableError, match=rf"SHA-256 {sha}, not the expected"):
        store.fetch(str(local), "1" * 64)
    assert not store.has("1" * 64)


def test_a_file_placed_by_hand_under_the_wrong_hash_is_refused(
        tmp_path: Path, store: WeightsStore) -> None:
    sha = "2" * 64
    store.root.mkdir(parents=True)
    store.path(sha).write_bytes(b"not those weights")
    with pytest.raises(WeightsUnavailableError, match=r"not the file pinned by that hash"):
        store.fetch("https://example.invalid/w.pt", sha)


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle-2", "pickle-5", "torch.save"])
def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    if writer.startswith("pickle"):
        evil.write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=int(writer[-1])))
    else:
        torch.save({"0.weight": torch.zeros(1), "x": _Payload(marker)}, evil)
    # protocol 5 is refused before the call is reached (an opcode the loader does not take)
    says = "Unsupported operand" if writer == "pickle-5" else "needs the Python global .*system"
    with pytest.raises(WeightsUnavailableError,
                       match=rf"cannot be read as plain PyTorch weights and was refused.*{says}"):
        load_state_dict(evil)
    # the built-in torchvision path reads weights through the same loader
    spec = ModelSpec(Architecture.RESNET18, 1, 2, small_input=True)
    with pytest.raises(WeightsUnavailableError, match=r"was refused"):
        build_model(spec, weights=evil)
    assert not marker.exists()


def test_allowed_classes_and_checkpoint_dicts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _net()
    whole = tmp_path / "whole.pt"
    torch.save(net, whole)  # a pickled module, as TorchXRayVision ships its DenseNets
    with pytest.raises(WeightsUnavailableError, match=r"was refused"):
        load_state_dict(whole)
    allowed = [nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d,
               nn.Flatten, nn.Linear]
    state = load_state_dict(whole, allowed=allowed)
    assert torch.equal(state["5.weight"], net.state_dict()["5.weight"])

    wrapped = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, wrapped)
    assert set(load_state_dict(wrapped)) == set(net.state_dict())

    notes = tmp_path / "notes.pt"
    torch.save({"epoch": 3}, notes)
    with pytest.raises(WeightsUnavailableError, match=r"not a state dict"):
        load_state_dict(notes)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file")
    with pytest.raises(WeightsUnavailableError, match=r"was refused.*Unsupported operand"):
        load_state_dict(garbage)
    with pytest.raises(WeightsUnavailableError, match=r"does not exist"):
        load_state_dict(tmp_path / "absent.pt")


def test_a_new_head_is_reinitialised_and_reported() -> None:
    torch.manual_seed(0)
    source = _net(classes=14)
    target = _net(classes=3)
    fresh_head = target.state_dict()["5.weight"].clone()
    assert head_of(target) == "5"
    report = load_into(target, source.state_dict(), source="chest14.pt")
    assert report.reinitialised == ["5.weight", "5.bias"]
    assert "0.weight" in report.loaded and report.ignored == []
    assert torch.equal(target.state_dict()["0.weight"], source.state_dict()["0.weight"])
    assert torch.equal(target.state_dict()["5.weight"], fresh_head)


def test_a_different_backbone_is_refused_naming_the_layers() -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_into(_net(width=8), _net(width=16).state_dict(), source="other.pt")
    text = str(info.value)
    assert "do not fit the network's backbone" in text and "other.pt" in text
    assert "0.weight: file (16, 1, 3, 3), network (8, 1, 3, 3)" in text
    assert "Only the head (5) may differ" in text

    partial = {k: v for k, v in _net().state_dict().items() if not k.startswith("1.")}
    with pytest.raises(WeightsUnavailableError, match=r"1\.weight: not in the file"):
        load_into(_net(), partial, source="partial.pt")


def test_resolve_checks_local_files_against_their_pin(tmp_path: Path,
                                                      store: WeightsStore) -> None:
    root = tmp_path / "proj"
    (root / "weights").mkdir(parents=True)
    (root / "weights" / "mine.pt").write_bytes(_weights_bytes(tmp_path))
    found = resolve("weights/mine.pt", None, root=root, store=store)
    assert found is not None and found.path == root / "weights" / "mine.pt"
    assert found.lineage() == {"sha256": sha256_file(found.path), "source": "weights/mine.pt"}
    assert resolve(None, None, root=root, store=store) is None
    with pytest.raises(WeightsUnavailableError, match=r"not the pinned model\.weights_sha256"):
        resolve("weights/mine.pt", "3" * 64, root=root, store=store)
    with pytest.raises(WeightsUnavailableError, match=r"does not exist"):
        resolve("weights/other.pt", None, root=root, store=store)
