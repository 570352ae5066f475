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
        splits = self._load()
        for prefix, split in _SPLITS.items():
            images, labels = splits[prefix]
            folder = self.out_dir / prefix
            folder.mkdir(parents=True, exist_ok=True)
            for i, (img, label) in enumerate(zip(images, labels, strict=True)):
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

    def _load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{split prefix: (images, one label per image)}, every split checked before any PNG is
        written, so a malformed file imports nothing."""
        try:
            # np.load takes anything that is not a zip for a .npy or a pickle and then fails
            # with advice to allow pickles, which would be wrong and unsafe here.
            with self.path.open("rb") as fh:
                is_zip = zipfile.is_zipfile(fh)
            if not is_zip:
                raise DataError(f"{self.path} is not a valid .npz (zip) file; expected a MedMNIST "
                                ".npz as written by numpy.savez")
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
        return {p: self._checked(p, arrays[f"{p}_images"], arrays[f"{p}_labels"])
                for p in _SPLITS}

    def _checked(self, prefix: str, images: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if images.ndim and len(images) == 0:
            raise DataError(f"{self.path}: {prefix}_images holds no image; every split (train, "
                            "val, test) needs at least one")
        gray_or_rgb = images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)
        if images.dtype != np.uint8 or not gray_or_rgb or 0 in images.shape[1:3]:
            raise DataError(f"{self.path}: {prefix}_images has dtype {images.dtype} and shape "
                            f"{images.shape}; expected uint8 images of shape N x H x W or "
                            "N x H x W x 3")
        if labels.ndim == 0 or len(labels) != len(images):
            raise DataError(f"{self.path}: {prefix}_labels has {len(labels) if labels.ndim else 0} "
                            f"rows for {len(images)} images; expected one label per image")
        labels = labels.reshape(len(images), -1)
        if labels.shape[1] != 1:
            raise DataError(
                f"{self.path}: {prefix}_labels has {labels.shape[1]} columns; medops handles "
                "single-label classification (multi-label MedMNIST sets are not supported yet)"
            )
        if not _whole_numbers(labels):
            raise DataError(f"{self.path}: {prefix}_labels has dtype {labels.dtype}; labels must "
                            "be integer class indices (0, 1, ...)")
        return images, labels[:, 0]


def _whole_numbers(labels: np.ndarray) -> bool:
    if labels.dtype.kind in "biu":
        return True
    # 1.0 is a fine label; 0.7 is not one, and int() would quietly make it 0.
    return labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels)
                                                    & (labels == np.round(labels))))
