"""Settings of the controller service, read from ``ADASEG_*`` environment variables.

One variable per setting, so the same image runs locally, in CI and in the
cluster (where the Deployment sets them from a ConfigMap and a Secret):

``ADASEG_STORE``
    Store URI: ``file:///abs/dir`` or ``s3://bucket/prefix``.
    Default ``file://$PWD/outputs/store``.
``ADASEG_TOKEN``
    Bearer token required on every ``/v1`` request when set and non-empty
    (compared in constant time, before the body is read). ``/healthz``,
    ``/readyz``, ``/metrics``, ``/docs`` and ``/openapi.json`` stay open so
    probes and Prometheus need no secret. Default: unset (no auth).
``ADASEG_HOST``
    Address to listen on. Default ``127.0.0.1``; use ``0.0.0.0`` in a pod.
``ADASEG_PORT``
    TCP port. Default ``8080``.
``ADASEG_MAX_BODY_BYTES``
    Largest request body accepted; bigger ones get 413. Default ``1048576`` (1 MiB).
``ADASEG_LOG_LEVEL``
    ``critical``, ``error``, ``warning``, ``info`` (default) or ``debug``;
    ``debug`` also turns on uvicorn's access log.
``ADASEG_LEASE_HOLD_SECONDS``
    How long a lease request that finds no free member is held (a long poll)
    waiting for the round to complete before it answers ``{"state": "wait",
    "retry_after": ...}``. Default ``5``; ``0`` answers ``wait`` at once. Keep
    it well under the trainers' HTTP timeout (the client's default is 10 s),
    or a held lease times out on the client instead of answering.
``ADASEG_WRITER_LEASE_SECONDS``
    On an S3 store, the time-to-live of the controller's writer lease (one
    controller per store): renewed every third of it; a controller that stops
    renewing is taken over after it. A restarted controller waits up to this long
    for its predecessor's lease. Default ``30``. (A file store uses ``flock``.)
``ADASEG_STUCK_SECONDS``
    ``/healthz`` fails when a run's lock or state write has been held this long
    (a wedged process), so Kubernetes restarts the pod. Default ``120``.
``ADASEG_SHUTDOWN_SECONDS``
    After SIGTERM, requests in flight get this long to finish; then the process
    exits regardless. Keep it under the pod's termination grace period (30 s by
    default). Default ``20``.
``ADASEG_S3_ENDPOINT``, ``ADASEG_S3_ACCESS_KEY``, ``ADASEG_S3_SECRET_KEY``, ``ADASEG_S3_SECURE``, ``ADASEG_S3_REGION``
    Endpoint (``host:port``), credentials, TLS (``true``/``false``, default
    false) and region of the S3 server for ``s3://`` stores; read by
    :mod:`controller_service.contract.store`, not here.

``adaseg serve --store/--host/--port/--log-level`` override the variables.
"""  # noqa: E501

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 1 << 20
# well under the client's default timeout (10 s): a held lease must answer before it
DEFAULT_LEASE_HOLD_SECONDS = 5.0
DEFAULT_WRITER_LEASE_SECONDS = 30.0
DEFAULT_STUCK_SECONDS = 120.0
DEFAULT_SHUTDOWN_SECONDS = 20.0


class SettingsError(ValueError):
    """An ``ADASEG_*`` variable (or flag) has a value the service cannot use."""


def default_store_uri(cwd: Path | None = None) -> str:
    """``file://$PWD/outputs/store``: the embedded store next to the other demo outputs."""
    return ((cwd or Path.cwd()) / "outputs" / "store").resolve().as_uri()


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to start; see the module docstring for each variable."""

    store: str
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: str = "info"
    lease_hold_seconds: float = DEFAULT_LEASE_HOLD_SECONDS
    writer_lease_seconds: float = DEFAULT_WRITER_LEASE_SECONDS
    stuck_seconds: float = DEFAULT_STUCK_SECONDS
    shutdown_seconds: float = DEFAULT_SHUTDOWN_SECONDS

    def __post_init__(self) -> None:
        # each message names the variable (and the flag, where there is one): the user
        # must learn which of a Deployment's many settings is wrong
        if not self.store:
            raise SettingsError("store URI must not be empty (ADASEG_STORE or --store)")
        if not 0 < self.port < 65536:
            raise SettingsError(f"ADASEG_PORT (or --port) must be in 1..65535, got {self.port}")
        if self.max_body_bytes < 1:
            raise SettingsError(f"ADASEG_MAX_BODY_BYTES must be >= 1, got {self.max_body_bytes}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"ADASEG_LOG_LEVEL (or --log-level) must be one of {LOG_LEVELS}, "
                f"got {self.log_level!r}"
            )
        if not (math.isfinite(self.lease_hold_seconds) and self.lease_hold_seconds >= 0):
            raise SettingsError(
                f"ADASEG_LEASE_HOLD_SECONDS must be finite and >= 0, got {self.lease_hold_seconds}"
            )
        for variable, value in (
            ("ADASEG_WRITER_LEASE_SECONDS", self.writer_lease_seconds),
            ("ADASEG_STUCK_SECONDS", self.stuck_seconds),
            ("ADASEG_SHUTDOWN_SECONDS", self.shutdown_seconds),
        ):
            if not (math.isfinite(value) and value > 0):
                raise SettingsError(f"{variable} must be finite and > 0, got {value}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            store=env.get("ADASEG_STORE") or default_store_uri(),
            token=env.get("ADASEG_TOKEN") or None,
            host=env.get("ADASEG_HOST") or "127.0.0.1",
            port=_int(env, "ADASEG_PORT", DEFAULT_PORT),
            max_body_bytes=_int(env, "ADASEG_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            log_level=(env.get("ADASEG_LOG_LEVEL") or "info").lower(),
            lease_hold_seconds=_float(env, "ADASEG_LEASE_HOLD_SECONDS", DEFAULT_LEASE_HOLD_SECONDS),
            writer_lease_seconds=_float(
                env, "ADASEG_WRITER_LEASE_SECONDS", DEFAULT_WRITER_LEASE_SECONDS
            ),
            stuck_seconds=_float(env, "ADASEG_STUCK_SECONDS", DEFAULT_STUCK_SECONDS),
            shutdown_seconds=_float(env, "ADASEG_SHUTDOWN_SECONDS", DEFAULT_SHUTDOWN_SECONDS),
        )

    def override(self, **values: object) -> Settings:
        """A copy with the given fields replaced; ``None`` values (flags not given) are skipped."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
