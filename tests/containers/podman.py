"""Rootful podman as this project's CI can run it: tools from apt, one config file.

Everything that runs podman goes through :func:`podman`, which points it at our
own ``containers.conf`` (``CONTAINERS_CONF``), so nothing under /etc changes:

* ``runtime = "runc"``: crun fails on kernels with hybrid (v1 + v2) cgroups;
* ``default_ulimits``: podman's defaults ask for more open files than a
  sandbox may allow; the hard limit of this process is the most it can have;
* ``network_backend = "netavark"``: its DNS (aardvark) lets pods find each
  other by pod name, as Services let them on a cluster.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Cached between runs, git-ignored (build/): the base tarball, the config.
CACHE = REPO / "build" / "containers"
# Debian bookworm's packages; podman 4.3 from bookworm is what this was written against.
APT_PACKAGES = ("podman", "buildah", "runc", "netavark", "aardvark-dns", "catatonit", "iptables",
                "debootstrap")  # fmt: skip
# Commands those packages install; any one missing means installing them.
APT_TOOLS = ("podman", "buildah", "runc", "iptables", "debootstrap")


def step(message: str) -> None:
    """One line per step of the run, so the CI log reads as a story."""
    print(f"\n==> {message}", flush=True)


def run(
    argv: Sequence[str], *, check: bool = True, capture: bool = False, **kwargs
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output (never a silent error).
    ``capture``: keep stdout (and stderr, unless ``stderr=`` says otherwise)."""
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    done = subprocess.run(list(argv), text=True, check=False, **kwargs)
    if check and done.returncode != 0:
        detail = f"\n{done.stdout}\n{done.stderr}" if capture else ""
        raise RuntimeError(f"`{' '.join(argv)}` exited with {done.returncode}{detail}")
    return done


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages; waits for another apt to finish rather than failing."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=900"]
    started = time.monotonic()
    run(["apt-get", *lock, "update", "-qq"], env=env, capture=True)
    run(
        ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        capture=True,  # dpkg's chatter; shown if it fails
    )
    print(f"apt-get install {' '.join(packages)}: {time.monotonic() - started:.0f} s")


def ensure_tools() -> None:
    """podman and friends (apt), as root: rootful podman is what works in this sandbox."""
    if os.geteuid() != 0:
        sys.exit("make test-containers runs rootful podman: run it as root")
    missing = [tool for tool in APT_TOOLS if not shutil.which(tool)]
    if missing or not Path("/usr/lib/podman/netavark").exists():
        step("tools: podman and what it needs here, from Debian (apt)")
        apt_install(APT_PACKAGES)


def containers_conf() -> Path:
    """Our containers.conf (rewritten every run: the hard limit may differ between machines)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = "1048576" if hard == resource.RLIM_INFINITY else str(hard)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "containers.conf"
    path.write_text(
        "# Written by tests/containers/podman.py; see its docstring.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        "[network]\n"
        'network_backend = "netavark"\n'
    )
    return path


def podman(
    *args: str, check: bool = True, capture: bool = True, **kwargs
) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` with our containers.conf."""
    env = {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf")}
    return run(["podman", *args], check=check, capture=capture, env=env, **kwargs)


def podman_out(*args: str) -> str:
    return podman(*args).stdout.strip()


class GiveUp(Exception):
    """Raised by a probe of :func:`wait_for` when waiting longer cannot help."""


def wait_for(what: str, probe, timeout: float, interval: float = 0.5):
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds,
    or at once if it raises :class:`GiveUp` (other errors count as "not yet")."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except GiveUp:
            raise
        except Exception as error:  # noqa: BLE001 - kept for the message below
            last_error, value = error, None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (last error: {last_error})")
