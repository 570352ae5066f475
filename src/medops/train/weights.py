"""Pretrained weights: a content-addressed store, a loader that never runs pickled code, and the
rules for fitting a file's weights into a network.

* :class:`WeightsStore` keeps files under ``<project>/.medops/weights/<sha256>``; a file is
  found by its hash, or by the file name it was added under (``by-name/<name>`` holds the hash).
  :meth:`WeightsStore.fetch` downloads a URL pinned by its SHA-256 (streamed to a temporary file,
  checked, then moved in: a file with another hash is never kept) or copies a local file in.
  Without network the error names the file to download and the exact path to put it at.
* :func:`load_state_dict` reads a file with ``torch.load(weights_only=True)``: tensors, plain
  containers and the classes a caller names in ``allowed`` (``torch.serialization.safe_globals``);
  a file that would run code when unpickled is refused.
* :func:`load_into` fits a state dict into a network. The head (its last ``nn.Linear``, else its
  last layer with parameters) may differ: it keeps its fresh initialisation, the usual
  transfer-learning case, and the report lists it. Anything else that differs is an error
  naming the layers.
* :func:`resolve` turns ``model.weights`` / ``model.weights_sha256`` into a local, verified file.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medops.config.models import is_url
from medops.errors import ConfigError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: Where a project keeps its weights store, relative to the project root.
STORE_DIR = Path(".medops") / "weights"
BY_NAME = "by-name"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: State-dict prefixes added by wrappers: a medops-trained WrappedClassifier, DataParallel.
_WRAPPER_PREFIXES = ("net.", "module.")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha(value: str) -> str:
    sha = value.strip().lower()
    if not _SHA256.match(sha):
        raise ConfigError(f"{value!r} is not a SHA-256 (64 hexadecimal digits)")
    return sha


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"{name!r} is not a file name (no folders, not empty)")
    return name


class WeightsStore:
    """Weight files named by their SHA-256 under ``root``, with an index by file name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_project(cls, project_root: Path) -> WeightsStore:
        return cls(project_root.resolve() / STORE_DIR)

    def path(self, sha256: str) -> Path:
        """Where the file with this hash is (or goes): ``<root>/<sha256>``."""
        return self.root / _check_sha(sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def find(self, name: str) -> Path | None:
        """The stored file last added under the file name ``name``, None if there is none."""
        index = self.root / BY_NAME / _check_name(name)
        if not index.is_file():
            return None
        try:
            found = self.path(index.read_text().strip())
        except ConfigError:
            return None
        return found if found.is_file() else None

    def add(self, source: Path | bytes, name: str | None = None, *,
            sha256: str | None = None) -> str:
        """Copy a file (or bytes) into the store, indexed under ``name`` when given (by default
        a file's own name); its SHA-256. With ``sha256`` a file with another hash is refused
        and nothing is kept."""
        expected = _check_sha(sha256) if sha256 else None
        if isinstance(source, Path):
            if not source.is_file():
                raise WeightsUnavailableError(f"{source} is not a file; give the path of the "
                                              "weights file to add")
            name = name if name is not None else source.name
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp()
        try:
            if isinstance(source, Path):
                shutil.copyfile(source, tmp)
            else:
                tmp.write_bytes(source)
            got = sha256_file(tmp)
            what = str(source) if isinstance(source, Path) else f"{len(source)} bytes"
            if expected is not None and got != expected:
                raise WeightsUnavailableError(
                    f"{what} has SHA-256 {got}, not the expected {expected}; it was not added "
                    "to the weights store. Check that it is the right file, or the hash")
            tmp.replace(self.root / got)
        finally:
            tmp.unlink(missing_ok=True)
        if name:
            self._index(name, got)
        return got

    def fetch(self, source: str, sha256: str | None = None, *, name: str | None = None,
              timeout: float = 60.0) -> Path:
        """The stored file for ``source``: an http(s) URL pinned by ``sha256`` (downloaded when
        the store does not hold it yet) or a local path (copied in; checked when ``sha256`` is
        given). Indexed under ``name``, by default the URL's or the file's own name."""
        if source.startswith("file://"):
            source = urllib.parse.unquote(urllib.parse.urlparse(source).path)
        if not is_url(source):
            path = Path(source).expanduser()
            return self.path(self.add(path, name if name is not None else path.name,
                                      sha256=sha256))
        if not sha256:
            raise ConfigError(f"{source} has no SHA-256 to check it against: a downloaded "
                              "file is only used when pinned (fix: --sha256 HEX, or "
                              "model.weights_sha256 in medops.yaml)")
        sha = _check_sha(sha256)
        name = name if name is not None else _url_name(source)
        if self.has(sha):
            self.verify(sha)
            if name:
                self._index(name, sha)
            return self.path(sha)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp()
        try:
            got = self._download(source, sha, name, tmp, timeout)
            if got != sha:
                raise WeightsUnavailableError(
                    f"{source} was downloaded but its SHA-256 is {got}, not the pinned {sha}; "
                    "the file was not kept. Check the URL and the hash (model.weights_sha256 "
                    "or --sha256)")
            tmp.replace(self.path(sha))
        finally:
            tmp.unlink(missing_ok=True)
        if name:
            self._index(name, sha)
        log.info("stored %s as %s", source, self.path(sha))
        return self.path(sha)

    def verify(self, sha256: str) -> Path:
        """The stored file of ``sha256`` after checking its content has that hash (a file
        placed by hand may be the wrong one)."""
        path = self.path(sha256)
        if not path.is_file():
            raise WeightsUnavailableError(f"the weights store has no file {path}")
        got = sha256_file(path)
        if got != path.name:
            raise WeightsUnavailableError(
                f"{path} has SHA-256 {got}, not {path.name} (its name): it is not the file "
                f"pinned by that hash. Delete it and place the right file there, or run "
                f"`medops models fetch SOURCE --sha256 {path.name}`")
        return path

    def _download(self, url: str, sha: str, name: str | None, tmp: Path,
                  timeout: float) -> str:
        digest = hashlib.sha256()
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "medops"})
            # a fresh opener reads the proxy settings now: urlopen's shared one keeps those of
            # its first use in the process, which may be another library's
            opener = urllib.request.build_opener()
            with opener.open(request, timeout=timeout) as answer, tmp.open("wb") as f:
                for chunk in iter(lambda: answer.read(_CHUNK), b""):
                    digest.update(chunk)
                    f.write(chunk)
        except urllib.error.HTTPError as e:
            raise WeightsUnavailableError(
                f"cannot download {url}: the server answered {e.code} {e.reason}; "
                f"{self._place_hint(url, sha, name)}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise WeightsUnavailableError(
                f"cannot download {url} ({reason}): this machine may be offline; "
                f"{self._place_hint(url, sha, name)}") from None
        return digest.hexdigest()

    def _place_hint(self, url: str, sha: str, name: str | None) -> str:
        local = f"./{name}" if name else "./FILE"
        return (f"fix: download {url} elsewhere and copy it to {self.path(sha)}, or copy it to "
                f"this machine and run `medops models fetch {local} --sha256 {sha}`")

    def _index(self, name: str, sha: str) -> None:
        folder = self.root / BY_NAME
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(sha + "\n")
        tmp.replace(folder / _check_name(name))

    def _tmp(self) -> Path:
        return self.root / f".partial-{uuid.uuid4().hex}"


