"""Turning images into model inputs: profiles, transforms, the array cache and batch runs."""

from medops.preprocess.cache import PreprocessCache
from medops.preprocess.profile import (
    PROFILE_VERSION,
    Crop,
    PreprocessProfile,
    Resample,
    resolve_profile,
    txv_overrides,
    txv_profile,
)
from medops.preprocess.run import (
    PreprocessReport,
    PreprocessTask,
    load_arrays,
    preprocess_items,
)
from medops.preprocess.transforms import apply_profile, preprocess_bytes, preprocess_file

__all__ = [
    "PROFILE_VERSION",
    "Crop",
    "PreprocessCache",
    "PreprocessProfile",
    "PreprocessReport",
    "PreprocessTask",
    "Resample",
    "apply_profile",
    "load_arrays",
    "preprocess_bytes",
    "preprocess_file",
    "preprocess_items",
    "resolve_profile",
    "txv_overrides",
    "txv_profile",
]
