"""Offline checks of the two Dockerfiles (no Docker engine here).

A build that would fail on a missing file, float on an unpinned base image, run
as root, or start a command the CLI does not have is caught here instead of on
a cluster. The small Dockerfile and .dockerignore readers below follow Docker's
documented rules and are tested on hand-written inputs first.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller_service.api.settings import Settings
from controller_service.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ("controller_service/Dockerfile", "trainer_image/Dockerfile")
# The user every image and every pod runs as (k8s/ sets the same runAsUser).
IMAGE_UID = 10001


# --- Dockerfile reader ---------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN ...
    value: str  # everything after the keyword, continuation lines joined
    stage: int  # index of the FROM it follows; -1 for global ARGs


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, with `\\` continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments may sit inside a continued instruction too
        if line.endswith("\\"):
            pending += raw.rstrip()[:-1]  # Docker keeps the lines' own whitespace
            continue
        logical = (pending + line).strip()
        pending = ""
        if not logical:
            continue
        keyword, _, value = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, value.strip(), stage))
    if pending:
        raise ValueError("Dockerfile ends inside a continued line")
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM: the only ones FROM may use."""
    args: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and ins.stage == -1:
            name, _, default = ins.value.partition("=")
            args[name.strip()] = default.strip()
    return args


def substitute(value: str, variables: dict[str, str]) -> str:
    """Docker's `${NAME}` and `$NAME` substitution; an unknown name is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"${name} is not declared")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, value)


def base_images(instructions: list[Instruction]) -> list[tuple[str, str | None]]:
    """(image, stage alias) for every FROM, with global ARGs substituted."""
    args = global_args(instructions)
    bases = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.value.split() if not w.startswith("--platform")]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            bases.append((substitute(words[0], args), alias))
    return bases


def image_is_pinned(image: str) -> bool:
    """A digest, or a tag other than `latest` (a registry port is not a tag)."""
    if "@sha256:" in image:
        return True
    name_tail = image.rsplit("/", 1)[-1]
    if ":" not in name_tail:
        return False
    return name_tail.rsplit(":", 1)[1] not in {"", "latest"}


def exec_form(value: str) -> list[str]:
    """The JSON array of CMD/ENTRYPOINT; shell form would wrap PID 1 in /bin/sh."""
    parsed = json.loads(value)
    if not (isinstance(parsed, list) and all(isinstance(x, str) for x in parsed)):
        raise ValueError(f"not an exec-form array: {value}")
    return parsed


def copy_sources(value: str) -> tuple[dict[str, str], list[str]]:
    """Flags (--from=, --chown= ...) and source paths of a COPY/ADD."""
    words = json.loads(value) if value.startswith("[") else shlex.split(value)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, flag_value = words.pop(0)[2:].partition("=")
        flags[name] = flag_value
    return flags, words[:-1]


def env_values(value: str) -> dict[str, str]:
    """Variables of one ENV instruction (`K=V ...`, or the legacy `K V`)."""
    words = shlex.split(value)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(ins.stage for ins in instructions)
    return [ins for ins in instructions if ins.stage == last]


# --- .dockerignore reader --------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match syntax plus `**` (any number of directories), as Docker does."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per pattern line; `!` re-includes, the last match wins."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:].strip() if include else line
        pattern = str(Path(pattern.lstrip("/")))  # Docker cleans patterns first
        rules.append((not include, _pattern_regex(pattern)))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a context path is left out: a pattern matches it or one of its parents."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for excludes, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = excludes
    return ignored


# --- the adaseg command line --------------------------------------------------------


def command_module_exists(command: str) -> bool:
    """Whether the module behind an `adaseg` command has been written yet."""
    return importlib.util.find_spec(COMMANDS[command][0]) is not None


def parse_adaseg_args(argv: list[str]) -> argparse.Namespace | None:
    """Parse `adaseg ARGV...` exactly as controller_service.cli.main does, without running it.

    The caller sets the environment the process would see first, because
    parsers may take defaults from ADASEG_* variables.
    """
    command, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"adaseg {command}", description=help_)
    importlib.import_module(module_name).add_arguments(parser)
    try:
        return parser.parse_args(rest)
    except SystemExit as exc:
        if exc.code == 0 and ("--help" in rest or "-h" in rest):
            return None  # a help default: argparse printed the usage and stopped
        message = f"`adaseg {shlex.join(argv)}` does not parse (exit {exc.code})"
        raise AssertionError(message) from None


# --- the readers, on hand-written inputs -----------------------------------------------


def test_parse_dockerfile_joins_continuations_and_tracks_stages() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11.11-slim\n"
        "FROM ${BASE} AS builder\n"
        "RUN a \\\n"
        "    # a comment inside the instruction\n"
        "    && b\n"
        "FROM $BASE\n"
        'CMD ["serve", "--port", "8080"]\n'
    )
    instructions = parse_dockerfile(text)
    assert [(i.keyword, i.stage) for i in instructions] == [
        ("ARG", -1),
        ("FROM", 0),
        ("RUN", 0),
        ("FROM", 1),
        ("CMD", 1),
    ]
    assert instructions[2].value.split() == ["a", "&&", "b"]
    assert base_images(instructions) == [
        ("python:3.11.11-slim", "builder"),
        ("python:3.11.11-slim", None),
    ]
    assert exec_form(instructions[-1].value) == ["serve", "--port", "8080"]


def test_image_pinning_rules() -> None:
    assert image_is_pinned("python:3.11.11-slim-bookworm")
    assert image_is_pinned("registry.local:5000/team/app:1.2")
    assert image_is_pinned("python@sha256:" + "0" * 64)
    assert not image_is_pinned("python")
    assert not image_is_pinned("python:latest")
    assert not image_is_pinned("registry.local:5000/team/app")


def test_copy_sources_and_env_values() -> None:
    assert copy_sources("--chown=1:1 a b ./dest/") == ({"chown": "1:1"}, ["a", "b"])
    assert copy_sources("--from=builder /opt/venv /opt/venv") == (
        {"from": "builder"},
        ["/opt/venv"],
    )
    assert copy_sources('["with space", "/dst"]') == ({}, ["with space"])
    assert env_values('A=1 B="two words" C=$PATH') == {"A": "1", "B": "two words", "C": "$PATH"}
    assert env_values("LEGACY some value") == {"LEGACY": "some value"}


def test_dockerignore_rules_follow_docker_semantics() -> None:
    rules = dockerignore_rules("# comment\n/.venv\n**/__pycache__\n*.env\n!keep.env\n*.py[cod]\n")
    assert is_ignored(".venv/bin/python", rules)  # a directory takes its contents
    assert is_ignored("__pycache__/x.cpython-311.pyc", rules)  # ** matches no directory too
    assert is_ignored("pkg/sub/__pycache__/x.pyc", rules)
    assert is_ignored("secret.env", rules)
    assert not is_ignored("keep.env", rules)  # re-included by a later rule
    assert not is_ignored("k8s/secret.env", rules)  # * never crosses a /
    assert is_ignored("module.pyc", rules)
    assert not is_ignored("module.py", rules)
    assert not is_ignored("pkg/.venv", rules)  # the leading / anchors nothing extra


# --- the Dockerfiles ---------------------------------------------------------------------


def _instructions(dockerfile: str) -> list[Instruction]:
    return parse_dockerfile((REPO / dockerfile).read_text())


def _pyproject(field: str) -> Any:
    """`version` or the setuptools package `include` list (tomllib is 3.11+, we support 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    if field == "version":
        return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)
    return re.findall(r'"([^"]+)"', re.search(r"^include\s*=\s*\[([^\]]*)\]", text, re.M).group(1))


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_rules((REPO / ".dockerignore").read_text())


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_build_from_pinned_images(dockerfile: str) -> None:
    instructions = _instructions(dockerfile)
    bases = base_images(instructions)
    assert len(bases) >= 2, f"{dockerfile}: expected a builder and a runtime stage"
    aliases = {alias for _, alias in bases if alias}
    for image, _ in bases:
        assert image in aliases or image_is_pinned(image), f"{dockerfile}: FROM {image} unpinned"
    copied_from = {copy_sources(i.value)[0].get("from") for i in final_stage(instructions)}
    assert copied_from & aliases, f"{dockerfile}: the runtime stage copies nothing from a build"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copied_file_is_in_the_build_context(dockerfile: str) -> None:
    rules = _ignore_rules()
    copies = [i for i in _instructions(dockerfile) if i.keyword in {"COPY", "ADD"}]
    assert copies
    for ins in copies:
        flags, sources = copy_sources(ins.value)
        if "from" in flags:
            continue  # from another stage, not from the context
        for source in sources:
            assert "://" not in source, f"{dockerfile}: {ins.keyword} of a URL: {source}"
            matches = sorted(REPO.glob(source.rstrip("/")))
            assert matches, f"{dockerfile}: {ins.keyword} {source}: no such file"
            files = [m for m in matches if m.is_file()] + [
                f for m in matches if m.is_dir() for f in m.rglob("*") if f.is_file()
            ]
            sent = [f for f in files if not is_ignored(f.relative_to(REPO).as_posix(), rules)]
            assert sent, f"{dockerfile}: {ins.keyword} {source}: .dockerignore leaves nothing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_installs_every_package_of_the_distribution(dockerfile: str) -> None:
    """`pip install .` installs what is in the context: each package must be copied."""
    packages = [p.rstrip("*") for p in _pyproject("include")]
    copied = {
        source.rstrip("/")
        for ins in _instructions(dockerfile)
        if ins.keyword == "COPY"
        for flags, sources in [copy_sources(ins.value)]
        if "from" not in flags
        for source in sources
    }
    assert "pyproject.toml" in copied
    assert set(packages) <= copied, f"{dockerfile} does not copy {set(packages) - copied}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_final_stage_runs_as_the_non_root_image_user(dockerfile: str) -> None:
    users = [i.value for i in final_stage(_instructions(dockerfile)) if i.keyword == "USER"]
    assert users, f"{dockerfile}: the runtime stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) == IMAGE_UID, f"{dockerfile}: USER {users[-1]}"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"{dockerfile}: group {gid}"


