"""The preprocessing profile: the concrete recipe that turns an image into a model input.

A :class:`PreprocessProfile` is resolved once from ``medops.yaml`` and the data
(:func:`resolve_profile`), stored with every model, and applied verbatim when serving; its
:meth:`~PreprocessProfile.fingerprint` names the cache folder of the arrays it produced.

Two conventions exist: medops' own (anti-aliased bilinear resize of the whole image, then a
per-image z-score or min-max), and TorchXRayVision's (:func:`txv_profile`: its fixed intensity
scaling to [-1024, 1024], a square center crop, scikit-image's resize, one channel), which every
``txv:NAME`` model gets whatever ``preprocess.*`` says.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from medops.config.enums import FrameMode, Normalize, StrEnum, WindowMode
from medops.config.models import is_txv, txv_resolution
from medops.config.schema import PreprocessConfig
from medops.data.images import ImageInfo
from medops.errors import ConfigError, DataError

#: Bump when a change to the transforms alters their output, so caches and models made by the
#: old code are told apart from the new.
PROFILE_VERSION = 1
MIN_SIDE = 8


class Crop(StrEnum):
    NONE = "none"  # the whole image is resized to ``size``
    # the largest centred square (TorchXRayVision's XRayCenterCrop), then resized
    CENTER = "center"


class Resample(StrEnum):
    PILLOW = "pillow"  # Pillow's anti-aliased bilinear resize of float32 planes
    # skimage.transform.resize, linear, anti-aliased (TorchXRayVision's XRayResizer)
    SKIMAGE = "skimage"


#: Fields added after profiles were first stored, with the value older profiles mean. Left out
#: of the canonical JSON at that value, so existing profiles keep their text and fingerprint.
_LATER_DEFAULTS: dict[str, str] = {"crop": Crop.NONE.value, "resample": Resample.PILLOW.value}


class PreprocessProfile(BaseModel):
    """Output size (H, W), channels, windowing, normalisation, frame handling, cropping and
    the resize algorithm."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: tuple[int, int]
    channels: Literal[1, 3]
    window: WindowMode
    normalize: Normalize
    frames: FrameMode
    version: int = PROFILE_VERSION
    crop: Crop = Crop.NONE
    resample: Resample = Resample.PILLOW

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1 or max(v) > 4096:
            raise ValueError(f"each side must be between 1 and 4096 pixels (got {list(v)})")
        return v

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces; equal profiles give equal text."""
        data: dict[str, Any] = self.model_dump(mode="json")
        for key, default in _LATER_DEFAULTS.items():
            if data[key] == default:
                del data[key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> PreprocessProfile:
        """Parse :meth:`to_json` output; ConfigError naming the problem if it is not one."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(f"invalid preprocessing profile: {exc}") from exc

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def txv_profile(side: int, frames: FrameMode = FrameMode.MIDDLE) -> PreprocessProfile:
    """TorchXRayVision's input convention at ``side`` px: one channel, stored values (no VOI
    window) scaled to [-1024, 1024], colour averaged to grey, the centred square, resized by
    scikit-image to ``side`` x ``side``."""
    return PreprocessProfile(size=(side, side), channels=1, window=WindowMode.NONE,
                             normalize=Normalize.TXV, frames=frames, crop=Crop.CENTER,
                             resample=Resample.SKIMAGE)


def txv_overrides(cfg: PreprocessConfig, profile: PreprocessProfile) -> list[str]:
    """The ``preprocess.*`` values chosen in medops.yaml (set, and not the defaults the
    scaffold writes) that a TorchXRayVision model ignores, each as a sentence naming the key,
    the value set and the value used."""
    used: dict[str, object] = {"size": tuple(profile.size), "channels": profile.channels,
                               "window": profile.window, "normalize": profile.normalize}
    notes = []
    for key in sorted(cfg.model_fields_set & used.keys()):
        given, wanted = getattr(cfg, key), used[key]
        if given != wanted and given != PreprocessConfig.model_fields[key].default:
            notes.append(f"preprocess.{key}: {_shown(given)} is ignored: TorchXRayVision models "
                         f"take {_shown(wanted)} (their own input convention)")
    return notes


def _shown(value: object) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def resolve_profile(
    cfg: PreprocessConfig, frames: FrameMode, infos: Sequence[ImageInfo],
    architecture: str | None = None,
) -> PreprocessProfile:
    """Fill in ``size="auto"`` and ``channels="auto"`` from the probed images.

    size: the median of rows and of columns (separately), scaled down to fit
    ``cfg.max_auto_size`` with the aspect ratio kept, each side at least 8.
    channels: 3 when most images have three samples per pixel, else 1.

    A TorchXRayVision ``architecture`` (``txv:NAME``) gets :func:`txv_profile` at the
    resolution its weights were trained at, whatever ``cfg`` says (:func:`txv_overrides` lists
    what is ignored).
    """
    if architecture is not None and is_txv(architecture):
        return txv_profile(txv_resolution(architecture), frames)
    needs_data = cfg.size == "auto" or cfg.channels == "auto"
    if needs_data and not infos:
        raise DataError(
            "cannot resolve preprocess size/channels 'auto' without any image; "
            "set preprocess.size and preprocess.channels explicitly"
        )
    if cfg.size == "auto":
        rows = statistics.median(i.rows for i in infos)
        cols = statistics.median(i.cols for i in infos)
        scale = min(1.0, cfg.max_auto_size / max(rows, cols))
        size = (max(MIN_SIDE, round(rows * scale)), max(MIN_SIDE, round(cols * scale)))
    else:
        size = cfg.size
    channels: Literal[1, 3]
    if cfg.channels == "auto":
        colour = sum(1 for i in infos if i.samples_per_pixel == 3)
        channels = 3 if colour > len(infos) / 2 else 1
    else:
        channels = cfg.channels
    return PreprocessProfile(
        size=size, channels=channels, window=cfg.window, normalize=cfg.normalize, frames=frames
    )
