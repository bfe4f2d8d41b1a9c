"""``Settings.from_env``: the defaults, each ``ADASEG_*`` variable, and errors that name it.

A Deployment sets many variables at once; a bad one must stop the service with
a message that says which, so every refusal here is checked for the name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller_service.api.settings import (
    DEFAULT_LEASE_HOLD_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORT,
    Settings,
    SettingsError,
)

FIELDS = [f.name for f in dataclasses.fields(Settings)]


def test_defaults_with_an_empty_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.store == (tmp_path / "outputs" / "store").resolve().as_uri()
    assert settings.token is None
    assert (settings.host, settings.port) == ("127.0.0.1", DEFAULT_PORT) == ("127.0.0.1", 8080)
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1 << 20
    assert settings.log_level == "info"
    assert settings.lease_hold_seconds == DEFAULT_LEASE_HOLD_SECONDS == 5.0


def test_empty_values_mean_the_default():
    """A ConfigMap key present but blank must not turn auth on with an empty token."""
    blank = {name: "" for name in ("ADASEG_TOKEN", "ADASEG_PORT", "ADASEG_LEASE_HOLD_SECONDS")}
    settings = Settings.from_env({"ADASEG_STORE": "file:///s", **blank})
    assert settings.token is None
    assert settings.port == DEFAULT_PORT
    assert settings.lease_hold_seconds == DEFAULT_LEASE_HOLD_SECONDS


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("ADASEG_STORE", "s3://bucket/prefix", "store", "s3://bucket/prefix"),
        ("ADASEG_TOKEN", "s3cret", "token", "s3cret"),
        ("ADASEG_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("ADASEG_PORT", "9001", "port", 9001),
        ("ADASEG_MAX_BODY_BYTES", "4096", "max_body_bytes", 4096),
        ("ADASEG_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("ADASEG_LEASE_HOLD_SECONDS", "0.25", "lease_hold_seconds", 0.25),
        ("ADASEG_LEASE_HOLD_SECONDS", "0", "lease_hold_seconds", 0.0),
    ],
)
def test_each_variable_sets_its_field(name: str, raw: str, field: str, value: object):
    settings = Settings.from_env({"ADASEG_STORE": "file:///s", name: raw})
    assert getattr(settings, field) == value
    untouched = Settings.from_env({"ADASEG_STORE": "file:///s"})
    for other in FIELDS:
        if other != field:  # one variable, one field
            assert getattr(settings, other) == getattr(untouched, other), other


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("ADASEG_PORT", "http"),
        ("ADASEG_PORT", "80.5"),
        ("ADASEG_PORT", "0"),
        ("ADASEG_PORT", "65536"),
        ("ADASEG_MAX_BODY_BYTES", "1MiB"),
        ("ADASEG_MAX_BODY_BYTES", "0"),
        ("ADASEG_MAX_BODY_BYTES", "-1"),
        ("ADASEG_LOG_LEVEL", "verbose"),
        ("ADASEG_LEASE_HOLD_SECONDS", "soon"),
        ("ADASEG_LEASE_HOLD_SECONDS", "-1"),
        ("ADASEG_LEASE_HOLD_SECONDS", "nan"),
        ("ADASEG_LEASE_HOLD_SECONDS", "inf"),
    ],
)
def test_a_bad_value_is_a_settings_error_naming_the_variable(name: str, raw: str):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"ADASEG_STORE": "file:///s", name: raw})


def test_flags_override_the_environment_and_none_keeps_it():
    settings = Settings.from_env({"ADASEG_STORE": "file:///s", "ADASEG_PORT": "9001"})
    assert settings.override(port=9002, host=None).port == 9002
    assert settings.override(port=None).port == 9001
    with pytest.raises(SettingsError, match="--port"):
        settings.override(port=70000)
