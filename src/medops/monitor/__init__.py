"""Monitoring of the live model: the capture store of served predictions and their feedback."""

from medops.monitor.capture import (
    CAPTURE_DIR,
    STAT_NAMES,
    CaptureRecord,
    CaptureStore,
    Feedback,
    intensity_stats,
)
from medops.monitor.writer import CaptureWriter

__all__ = [
    "CAPTURE_DIR",
    "STAT_NAMES",
    "CaptureRecord",
    "CaptureStore",
    "CaptureWriter",
    "Feedback",
    "intensity_stats",
]
