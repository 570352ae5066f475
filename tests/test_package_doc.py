"""The package docstring is the map of medops: every subpackage, in the order of the layers."""

from __future__ import annotations

import re
from pathlib import Path

import medops

REPO = Path(__file__).resolve().parents[1]


def _listed() -> list[str]:
    return re.findall(r"^- ``(\w+)``", medops.__doc__ or "", re.M)


def test_the_docstring_names_every_subpackage() -> None:
    root = Path(medops.__file__).parent
    found = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    found |= {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    assert sorted(_listed()) == sorted(found)


def test_the_docstring_lists_them_in_the_order_of_the_layers() -> None:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r'type = "layers"\nlayers = \[(.*?)\]', text, re.S)
    assert block is not None, "no layers contract in pyproject.toml"
    layers = re.findall(r'"([^"]+)"', block.group(1))
    layer_of = {module.strip().removeprefix("medops."): i
                for i, layer in enumerate(layers) for module in layer.split("|")}
    listed = _listed()
    assert set(layer_of) <= set(listed), set(layer_of) - set(listed)
    order = [layer_of[name] for name in listed if name in layer_of]
    assert order == sorted(order), listed