def _entry_argv(dockerfile: str) -> tuple[list[str], dict[str, str]]:
    """ENTRYPOINT + CMD of the runtime stage, and the ENV it sets."""
    stage = final_stage(_instructions(dockerfile))
    entrypoint = [exec_form(i.value) for i in stage if i.keyword == "ENTRYPOINT"]
    cmd = [exec_form(i.value) for i in stage if i.keyword == "CMD"]
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            env.update(env_values(ins.value))
    assert entrypoint and cmd, f"{dockerfile}: needs exec-form ENTRYPOINT and CMD"
    return entrypoint[-1] + cmd[-1], env


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_entry_command_is_a_real_adaseg_command(
    dockerfile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, env = _entry_argv(dockerfile)
    assert argv[0] == "adaseg", f"{dockerfile}: ENTRYPOINT must be the adaseg console script"
    command = argv[1]
    assert command in COMMANDS, f"{dockerfile}: `adaseg {command}` is not a command"
    if not command_module_exists(command):
        pytest.skip(f"{COMMANDS[command][0]} is not written yet")
    for name, value in env.items():
        if "$" not in value:  # PATH=/opt/venv/bin:$PATH means nothing here
            monkeypatch.setenv(name, value)
    args = parse_adaseg_args(argv[1:])
    if command == "serve":  # `docker run` alone must start: a store in the writable /tmp
        settings = Settings.from_env().override(store=args.store, host=args.host, port=args.port)
        assert settings.store.startswith("file:///tmp/"), settings.store
        assert (settings.host, settings.port) == ("0.0.0.0", 8080)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_adaseg_command_help_exits_zero(command: str) -> None:
    """`adaseg CMD --help` in a fresh process: imports and arguments of every command work."""
    if not command_module_exists(command):
        pytest.skip(f"{COMMANDS[command][0]} is not written yet")
    adaseg = Path(sys.executable).with_name("adaseg")
    done = subprocess.run(
        [str(adaseg), command, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"adaseg {command}" in done.stdout


def _makefile_torch_pin() -> str:
    match = re.search(r"^TORCH\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile: TORCH := torch==... not found"
    return match.group(1)


def test_controller_image_installs_cpu_torch_before_the_project() -> None:
    runs = [i.value for i in _instructions("controller_service/Dockerfile") if i.keyword == "RUN"]
    pin = _makefile_torch_pin()
    torch_runs = [n for n, run in enumerate(runs) if re.search(rf"\b{re.escape(pin)}\b", run)]
    assert torch_runs, f"controller image does not install {pin} (the Makefile's pin)"
    torch_run = runs[torch_runs[0]]
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run
    project_runs = [
        n for n, run in enumerate(runs) if re.search(r"pip install [^\n]*\.(\s|$)", run)
    ]
    assert project_runs and project_runs[0] > torch_runs[0], "torch must come first"
    assert not any("[" in runs[n] for n in project_runs), "the controller needs no extras"


def test_trainer_image_keeps_the_base_images_cuda_torch() -> None:
    instructions = _instructions("trainer_image/Dockerfile")
    for image, _ in base_images(instructions):
        assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", image), image
    runs = [i.value for i in instructions if i.keyword == "RUN"]
    # the pipelines' components run in this image too, and need kfp's executor
    installs = [run for run in runs if "pip install" in run and ".[trainer,pipelines]" in run]
    assert installs, "trainer image does not install the project with both extras"
    assert all(re.search(r"(--constraint|-c)\s+\S+", run) for run in installs)
    torch_requirement = r"pip install[^&|;]*\s['\"]?torch(\s|[=<>~!\[]|['\"]?$)"
    assert not any(re.search(torch_requirement, run) for run in runs), "torch reinstalled"


def test_make_images_builds_the_images_the_manifests_run() -> None:
    builds = dict(re.findall(r"docker build -f (\S+) -t (\S+) \.", (REPO / "Makefile").read_text()))
    assert set(builds) == set(DOCKERFILES), f"make images builds {builds}"
    version = _pyproject("version")
    manifests = {
        "controller_service/Dockerfile": REPO / "k8s/base/controller/deployment.yaml",
        "trainer_image/Dockerfile": REPO / "k8s/base/trainer/job.yaml",
    }
    for dockerfile, manifest in manifests.items():
        workload = yaml.safe_load(manifest.read_text())
        pod = workload["spec"]["template"]["spec"]
        assert [c["image"] for c in pod["containers"]] == [builds[dockerfile]]
        assert builds[dockerfile].endswith(f":{version}"), "image tag != project version"
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID


def test_dockerignore_keeps_credentials_and_clutter_out() -> None:
    rules = _ignore_rules()
    for path in (
        ".env",
        "k8s/base/secrets/minio.env",
        "controller_service/.env",
        ".venv/bin/python",
        ".git/config",
        "controller_service/__pycache__/cli.cpython-311.pyc",
    ):
        assert is_ignored(path, rules), f"{path} would be sent to docker build"
    for path in ("pyproject.toml", "controller_service/cli.py", "trainer_image/__init__.py"):
        assert not is_ignored(path, rules), f"{path} is needed by the build"


def test_trainer_image_lets_kfp_stage_artifacts_as_its_user() -> None:
    """KFP's launcher writes under /gcs, /minio and /s3 as the (non-root) image user."""
    stage = final_stage(_instructions("trainer_image/Dockerfile"))
    runs = [i.value for i in stage if i.keyword == "RUN"]
    staging = [run for run in runs if "mkdir" in run and "chown" in run]
    assert staging, "the runtime stage does not create the KFP staging directories"
    for directory in ("/gcs", "/minio", "/s3"):
        assert any(
            re.search(rf"chown {IMAGE_UID}:{IMAGE_UID}\b.*\s{directory}\b", run) for run in staging
        ), directory


# --- offline builds (wheelhouse/) and the podman build ------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_builder_stage_can_install_offline_from_the_wheelhouse(dockerfile: str) -> None:
    """`--build-arg PIP_NO_INDEX=1` makes pip use only wheelhouse/; the default stays online,
    and nothing of the wheelhouse reaches the runtime image."""
    instructions = _instructions(dockerfile)
    builder = [i for i in instructions if i.stage == 0]
    args = {
        name.strip(): default.strip()
        for i in builder
        if i.keyword == "ARG"
        for name, _, default in [i.value.partition("=")]
    }
    assert args.get("PIP_NO_INDEX") == "0", f"{dockerfile}: ARG PIP_NO_INDEX=0 (online by default)"
    env = {k: v for i in builder if i.keyword == "ENV" for k, v in env_values(i.value).items()}
    assert env.get("PIP_FIND_LINKS") == "/wheelhouse"
    copies = [copy_sources(i.value) for i in builder if i.keyword == "COPY"]
    assert ({}, ["wheelhouse/"]) in copies, f"{dockerfile}: COPY wheelhouse/ /wheelhouse/"
    first_pip = next(n for n, i in enumerate(builder) if i.keyword == "RUN" and "pip " in i.value)
    wheelhouse_copy = next(
        n for n, i in enumerate(builder) if i.keyword == "COPY" and "wheelhouse" in i.value
    )
    assert wheelhouse_copy < first_pip, "the wheelhouse must be there before pip runs"
    runtime = final_stage(instructions)
    assert not any("wheelhouse" in i.value for i in runtime), "wheelhouse in the runtime image"


def test_wheelhouse_is_in_the_build_context_and_out_of_git() -> None:
    rules = _ignore_rules()
    assert not is_ignored("wheelhouse/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", rules)
    assert (REPO / "wheelhouse/README.md").is_file()  # COPY needs the folder to exist
    if (REPO / ".git").exists() and shutil.which("git"):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "wheelhouse/torch-2.13.0-cp311-none-any.whl"],
            cwd=REPO,
            timeout=30,
        )
        assert ignored.returncode == 0, "wheels in wheelhouse/ must be git-ignored"
        kept = subprocess.run(
            ["git", "check-ignore", "-q", "wheelhouse/README.md"], cwd=REPO, timeout=30
        )
        assert kept.returncode == 1, "wheelhouse/README.md must stay in git"


def test_podman_build_makes_the_images_the_manifests_run() -> None:
    """`make images-podman` / `make test-containers` build the tags `make images` builds,
    from the same Dockerfiles, offline, with the Makefile's torch pin."""
    from tests.containers import images

    makefile = (REPO / "Makefile").read_text()
    docker = dict(re.findall(r"docker build -f (\S+) -t (\S+) \.", makefile))
    assert docker == {
        "controller_service/Dockerfile": images.CONTROLLER_IMAGE,
        "trainer_image/Dockerfile": images.TRAINER_IMAGE,
    }
    source = (REPO / "tests/containers/images.py").read_text()
    for dockerfile in DOCKERFILES:
        assert f'build("{dockerfile}"' in source.replace("\n", " "), dockerfile
    assert source.count('PIP_NO_INDEX="1"') == 2
    assert '"--network", "none"' in source
    for target in ("images-podman", "test-containers"):
        recipe = re.search(rf"^{target}:.*\n\t(.+)$", makefile, re.M)
        assert recipe, f"Makefile: no {target} target"
    assert re.search(r"^PODMAN_ARGS = --torch \$\(TORCH\)", makefile, re.M)
