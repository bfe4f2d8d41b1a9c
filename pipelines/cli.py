"""``adaseg pipeline compile|submit``: the Kubeflow pipelines as YAML, or as runs on a cluster.

``compile`` writes ``search.yaml``, ``transfer.yaml`` and ``combined.yaml``
(by default into ``pipelines/compiled/``, which is committed and tested to be
up to date). ``submit`` compiles one pipeline and starts a run of it with
``kfp.Client``, printing the run's URL.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"

# name → (module, builder taking the image); imported only when used, so
# `adaseg pipeline --help` does not pay for kfp.
PIPELINES: dict[str, tuple[str, str]] = {
    "search": ("pipelines.search", "build_search_pipeline"),
    "transfer": ("pipelines.transfer", "build_transfer_pipeline"),
    "combined": ("pipelines.combined", "build_combined_pipeline"),
}


class PipelineCliError(Exception):
    """Bad input or an unreachable cluster: printed as one line, exit status 1."""


def build_pipeline(name: str, image: str | None = None) -> Any:
    """The pipeline ``name`` (a KFP GraphComponent), with its tasks in ``image``."""
    import importlib

    from pipelines.components import TRAINER_IMAGE

    if name not in PIPELINES:
        raise PipelineCliError(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)}")
    module_name, builder = PIPELINES[name]
    build: Callable[[str], Any] = getattr(importlib.import_module(module_name), builder)
    return build(image or TRAINER_IMAGE)


_DEFAULT_LINE = re.compile(r"^(#    \S+: \S+ \[Default: )(.*)(\])$")


def _sorted_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_value(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_value(item) for item in value]
    return value


def canonical_header(text: str) -> str:
    """Sort the keys of dict defaults in the ``# Inputs:`` comment of a compiled pipeline.

    kfp 2.16 prints them in the order of a protobuf map, which changes from
    process to process; the YAML body is already sorted. Without this the
    committed YAMLs could never be checked for being up to date.
    """
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if not line.startswith("#"):
            break
        match = _DEFAULT_LINE.match(line)
        if match and match.group(2)[:1] in "[{":
            value = _sorted_value(ast.literal_eval(match.group(2)))
            lines[index] = f"{match.group(1)}{value}{match.group(3)}"
    return "\n".join(lines)


def compile_pipeline(name: str, path: Path, image: str | None = None) -> Path:
    """Compile one pipeline to ``path`` (YAML), deterministically."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(name, image), str(path))
    path.write_text(canonical_header(path.read_text(encoding="utf-8")), encoding="utf-8")
    return path


def compile_all(out_dir: Path, image: str | None = None) -> list[Path]:
    """Compile every pipeline into ``out_dir/{name}.yaml``."""
    return [compile_pipeline(name, out_dir / f"{name}.yaml", image) for name in PIPELINES]


def _convert(name: str, type_name: str, text: str) -> Any:
    """One ``--param`` value, read as the parameter's declared KFP type."""
    try:
        if type_name == "Integer":
            return int(text)
        if type_name == "Float":
            return float(text)
        if type_name == "Boolean":
            lowered = text.strip().lower()
            if lowered not in {"true", "false"}:
                raise ValueError("expected true or false")
            return lowered == "true"
        if type_name in {"List", "Dict"}:
            value = json.loads(text)
            expected = list if type_name == "List" else dict
            if not isinstance(value, expected):
                raise ValueError(f"expected a JSON {expected.__name__}")
            return value
    except ValueError as error:
        raise PipelineCliError(
            f"parameter {name!r} ({type_name}): cannot read {text!r}: {error}"
        ) from None
    return text


