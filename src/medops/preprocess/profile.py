"""The preprocessing profile: the concrete recipe that turns an image into a model input.

A :class:`PreprocessProfile` is resolved once from ``medops.yaml`` and the data
(:func:`resolve_profile`), stored with every model, and applied verbatim when serving; its
:meth:`~PreprocessProfile.fingerprint` names the cache folder of the arrays it produced.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from medops.config.enums import FrameMode, Normalize, WindowMode
from medops.config.schema import PreprocessConfig
from medops.data.images import ImageInfo
from medops.errors import ConfigError, DataError

#: Bump when a change to the transforms alters their output, so caches and models made by the
#: old code are told apart from the new.
PROFILE_VERSION = 1
MIN_SIDE = 8


class PreprocessProfile(BaseModel):
    """Output size (H, W), channels, windowing, normalisation and frame handling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: tuple[int, int]
    channels: Literal[1, 3]
    window: WindowMode
    normalize: Normalize
    frames: FrameMode
    version: int = PROFILE_VERSION

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1 or max(v) > 4096:
            raise ValueError(f"each side must be between 1 and 4096 pixels (got {list(v)})")
        return v

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces; equal profiles give equal text."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

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


def resolve_profile(
    cfg: PreprocessConfig, frames: FrameMode, infos: Sequence[ImageInfo]
) -> PreprocessProfile:
    """Fill in ``size="auto"`` and ``channels="auto"`` from the probed images.

    size: the median of rows and of columns (separately), scaled down to fit
    ``cfg.max_auto_size`` with the aspect ratio kept, each side at least 8.
    channels: 3 when most images have three samples per pixel, else 1.
    """
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
