"""Build both images from the repository's Dockerfiles with rootful podman, offline.

``python -m tests.containers.images`` (``make images-podman``). No registry is
reachable from this project's CI, so the bases are made here:

1. ``adaseg-base:bookworm``: ``debootstrap --variant=minbase bookworm`` with
   Debian's python3 (3.11), ``podman import``-ed; the tarball is cached;
2. ``wheelhouse/``: every Python package the images install, fetched once on
   the host with ``pip wheel`` (wheelhouse/README.md), torch the CPU build;
3. ``adaseg-torch-cpu``: the base plus CPU torch (tests/containers/torch-cpu.Containerfile),
   standing in for the trainer's CUDA ``pytorch/pytorch`` base;
4. the controller and trainer images from ``controller_service/Dockerfile`` and
   ``trainer_image/Dockerfile`` with those bases as build arguments and
   ``PIP_NO_INDEX=1``, and the S3 stand-in (tests/containers/s3.Containerfile).

Every build runs with ``--network none``: it succeeds only if nothing in it
needs the network. Reruns reuse the tarball, the wheelhouse and podman's
layer cache.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

from tests.containers.podman import CACHE, REPO, containers_conf, ensure_tools, podman, run, step

VERSION = version("adaseg")
CONTROLLER_IMAGE = f"adaseg-controller:{VERSION}"
TRAINER_IMAGE = f"adaseg-trainer:{VERSION}"
BASE_IMAGE = "localhost/adaseg-base:bookworm"
TORCH_BASE_IMAGE = "localhost/adaseg-torch-cpu:bookworm"
S3_IMAGE = "localhost/adaseg-s3-moto:bookworm"

SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# python3-venv: the Dockerfiles make venvs; python-is-python3: they call `python`;
# python3-pip: the torch base installs into the system python; passwd: useradd.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "passwd",
                 "ca-certificates")  # fmt: skip
WHEELHOUSE = REPO / "wheelhouse"
# What the images install besides the project's own dependencies.
BUILD_REQUIREMENTS = ("pip==24.3.1", "setuptools>=68", "wheel", "moto[server]>=5")
IMAGE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def base_tarball(mirror: str) -> Path:
    """The debootstrapped root filesystem as a tarball, made once per package list."""
    tarball = CACHE / f"debian-{SUITE}-minbase-{_digest(SUITE, *BASE_PACKAGES)}.tar"
    if tarball.exists():
        print(f"cached: {tarball.relative_to(REPO)}")
        return tarball
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    started = time.monotonic()
    run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
         str(rootfs), mirror],
        capture=True,
    )  # fmt: skip
    # apt's downloads and lists are of no use in an image
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    partial = tarball.with_suffix(".partial")
    run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."])
    partial.rename(tarball)
    shutil.rmtree(rootfs)
    print(f"debootstrap {SUITE} ({', '.join(BASE_PACKAGES)}): {time.monotonic() - started:.0f} s")
    return tarball


def import_base(tarball: Path) -> None:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    podman(
        "import", "--change", f"ENV {IMAGE_PATH}", "--change", 'CMD ["/bin/bash"]',
        str(tarball), BASE_IMAGE,
    )  # fmt: skip


def fill_wheelhouse(torch: str, torch_index: str | None) -> None:
    """``pip wheel`` every package the images need into wheelhouse/, once per pyproject.toml.

    Wheels, not sdists: kfp-server-api is published as source only and the images
    have no compiler. Torch first, on its own, so that ``torch_index`` (the CPU
    index where the default one serves CUDA builds) applies to it alone.
    """
    pyproject = (REPO / "pyproject.toml").read_text()
    stamp = WHEELHOUSE / f".filled-{_digest(pyproject, torch, *BUILD_REQUIREMENTS)}"
    if stamp.exists():
        print(f"cached: wheelhouse/ ({len(list(WHEELHOUSE.glob('*.whl')))} wheels)")
        return
    started = time.monotonic()
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(WHEELHOUSE)]
    index = ["--index-url", torch_index] if torch_index else []
    run([*pip, "--no-deps", torch, *index])
    run([*pip, "--find-links", str(WHEELHOUSE), torch, *BUILD_REQUIREMENTS,
         f"{REPO}[trainer,pipelines]"], cwd=REPO)  # fmt: skip
    for own in WHEELHOUSE.glob("adaseg-*.whl"):  # the images build the project from source
        own.unlink()
    for old in WHEELHOUSE.glob(".filled-*"):
        old.unlink()
    stamp.touch()
    wheels = list(WHEELHOUSE.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"wheelhouse/: {len(wheels)} wheels, {size:.0f} MiB, {time.monotonic() - started:.0f} s")


def build(dockerfile: str, tag: str, **build_args: str) -> None:
    """``podman build`` from the repository root (its .dockerignore), with no network."""
    started = time.monotonic()
    args = [arg for name, value in build_args.items() for arg in ("--build-arg", f"{name}={value}")]
    podman(
        "build", "--layers", "--network", "none", "-f", dockerfile, "-t", tag, *args, str(REPO),
        capture=True,
    )  # fmt: skip
    size = podman("image", "inspect", tag, "--format", "{{.Size}}").stdout.strip()
    print(f"built {tag} from {dockerfile}: {int(size) / 2**20:.0f} MiB, "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip


def build_all(torch: str, torch_index: str | None = None, mirror: str = DEBIAN_MIRROR) -> None:
    ensure_tools()
    containers_conf()
    step(f"base image {BASE_IMAGE}: debootstrap --variant=minbase {SUITE} + Debian's python3")
    import_base(base_tarball(mirror))
    step("wheelhouse/: the images' Python packages, fetched on the host (pip wheel)")
    fill_wheelhouse(torch, torch_index)
    step("images, built offline (podman build --network none, PIP_NO_INDEX=1)")
    build("tests/containers/torch-cpu.Containerfile", TORCH_BASE_IMAGE,
          BASE_IMAGE=BASE_IMAGE, TORCH=torch)  # fmt: skip
    build("controller_service/Dockerfile", CONTROLLER_IMAGE,
          PYTHON_IMAGE=BASE_IMAGE, PIP_NO_INDEX="1")  # fmt: skip
    build("trainer_image/Dockerfile", TRAINER_IMAGE,
          TORCH_IMAGE=TORCH_BASE_IMAGE, PIP_NO_INDEX="1")  # fmt: skip
    build("tests/containers/s3.Containerfile", S3_IMAGE, BASE_IMAGE=BASE_IMAGE)
    print(podman("images", "--filter", "reference=*adaseg*").stdout, end="")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", required=True, help="torch requirement (the Makefile's TORCH)")
    parser.add_argument("--torch-index", help="index for the torch wheel, e.g. the CPU one")
    parser.add_argument("--mirror", default=DEBIAN_MIRROR, help="Debian mirror for debootstrap")
    args = parser.parse_args()
    build_all(args.torch, args.torch_index, args.mirror)
    return 0


if __name__ == "__main__":
    sys.exit(main())