def parse_params(pairs: Sequence[str], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``["k=v", ...]`` → arguments of a pipeline with input specs ``inputs``.

    Each value is read as its parameter's type (JSON for lists and dicts). Unknown
    names and missing required parameters are refused here, before anything is
    sent to the cluster.
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise PipelineCliError(f"--param {pair!r}: expected NAME=VALUE")
        if name not in inputs:
            known = ", ".join(sorted(inputs))
            raise PipelineCliError(f"unknown parameter {name!r}; the pipeline takes: {known}")
        params[name] = _convert(name, inputs[name].type, text)
    missing = [n for n, spec in inputs.items() if not spec.optional and n not in params]
    if missing:
        raise PipelineCliError(f"missing required parameter(s): {', '.join(missing)}")
    return params


def check_reachable(host: str, timeout: float = 10.0) -> None:
    """Fail fast and clearly when nothing answers at ``host`` (kfp.Client would
    retry its health check for half a minute, then raise a TimeoutError)."""
    import httpx

    if not host.startswith(("http://", "https://")):
        raise PipelineCliError(f"--host {host!r}: expected an http:// or https:// URL")
    try:
        httpx.get(f"{host.rstrip('/')}/apis/v2beta1/healthz", timeout=timeout)
    except httpx.HTTPError as error:
        raise PipelineCliError(f"cannot reach Kubeflow Pipelines at {host}: {error}") from None


def submit(
    host: str,
    name: str,
    params: Sequence[str] = (),
    *,
    experiment: str = "adaseg",
    namespace: str | None = None,
    run_name: str | None = None,
    image: str | None = None,
    token: str | None = None,
) -> str:
    """Compile pipeline ``name``, start a run of it on the KFP at ``host``, return its URL."""
    pipeline = build_pipeline(name, image)
    arguments = parse_params(params, pipeline.component_spec.inputs)
    check_reachable(host)
    import kfp
    import urllib3
    from kfp_server_api.exceptions import ApiException

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", image)
        # kfp prints its own "Run details" line; stdout stays the URL alone, for scripts.
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0b2"
            try:
                client = kfp.Client(
                    host=host, namespace=namespace or "kubeflow", existing_token=token
                )
                result = client.create_run_from_pipeline_package(
                    str(package),
                    arguments=arguments,
                    run_name=run_name,
                    experiment_name=experiment,
                    namespace=namespace,
                    enable_caching=False,
                )
            except ApiException as error:
                raise PipelineCliError(
                    f"Kubeflow Pipelines at {host} refused the run: {error.status} {error.reason}: "
                    f"{(error.body or '').strip()[:500]}"
                ) from None
            except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as error:
                raise PipelineCliError(f"lost Kubeflow Pipelines at {host}: {error}") from None
    return f"{host.rstrip('/')}/#/runs/details/{result.run_id}"


IMAGE_HELP = "trainer image of every task (default adaseg-trainer:0.1.0)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="{compile,submit}")
    compile_ = commands.add_parser("compile", help="write the pipelines as KFP YAML")
    compile_.add_argument(
        "--out", type=Path, default=COMPILED_DIR, help=f"folder (default {COMPILED_DIR})"
    )
    compile_.add_argument("--image", help=IMAGE_HELP)

    submit_ = commands.add_parser("submit", help="start a pipeline run on a KFP cluster")
    submit_.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8888")
    submit_.add_argument("--pipeline", required=True, choices=sorted(PIPELINES))
    submit_.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline parameter (repeatable); JSON for lists and dicts",
    )
    submit_.add_argument("--experiment", default="adaseg", help="KFP experiment (default adaseg)")
    submit_.add_argument("--namespace", help="the user's namespace on multi-user Kubeflow")
    submit_.add_argument("--run-name", help="run name shown in the KFP UI")
    submit_.add_argument("--image", help=IMAGE_HELP)
    submit_.add_argument("--token", help="bearer token for the KFP API, if it needs one")


def main(args: argparse.Namespace) -> int:
    try:
        if args.action == "compile":
            for path in compile_all(args.out, args.image):
                print(path)
            return 0
        url = submit(
            args.host,
            args.pipeline,
            args.param,
            experiment=args.experiment,
            namespace=args.namespace,
            run_name=args.run_name,
            image=args.image,
            token=args.token,
        )
    except PipelineCliError as error:
        print(f"adaseg pipeline: {error}", file=sys.stderr)
        return 1
    print(url)
    return 0
