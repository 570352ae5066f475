"""Random augmentation of whole batches, on the device that trains.

Flips, rotation, translation and scale are folded into one affine matrix per image and applied
with a single ``grid_sample`` call, so a batch costs one resampling pass whatever is enabled (and
none when nothing geometric is). Shifts are whole pixels, so flips and shifts alone resample
exactly; rotation and scaling interpolate, which blurs small images. Intensity jitter is a
per-image contrast factor and brightness offset, sized for images normalised per image (z-score
or [0, 1]).

The random parameters come from a CPU generator the caller seeds, so a run is reproducible on
any device and a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medops.config.schema import AugmentConfig


class BatchAugmenter:
    """Applies :class:`AugmentConfig` to (N, C, H, W) float batches."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        lo, hi = cfg.scale
        self._geometric = (
            cfg.hflip
            or cfg.vflip
            or cfg.rotate_degrees > 0
            or cfg.translate > 0
            or (lo, hi) != (1.0, 1.0)
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """An augmented copy of ``x``; ``generator`` is a CPU generator."""
        n = x.shape[0]
        if self._geometric:
            theta = self._affine(n, (x.shape[-2], x.shape[-1]), generator).to(
                device=x.device, dtype=x.dtype
            )
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            # border padding: zeros would paint a frame that z-scored images never contain
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.cfg.intensity > 0:
            k = self.cfg.intensity
            contrast = 1 + k * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
            brightness = k * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
            x = torch.addcmul(brightness.to(x), x, contrast.to(x))
        return x

    def _affine(self, n: int, size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
        """(N, 2, 3) matrices mapping output to input coordinates in [-1, 1]."""
        cfg = self.cfg

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(*shape, generator=g)

        angle = uniform(-1.0, 1.0, n) * math.radians(cfg.rotate_degrees)
        # affine_grid maps output to input, so zooming in by s means sampling 1/s of the field
        scale = 1.0 / uniform(cfg.scale[0], cfg.scale[1], n)
        # whole pixels: a shift by whole pixels resamples exactly, a fractional one blurs, and
        # at 28 px that blur is a difference between training and test images
        h, w = size
        pixels = torch.round(uniform(-1.0, 1.0, n, 2) * cfg.translate * torch.tensor([w, h]))
        shift = 2 * pixels / torch.tensor([w, h])  # [-1, 1] spans the side
        sx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if cfg.hflip else 1.0
        sy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if cfg.vflip else 1.0
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        row0 = torch.stack([cos * sx, -sin * sy, shift[:, 0]], dim=1)
        row1 = torch.stack([sin * sx, cos * sy, shift[:, 1]], dim=1)
        return torch.stack([row0, row1], dim=1)
