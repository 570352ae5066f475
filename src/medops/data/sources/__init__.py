"""Sources list images as items: a folder, a MedMNIST .npz file."""

from medops.data.sources.base import Source
from medops.data.sources.folder import FolderSource
from medops.data.sources.npz import NpzSource

__all__ = ["FolderSource", "NpzSource", "Source"]
