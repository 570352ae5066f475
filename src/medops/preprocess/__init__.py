"""Turning images into model inputs: profiles, transforms, the array cache and batch runs."""

from medops.preprocess.cache import PreprocessCache
from medops.preprocess.profile import PROFILE_VERSION, PreprocessProfile, resolve_profile
from medops.preprocess.run import (
    PreprocessReport,
    PreprocessTask,
    load_arrays,
    preprocess_items,
)
from medops.preprocess.transforms import apply_profile, preprocess_bytes, preprocess_file

__all__ = [
    "PROFILE_VERSION",
    "PreprocessCache",
    "PreprocessProfile",
    "PreprocessReport",
    "PreprocessTask",
    "apply_profile",
    "load_arrays",
    "preprocess_bytes",
    "preprocess_file",
    "preprocess_items",
    "resolve_profile",
]