def _url_name(url: str) -> str | None:
    tail = urllib.parse.unquote(urllib.parse.urlparse(url).path).rstrip("/").rsplit("/", 1)[-1]
    return tail if tail and tail not in (".", "..") else None


@dataclass(frozen=True)
class ResolvedWeights:
    """``model.weights`` made local and verified: the file, its hash and what was configured."""

    path: Path
    sha256: str
    source: str

    def lineage(self) -> dict[str, str]:
        return {"sha256": self.sha256, "source": self.source}


def resolve(weights: str | None, sha256: str | None, *, root: Path,
            store: WeightsStore) -> ResolvedWeights | None:
    """``model.weights`` as a local file: a URL is served from ``store`` (downloaded when
    missing), a path is relative to the project ``root``; when ``sha256`` is set the file must
    have it. None when no weights are configured."""
    if not weights:
        return None
    if is_url(weights):
        if not sha256:
            raise ConfigError(f"model.weights is the URL {weights!r} but model.weights_sha256 "
                              "is not set; a downloaded file is only used when pinned")
        return ResolvedWeights(store.fetch(weights, sha256), _check_sha(sha256), weights)
    path = Path(weights).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise WeightsUnavailableError(
            f"model.weights {weights!r}: {path} does not exist; fix: put the weights file "
            "there, set model.weights to its path (relative paths start at the project "
            "folder), or to an http(s) URL with model.weights_sha256")
    got = sha256_file(path)
    if sha256 and got != _check_sha(sha256):
        raise WeightsUnavailableError(
            f"model.weights {path} has SHA-256 {got}, not the pinned model.weights_sha256 "
            f"{_check_sha(sha256)}; refusing it. Check the file, or update the pin")
    return ResolvedWeights(path, got, weights)


