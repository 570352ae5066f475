"""Networks from a user's code: ``model.architecture: package.module:factory`` or
``path/in/project.py:factory`` (the contract is in docs/models.md).

The factory is called as ``factory(in_channels=C, num_classes=K, **model.args)`` and returns an
``nn.Module`` whose ``forward`` maps images (N, C, H, W) to logits (N, K); a factory with no
``num_classes`` parameter but an ``out_channels`` one (MONAI's networks) gets K as
``out_channels``. The network is wrapped in a :class:`~medops.train.classifier.WrappedClassifier`.

Where the code is found:

* ``path/in/project.py:factory``: the file, relative to ``spec.code_root`` (the project folder
  when training; ``<model>/code`` in a packaged model, where the file travels). It is loaded
  by path under a module name made from its content hash, so two versions of one file never
  mix in one process, and it may import installed packages only.
* ``package.module:factory``: imported as usual; a package that is not installed is looked for
  in ``spec.code_root`` too (a package folder of the project, shipped with the model like a file).

:func:`origin` says which, for lineage and packaging: ``{"kind": "file", "path", "sha256"}``
(a project file, or a project package folder), ``{"kind": "package", "package", "version"}``
(an installed distribution) or ``{"kind": "module", "module"}`` (importable here, but from
neither: not shipped).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import pkgutil
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from medops.config.models import ENTRY_POINT, is_builtin, is_txv
from medops.errors import ConfigError
from medops.train.classifier import Classifier, WrappedClassifier
from medops.train.spec import ModelSpec

log = logging.getLogger(__name__)

#: Folders never searched for the nearest file names.
_SKIP_DIRS = {".git", ".medops", ".venv", "venv", "__pycache__", "node_modules", "data", "mlruns"}
_MAX_CANDIDATES = 2000


@dataclass(frozen=True)
class EntryPoint:
    """``module:attr`` where ``module`` is a dotted module name or a ``.py`` path."""

    text: str
    module: str
    attr: str

    @classmethod
    def parse(cls, text: str) -> EntryPoint:
        m = ENTRY_POINT.match(text.strip())
        if m is None:
            raise ConfigError(f"{text!r} is not an entry point: write 'package.module:factory' "
                              "or 'path/in/project.py:factory'")
        return cls(text.strip(), m.group("module"), m.group("attr"))

    @property
    def is_file(self) -> bool:
        return self.module.endswith(".py")

    def file(self, root: Path | None) -> Path:
        """The file, under ``root``: a file entry point is always relative to the project
        folder (where it is found again in a packaged model)."""
        path = Path(self.module)
        if path.is_absolute() or self.module.startswith("~") or ".." in path.parts:
            raise ConfigError(f"entry point {self.text!r}: write the file's path relative to "
                              "the project folder, inside it (e.g. models/mynet.py:build), so "
                              "it travels with the model")
        if root is None:
            raise ConfigError(f"entry point {self.text!r} names a file relative to the project "
                              "folder, but no project folder was given to find it in")
        return root / path


def build(spec: ModelSpec, *, weights: Path | None) -> Classifier:
    """The network ``spec.architecture`` names, with ``weights`` (a state dict of that network,
    or of a medops model trained from it) loaded when given."""
    ep = EntryPoint.parse(spec.architecture)
    factory = resolve_factory(ep, spec.code_root, spec.origin)
    net = call_factory(ep, factory, spec)
    if weights is not None:
        from medops.train.weights import load_into, load_state_dict

        load_into(net, load_state_dict(weights), source=str(weights))
    return WrappedClassifier(spec, net)


def check_architecture_exists(architecture: str, root: Path) -> None:
    """Raise the ConfigError :func:`build` would, for a missing module, file or factory (or an
    unknown TorchXRayVision name), without building anything: a run checks this before its
    first step instead of failing at training."""
    if is_txv(architecture):
        from medops.train import txv

        txv.weights_info(architecture)
    elif ENTRY_POINT.match(architecture) and not is_builtin(architecture):
        resolve_factory(EntryPoint.parse(architecture), root.resolve())


def call_factory(ep: EntryPoint, factory: Any, spec: ModelSpec) -> Any:
    """``factory(in_channels=, num_classes=, **args)`` checked to be an ``nn.Module``."""
    from torch import nn

    classes_arg = _classes_parameter(factory)
    given = {"in_channels": spec.in_channels, classes_arg: spec.num_classes}
    clash = sorted(set(given) & set(spec.args))
    if clash:
        raise ConfigError(f"model.args sets {', '.join(clash)} for {ep.text}; medops sets "
                          "these from the data: remove them from model.args")
    kwargs = {**given, **spec.args}
    try:
        net = factory(**kwargs)
    except Exception as e:
        raise ConfigError(
            f"entry point {ep.text} raised {type(e).__name__}: {e} when called with "
            f"{_call_text(kwargs)}; its parameters are {_signature(factory)}") from e
    if not isinstance(net, nn.Module):
        raise ConfigError(f"entry point {ep.text} returned {_describe(net)}, not a "
                          "torch.nn.Module; the factory must return the network")
    return net


def resolve_factory(ep: EntryPoint, root: Path | None,
                    recorded: Mapping[str, str] | None = None) -> Any:
    """The callable ``ep`` names; a ConfigError naming what was found and the nearest names.
    ``recorded``: the origin the model was trained with (a file that differs is logged)."""
    module = _load_file(ep, root, recorded) if ep.is_file else _import(ep, root)
    obj: Any = module
    path = module.__name__ if not ep.is_file else ep.module
    for part in ep.attr.split("."):
        if not hasattr(obj, part):
            names = _public_names(obj)
            raise ConfigError(f"entry point {ep.text}: {path} has no attribute {part!r}"
                              f"{_nearest(part, names)}")
        obj = getattr(obj, part)
        path = f"{path}.{part}"
    if not callable(obj):
        raise ConfigError(f"entry point {ep.text}: {path} is {_describe(obj)}, not a callable "
                          "that returns a network")
    return obj


def origin(architecture: str, root: Path) -> dict[str, str]:
    """Where ``architecture``'s code comes from (see the module docstring); {} for built-in
    and TorchXRayVision architectures."""
    if not ENTRY_POINT.match(architecture) or architecture.startswith("txv:"):
        return {}
    ep = EntryPoint.parse(architecture)
    root = root.resolve()
    if ep.is_file:
        file = ep.file(root).resolve()
        if not file.is_file():
            _load_file(ep, root, None)  # raises the error naming the nearest files
        return {"kind": "file", "path": _relative(file, root), "sha256": _sha256(file)}
    top = ep.module.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top) or []
    if dists:
        dist = dists[0]
        return {"kind": "package", "package": dist,
                "version": importlib.metadata.version(dist)}
    where = _module_path(_import(EntryPoint(ep.text, top, ep.attr), root))
    if where is not None and _is_under(where, root):
        return {"kind": "file", "path": _relative(where, root), "sha256": _sha256(where)}
    log.warning("%s comes from %s, neither a project file nor an installed package: it is not "
                "shipped with the model", ep.text, where or "an unknown place")
    return {"kind": "module", "module": top}


def code_files(origin: Mapping[str, str], root: Path) -> Path | None:
    """The project file or package folder an ``origin`` of kind ``file`` names, under
    ``root``; None for other kinds. Its content must still have the recorded hash."""
    if not origin or origin.get("kind") != "file":
        return None
    path = root / origin["path"]
    if not path.exists():
        raise ConfigError(f"{origin['path']} is not in {root}: the model's network code "
                          "cannot be packaged")
    got = _sha256(path)
    if got != origin.get("sha256"):
        raise ConfigError(
            f"{origin['path']} changed since the model was trained (SHA-256 {got}, trained "
            f"with {origin.get('sha256')}); train again so the model and its code match")
    return path


def _load_file(ep: EntryPoint, root: Path | None,
               recorded: Mapping[str, str] | None) -> ModuleType:
    file = ep.file(root)
    if not file.is_file():
        base = root if root is not None else file.parent
        near = _nearest(ep.module, _py_files(base))
        raise ConfigError(f"entry point {ep.text}: no file {file}{near}; the path is "
                          "relative to the project folder")
    digest = _sha256(file)
    trained = recorded.get("sha256") if recorded else None
    if trained and trained != digest:
        log.warning("%s has SHA-256 %s, not %s it was recorded with", file, digest, trained)
    stem = re.sub(r"\W", "_", file.stem)
    name = f"medops_entrypoint_{digest[:16]}_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, file)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"entry point {ep.text}: {file} cannot be loaded as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # classes defined in it must resolve their module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"entry point {ep.text}: importing {file} raised "
                          f"{type(e).__name__}: {e}") from e
    return module


def _import(ep: EntryPoint, root: Path | None) -> ModuleType:
    """Import ``ep.module``; a top-level package that is not installed is looked for in
    ``root`` (a package folder of the project)."""
    top = ep.module.split(".")[0]
    try:
        if root is not None and _in_root(top, root):
            _forget_other_copy(top, root)
        if root is not None and _in_root(top, root) and not _importable(top):
            with _on_path(root):
                return importlib.import_module(ep.module)
        return importlib.import_module(ep.module)
    except ModuleNotFoundError as e:
        missing = e.name or ep.module
        if ep.module != missing and not ep.module.startswith(missing + "."):
            # the module exists but imports something that is not installed
            raise ConfigError(f"entry point {ep.text}: importing {ep.module} needs the module "
                              f"{missing!r}, which is not installed (pip install it)") from e
        raise ConfigError(f"entry point {ep.text}: no module named {missing!r}"
                          f"{_module_hint(missing, root)}") from e
    except Exception as e:
        raise _import_failed(ep, e) from e


def _forget_other_copy(top: str, root: Path) -> None:
    """Drop ``top`` from the import cache when it was imported from another folder than
    ``root`` and is no installed package: two projects (or two versions of one model, each from
    its own ``code/`` folder) in one process each get their own copy of their package folder."""
    cached = sys.modules.get(top)
    where = _module_path(cached) if cached is not None else None
    if where is None or _is_under(where, root) or \
            importlib.metadata.packages_distributions().get(top):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _importable(top: str) -> bool:
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _import_failed(ep: EntryPoint, e: BaseException) -> ConfigError:
    return ConfigError(f"entry point {ep.text}: importing {ep.module} raised "
                       f"{type(e).__name__}: {e}")


def _in_root(top: str, root: Path) -> bool:
    return (root / top).is_dir() or (root / f"{top}.py").is_file()


@contextmanager
def _on_path(root: Path) -> Iterator[None]:
    entry = str(root)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with suppress(ValueError):
            sys.path.remove(entry)


def _module_hint(missing: str, root: Path | None) -> str:
    """What exists where ``missing`` was looked for: the nearest names in its parent."""
    parent, _, leaf = missing.rpartition(".")
    if parent:
        try:
            mod = importlib.import_module(parent)
        except Exception:
            return ""
        subs = [m.name for m in pkgutil.iter_modules(getattr(mod, "__path__", []))]
        found = f" (found {parent} at {_module_path(mod)})"
        return found + _nearest(leaf, sorted({*subs, *_public_names(mod)}))
    tops = {m.name for m in pkgutil.iter_modules()}
    if root is not None:
        tops |= {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir()
                                                       if (p / "__init__.py").is_file()}
    return _nearest(leaf, sorted(tops)) + " (is it installed? pip install it)"


def _classes_parameter(factory: Any) -> str:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return "num_classes"
    if "num_classes" not in params and "out_channels" in params:
        return "out_channels"
    return "num_classes"


def _signature(factory: Any) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "(unknown)"


def _call_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _describe(obj: Any) -> str:
    text = repr(obj)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(obj).__name__} {text}"


def _public_names(obj: Any) -> list[str]:
    names = [n for n in dir(obj) if not n.startswith("_")]
    return sorted(n for n in names if callable(getattr(obj, n, None))) or sorted(names)


def _nearest(word: str, names: list[str]) -> str:
    close = difflib.get_close_matches(word, names, n=3, cutoff=0.5)
    return f"; nearest: {', '.join(close)}" if close else ""


def _py_files(root: Path) -> list[str]:
    out: list[str] = []
    stack = [root]
    while stack and len(out) < _MAX_CANDIDATES:
        folder = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.is_dir() and p.name not in _SKIP_DIRS and not p.name.startswith("."):
                stack.append(p)
            elif p.suffix == ".py":
                out.append(p.relative_to(root).as_posix())
    return out


def _module_path(module: ModuleType) -> Path | None:
    """A module's file, or a package's folder."""
    file = getattr(module, "__file__", None)
    if file is None:
        paths = list(getattr(module, "__path__", []))
        return Path(paths[0]) if paths else None
    path = Path(file)
    return path.parent if path.name == "__init__.py" else path


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _sha256(path: Path) -> str:
    """A file's SHA-256, or a folder's: of its .py files' relative paths and contents."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(path.read_bytes())
        return digest.hexdigest()
    for file in sorted(path.rglob("*.py")):
        if "__pycache__" in file.parts:
            continue
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()
