"""MedMNIST-format .npz files: ``{train,val,test}_{images,labels}``, the published split kept."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from medops.data.hashing import file_sha256
from medops.errors import DataError
from medops.storage.records import Item, ItemStatus, Split

_SPLITS = {"train": Split.TRAIN, "val": Split.VAL, "test": Split.TEST}


class NpzSource:
    """Unpacks each image to a PNG under ``out_dir`` so every item is a plain file."""

    def __init__(self, path: Path, out_dir: Path, name: str | None = None) -> None:
        self.path = path
        self.out_dir = out_dir
        self.name = name or f"npz:{path.name}"

    def list_items(self) -> Iterator[Item]:
        arrays = self._load()
        for prefix, split in _SPLITS.items():
            images = arrays[f"{prefix}_images"]
            labels = arrays[f"{prefix}_labels"].reshape(len(images), -1)
            if labels.shape[1] != 1:
                raise DataError(
                    f"{self.path}: {prefix}_labels has {labels.shape[1]} columns; medops handles "
                    "single-label classification (multi-label MedMNIST sets are not supported yet)"
                )
            folder = self.out_dir / prefix
            folder.mkdir(parents=True, exist_ok=True)
            for i, (img, label) in enumerate(zip(images, labels[:, 0], strict=True)):
                target = folder / f"{i:06d}.png"
                if not target.exists():
                    tmp = target.with_suffix(".tmp")
                    Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG")
                    tmp.replace(target)
                yield Item(
                    uri=str(target), content_hash=file_sha256(target), source=self.name,
                    label=str(int(label)), split=split, status=ItemStatus.PENDING,
                    info={"format": "png", "rows": int(img.shape[0]), "cols": int(img.shape[1]),
                          "frames": 1, "samples": 3 if img.ndim == 3 else 1,
                          "index": i},
                )

    def _load(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.path} is not a readable .npz file: {exc}") from exc
        missing = [f"{p}_{k}" for p in _SPLITS for k in ("images", "labels")
                   if f"{p}_{k}" not in arrays]
        if missing:
            raise DataError(
                f"{self.path} is not in MedMNIST format: missing {missing} "
                f"(found {sorted(arrays)})"
            )
        return arrays