def load_state_dict(path: Path, *, allowed: Iterable[Any] = ()) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read with ``torch.load(weights_only=True)``.

    ``allowed``: extra classes the file may hold (``torch.serialization.safe_globals``), e.g.
    the module classes of a file that pickles a whole network, whose state dict is returned.
    A checkpoint dict holding its weights under ``state_dict``, ``model_state_dict`` or
    ``model`` is unwrapped."""
    import torch

    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            # a plain pickle of another protocol gets a warning before it is checked
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsUnavailableError(
            f"weights file {path} cannot be read as plain PyTorch weights and was refused "
            "(medops reads weights only with torch.load(weights_only=True), which never runs "
            f"code from a file): {_refusal(e)}. Weights are saved as a state dict: "
            "torch.save(model.state_dict(), PATH), from code you trust") from None
    except Exception as e:  # truncated, not a PyTorch file, wrong format: the same to a user
        raise WeightsUnavailableError(
            f"weights file {path} cannot be read as PyTorch weights "
            f"({type(e).__name__}: {_first_line(e)})") from None
    return _as_state_dict(obj, path)


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch
    from torch import nn

    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
            if isinstance(inner, Mapping) and _all_tensors(inner):
                return dict(inner)
        if obj and _all_tensors(obj):
            return {str(k): v for k, v in obj.items()}
        others = sorted({type(v).__name__ for v in obj.values()
                         if not isinstance(v, torch.Tensor)})
        raise WeightsUnavailableError(
            f"weights file {path} holds a dict that is not a state dict (keys "
            f"{list(obj)[:5]}, values of type {others}); save model.state_dict()")
    raise WeightsUnavailableError(
        f"weights file {path} holds a {type(obj).__name__}, not a state dict; save "
        "model.state_dict()")


def _all_tensors(d: Mapping[Any, Any]) -> bool:
    import torch

    return all(isinstance(v, torch.Tensor) for v in d.values())


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_into` did: entries loaded, head entries left at their fresh
    initialisation (their shape differs, or the file lacks them), and entries of the file the
    network has no place for."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def head_of(net: nn.Module) -> str:
    """The name of a network's head: its last ``nn.Linear``, else its last layer with
    parameters (registration order); '' when it has no parameters."""
    from torch import nn

    named = list(net.named_modules())
    linears = [n for n, m in named if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    leaves = [n for n, m in named if n and not list(m.children())
              and any(True for _ in m.parameters(recurse=False))]
    return leaves[-1] if leaves else ""


def load_into(net: nn.Module, state: Mapping[str, torch.Tensor], *, source: str,
              head: str | None = None) -> LoadReport:
    """Load ``state`` into ``net``: every entry must fit except the head's (``head``, by
    default :func:`head_of`), which then keeps its fresh initialisation. Keys prefixed ``net.``
    (a medops-trained model) or ``module.`` (DataParallel) fit too."""
    own = net.state_dict()
    state = _strip_wrapper_prefix(state, own)
    head = head_of(net) if head is None else head

    def in_head(key: str) -> bool:
        return bool(head) and (key == head or key.startswith(head + "."))

    differ = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    bad = [k for k in differ + missing if not in_head(k)]
    if bad:
        shown = "; ".join(
            f"{k}: file {tuple(state[k].shape)}, network {tuple(own[k].shape)}" if k in state
            else f"{k}: not in the file" for k in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise WeightsUnavailableError(
            f"weights from {source} do not fit the network's backbone: {shown}{more}. Only "
            f"the head ({head or 'none'}) may differ, and is then re-initialised; fix: use "
            "weights of the same network (same architecture, model.args and in_channels)")
    fits = {k: v for k, v in state.items() if k in own and k not in differ}
    net.load_state_dict(fits, strict=False)
    report = LoadReport(source=source, loaded=sorted(fits),
                        reinitialised=[k for k in own if k in differ or k in missing],
                        ignored=sorted(k for k in state if k not in own))
    if report.reinitialised:
        log.info("weights from %s: head re-initialised (%s)", source,
                 ", ".join(report.reinitialised))
    if report.ignored:
        log.warning("weights from %s: %d entr(ies) the network has no place for, ignored: %s",
                    source, len(report.ignored), ", ".join(report.ignored[:5]))
    return report


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor],
                          own: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    best = dict(state)
    best_hits = sum(k in own for k in best)
    for prefix in _WRAPPER_PREFIXES:
        stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
        hits = sum(k in own for k in stripped)
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def _refusal(e: BaseException) -> str:
    """What torch's weights-only unpickler refused (it names the global), without its advice
    to load the file with ``weights_only=False``."""
    found = re.search(r"(?:unsupported GLOBAL|Unsupported global:)\s*(?:GLOBAL\s*)?([\w.]+)",
                      str(e))
    if found:
        return f"it needs the Python global {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
    return found.group(1).strip() if found else _first_line(e)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ".join(lines[:2])[:400]
