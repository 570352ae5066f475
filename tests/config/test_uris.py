"""storage locations are checked when the config loads, with the forms that work."""

from __future__ import annotations

import pytest

from medops.config import parse_config
from medops.errors import ConfigError


@pytest.mark.parametrize(("key", "value"), [
    ("state", "not a uri at all"), ("state", "mysql://x/y"), ("state", "http://mlflow:5000"),
    ("state", "sqlite://"), ("tracking", "not a uri"), ("tracking", "mysql://x/y"),
    ("tracking", "file:///tmp/mlruns"), ("tracking", "https://"),
])
def test_a_location_medops_cannot_use_is_a_config_error(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"storage\.{key}: .*write .*(sqlite:///|http)"):
        parse_config({"project": "p", "storage": {key: value}})


@pytest.mark.parametrize(("key", "value"), [
    ("state", "sqlite:///.medops/medops.db"), ("state", "sqlite:////var/lib/medops/state.db"),
    ("state", "postgresql+psycopg://root@127.0.0.1:5432/test"), ("state", "postgresql:///test"),
    ("tracking", "sqlite:///.medops/mlflow.db"), ("tracking", "https://mlflow.example.org"),
    ("tracking", "postgresql+psycopg://mlflow@db/mlflow"),
])
def test_the_documented_forms_load(key: str, value: str) -> None:
    cfg = parse_config({"project": "p", "storage": {key: value}})
    assert getattr(cfg.storage, key) == value
