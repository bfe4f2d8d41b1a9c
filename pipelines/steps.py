"""What each pipeline task does inside its container, as plain Python.

KFP lightweight components are shipped as the source text of one function, so
they cannot call helpers of their own module. Each component in
:mod:`pipelines.components` therefore imports this module (installed in the
trainer image, and in the local venv) and calls one function here. That keeps
the components a few lines long and lets this code be tested without KFP.

Training runs as a child process of the ``adaseg`` CLI (``adaseg worker``,
``adaseg transfer``, under ``torchrun`` for several GPUs): the same command a
user or the Kubernetes Job runs, with its own SIGTERM handling, and a crash in
it is a failed task that KFP retries rather than a dead executor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller_service.contract.external import DEFAULT_FIRST_EPOCH
from controller_service.contract.keys import transfer_key


class StepFailed(RuntimeError):
    """A training command exited with a non-zero status."""


def s3_environment(s3_endpoint: str, s3_secure: bool) -> dict[str, str]:
    """``ADASEG_S3_*`` settings that are not secret and so come as pipeline
    parameters; the keys come from a Kubernetes Secret as environment variables."""
    if not s3_endpoint:
        return {}
    return {"ADASEG_S3_ENDPOINT": s3_endpoint, "ADASEG_S3_SECURE": "true" if s3_secure else "false"}


def create_run(
    controller_url: str,
    loss_names: Sequence[str],
    population: int,
    rounds: int,
    seed: int,
    name: str = "",
    options: Mapping[str, Any] | None = None,
    model: str = "",
    model_config: Mapping[str, Any] | None = None,
) -> str:
    """Create a run on the controller and return its id.

    ``options`` holds the other fields of ``POST /v1/runs`` (sigma, policy_lr,
    lease_seconds, ...); the explicit arguments win over it. Empty ``loss_names`` are
    those of the trainers' ``model`` with ``model_config`` (the same arguments the member
    tasks get), so a pipeline of another model needs no list of its losses.
    """
    from controller_service.contract.client import ControllerClient

    if not loss_names:
        loss_names = run_loss_names(model, model_config)
    body = dict(options or {})
    body.update(population=int(population), rounds=int(rounds), seed=int(seed))
    if name:
        body["name"] = name
    client = ControllerClient(controller_url)
    client.wait_ready()
    run = client.create_run(list(loss_names), **body)
    print(f"created run {run.id}: population {population}, rounds {rounds}", flush=True)
    return run.id


def run_loss_names(model: str, model_config: Mapping[str, Any] | None) -> list[str]:
    """The loss names a run for trainers of ``model`` ("" = their default) is created with."""
    from trainer_image import DEFAULT_MODEL
    from trainer_image.models.registry import model_loss_names

    return model_loss_names(model or DEFAULT_MODEL, model_config)


def member_slots(run_id: str, population: int) -> list[dict[str, str]]:
    """The loop items of the members after member 0, which is the reporter task.

    The run id travels inside every item because kfp.local (2.16) replaces any
    task output fed into a ``ParallelFor`` with the loop item itself.
    """
    if population < 1:
        raise ValueError(f"population must be at least 1, got {population}")
    return [{"run_id": run_id, "slot": f"m{j:02d}"} for j in range(1, population)]


def worker_id(job_id: str, slot: str) -> str:
    """The worker name of one member task: the pipeline run's id and the task's slot.

    The same for every retry of the task (KFP retries a failed task within the
    same run, with the same inputs), so a retried task leases under its previous
    name and the controller hands it back the member that attempt held, instead
    of leaving it idle until the lease expires (``lease_seconds``, 600 s by
    default). Unique within the run, because each slot is (``m00`` is the
    reporter task, ``m01``... the loop's items). Never derived from the pod, whose
    name changes with every attempt.
    """
    if not job_id or not slot:
        raise ValueError(f"a worker id needs the run id and a slot, got {job_id!r}, {slot!r}")
    return f"kfp-{job_id}-{slot}"


def _optional(flag: str, value: int | float | str) -> list[str]:
    """A CLI option only when it is set (a pipeline parameter of 0 or "" means "the CLI's
    default")."""
    return [flag, str(value)] if value else []


def _whole_numbers_as_ints(value: Any) -> Any:
    """KFP hands a ``dict`` parameter over as a protobuf Struct, whose numbers are all
    doubles: ``{"head_channels": 16}`` arrives as ``16.0``, which a layer size cannot be.
    Whole numbers become ints again (a float setting written 8.0 then reads 8, which
    Python computes with alike)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: _whole_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_ints(item) for item in value]
    return value


def _model_options(model: str, model_config: Mapping[str, Any] | None) -> list[str]:
    """``--model`` and ``--model-config`` (as JSON), each only when set; ``{}`` or ``""``
    leave the trainer's default model and its default (CPU-sized) settings."""
    if model_config is not None and not isinstance(model_config, Mapping):
        raise ValueError(f"model_config must be a JSON object, got {model_config!r}")
    options = _optional("--model", model)
    if model_config:
        config = _whole_numbers_as_ints(dict(model_config))
        options += ["--model-config", json.dumps(config, sort_keys=True)]
    return options


def worker_command(
    *,
    controller_url: str,
    run_id: str,
    data_dir: str,
    store_uri: str,
    worker: str,
    device: str = "auto",
    iterations: int = 0,
    batch_size: int = 0,
    model: str = "",
    model_config: Mapping[str, Any] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """``adaseg worker`` for one population member, run until the run is finished."""
    return [
        python, "-m", "controller_service", "worker",
        "--controller", controller_url, "--run", run_id, "--data", data_dir,
        "--store", store_uri, "--device", device, "--worker-id", worker,
        *_optional("--iterations", iterations), *_optional("--batch-size", batch_size),
        *_model_options(model, model_config),
    ]  # fmt: skip


def transfer_command(
    *,
    controller_url: str,
    policy_run: str,
    data_dir: str,
    store_uri: str,
    epochs: int,
    mode: str,
    transfer_id: str,
    gpus: int = 1,
    device: str = "auto",
    batch_size: int = 0,
    iterations_per_epoch: int = 0,
    seed: int = 0,
    model: str = "",
    model_config: Mapping[str, Any] | None = None,
    first_epoch: str = DEFAULT_FIRST_EPOCH,
    python: str = sys.executable,
) -> list[str]:
    """``adaseg transfer``; under ``torchrun`` with one process per GPU when ``gpus > 1``.

    ``torch.distributed.run`` is torchrun's module, so no script has to be on PATH.
    """
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    launcher = [python]
    if gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus)]
    return [
        *launcher, "-m", "controller_service", "transfer",
        "--controller", controller_url, "--policy-run", policy_run, "--data", data_dir,
        "--epochs", str(epochs), "--mode", mode, "--store", store_uri,
        "--transfer-id", transfer_id, "--device", device, "--seed", str(seed),
        "--first-epoch", first_epoch,
        *_optional("--batch-size", batch_size),
        *_optional("--iterations-per-epoch", iterations_per_epoch),
        *_model_options(model, model_config),
    ]  # fmt: skip


def default_transfer_id(policy_run: str, mode: str, job_id: str) -> str:
    """Stable across retries of the task (same KFP job), so a retried transfer
    resumes from its store objects instead of starting a second one."""
    return f"{policy_run}-{mode}-kfp{job_id}"


def run_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Run ``argv`` with the task's stdout/stderr, forwarding SIGTERM and SIGINT.

    Kubernetes sends SIGTERM to the task's process on eviction; forwarding it
    lets the worker stop at the next step and leave its lease to expire, as it
    does when run directly.
    """
    full_env = {**os.environ, **(env or {})}
    print("running: " + " ".join(argv), flush=True)
    proc = subprocess.Popen(list(argv), env=full_env)
    forwarded = (signal.SIGTERM, signal.SIGINT)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in forwarded:
            previous[sig] = signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0:
        raise StepFailed(f"{' '.join(argv[:6])} ... exited with status {code}")


def publish(metrics: Any, values: Mapping[str, float], pages: Mapping[str, str]) -> None:
    """Log ``values`` on a KFP ``Metrics`` output and write each page (path → text).

    Both output-publishing components end this way; KFP uploads the files after
    the component returns."""
    for name, value in values.items():
        metrics.log_metric(name, value)
    for path, text in pages.items():
        Path(path).write_text(text, encoding="utf-8")


@dataclass(frozen=True)
class SearchSummary:
    """The outputs of the search pipeline, from the finished run record."""

    run_id: str
    best_checkpoint_uri: str
    best_pq: float
    metrics: dict[str, float]
    markdown: str
    html: str


def _figures(run: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG plots of the run for the HTML page (matplotlib, headless)."""
    from pipelines.plots import plot_pq, plot_weights

    with tempfile.TemporaryDirectory() as tmp:
        weights = plot_weights(run, Path(tmp) / "weights.png").read_bytes()
        pq = plot_pq(run, Path(tmp) / "pq.png").read_bytes()
    return {"Loss weights per round": weights, "PQ per member and round": pq}


def summarize_search(controller_url: str, run_id: str) -> SearchSummary:
    """Read the run from the controller and render its outputs; the run must be finished."""
    from controller_service.contract.client import ControllerClient
    from pipelines import report

    run = ControllerClient(controller_url).get_run(run_id, history=True)
    if run.status != "finished" or run.best is None:
        raise StepFailed(f"run {run_id} is {run.status!r}, not finished")
    return SearchSummary(
        run_id=run_id,
        best_checkpoint_uri=run.best.checkpoint_uri,
        best_pq=run.best.pq,
        metrics=report.search_metrics(run),
        markdown=report.search_markdown(run),
        html=report.search_html(run, _figures(run)),
    )


@dataclass(frozen=True)
class TransferSummary:
    """The outputs of a transfer task, from the objects the transfer run stored."""

    transfer_id: str
    checkpoint_uri: str
    metrics: dict[str, float]
    markdown: str


def summarize_transfer(store_uri: str, transfer_id: str) -> TransferSummary:
    """Read ``transfers/{id}/metrics.json`` and check that ``final.pt`` exists."""
    from controller_service.contract.store import open_store
    from pipelines import report

    store = open_store(store_uri)
    checkpoint_key = transfer_key(transfer_id, "final.pt")
    if not store.exists(checkpoint_key):
        raise StepFailed(
            f"transfer {transfer_id} stored no checkpoint at {store.uri_of(checkpoint_key)}"
        )
    metrics = store.get_json(transfer_key(transfer_id, "metrics.json"))
    checkpoint_uri = store.uri_of(checkpoint_key)
    return TransferSummary(
        transfer_id=transfer_id,
        checkpoint_uri=checkpoint_uri,
        metrics=report.transfer_metrics(metrics),
        markdown=report.transfer_markdown(transfer_id, checkpoint_uri, metrics),
    )
