"""The compiled pipelines: up to date, shaped for a GPU cluster, and submittable.

The committed YAMLs under ``pipelines/compiled/`` are what users upload to
Kubeflow, so they are checked for being exactly what ``adaseg pipeline
compile`` writes now, and for the Kubernetes settings the issue asks for.
``adaseg pipeline submit`` is run against a small HTTP server that speaks the
part of the KFP v2beta1 API that ``kfp.Client`` uses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from controller_service.net import free_port
from pipelines.cli import (
    COMPILED_DIR,
    PIPELINES,
    PipelineCliError,
    build_pipeline,
    canonical_header,
    compile_pipeline,
    parse_params,
)
from pipelines.components import TRAINER_IMAGE

ROOT = Path(__file__).resolve().parents[1]
TRAINER_EXECUTORS = ("exec-train-member", "exec-train-and-report")


def adaseg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller_service", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def load(name: str, directory: Path = COMPILED_DIR) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, Kubernetes platform spec) of a compiled pipeline."""
    spec, platform = yaml.safe_load_all((directory / f"{name}.yaml").read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def secret_parameter(entry: dict[str, Any]) -> str:
    return entry["secretNameParameter"]["componentInputParameter"]


def all_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of the pipeline, the root's and those inside loops."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


# -- the committed YAMLs -------------------------------------------------------------------------


def test_committed_yamls_are_what_compile_writes_now(tmp_path: Path) -> None:
    # A second process: kfp's header order would differ between processes if the
    # compile were not made deterministic.
    result = adaseg("pipeline", "compile", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.yaml" for n in PIPELINES)
    for name in PIPELINES:
        fresh = (tmp_path / f"{name}.yaml").read_text()
        committed = COMPILED_DIR / f"{name}.yaml"
        assert committed.exists(), f"{committed} missing: run `adaseg pipeline compile`"
        assert fresh == committed.read_text(), (
            f"{committed} is out of date: run `adaseg pipeline compile` and commit it"
        )


def test_search_trainer_tasks_ask_for_one_gpu_in_the_trainer_image() -> None:
    spec, _ = load("search")
    executors = spec["deploymentSpec"]["executors"]
    for name in TRAINER_EXECUTORS:
        container = executors[name]["container"]
        accelerator = container["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu"
        assert accelerator["resourceCount"] == "1"
        assert container["image"] == TRAINER_IMAGE
    # the light tasks (create run, member slots) get no GPU
    for name in ("exec-create-run", "exec-member-slots"):
        assert "accelerator" not in executors[name]["container"].get("resources", {})


def test_search_trainer_tasks_get_credentials_data_and_gpu_placement_from_parameters() -> None:
    _, executors = load("search")
    for name in TRAINER_EXECUTORS:
        config = executors[name]
        by_env = {m["envVar"]: entry for entry in config["secretAsEnv"] for m in entry["keyToEnv"]}
        assert set(by_env) == {"ADASEG_S3_ACCESS_KEY", "ADASEG_S3_SECRET_KEY", "ADASEG_TOKEN"}
        for env in ("ADASEG_S3_ACCESS_KEY", "ADASEG_S3_SECRET_KEY"):
            assert by_env[env]["optional"] is False
            assert secret_parameter(by_env[env]).endswith("minio_secret")
        assert by_env["ADASEG_TOKEN"]["optional"] is True
        assert secret_parameter(by_env["ADASEG_TOKEN"]).endswith("token_secret")
        for entry in config["secretAsEnv"]:  # secret key = variable name, as in k8s/base
            assert all(m["secretKey"] == m["envVar"] for m in entry["keyToEnv"])
        assert config["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith(
            "gpu_node_selector"
        )
        [toleration] = config["tolerations"]
        assert toleration["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
        [pvc] = config["pvcMount"]
        assert pvc["mountPath"] == "/data"
        assert pvc["pvcNameParameter"]["componentInputParameter"].endswith("data_pvc")
        assert config["podMetadata"]["labels"]["app.kubernetes.io/component"] == "trainer"


def test_search_defaults_match_the_cluster_layout() -> None:
    spec, _ = load("search")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["population"]["defaultValue"] == 8
    assert params["gpu_node_selector"]["defaultValue"] == {"nvidia.com/gpu.present": "true"}
    assert params["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert params["loss_names"]["defaultValue"] == []  # the trainers' model's own
    # the names k8s/base uses for its Services and Secrets
    kustomization = (ROOT / "k8s/base/secrets/kustomization.yaml").read_text()
    for secret in ("minio_secret", "token_secret"):
        assert f"- name: {params[secret]['defaultValue']}\n" in kustomization
    controller = _service("controller/service.yaml")
    minio = _service("minio/service.yaml")
    assert params["controller_url"]["defaultValue"] == (
        f"http://{controller['name']}.adaseg.svc.cluster.local:{controller['port']}"
    )
    assert params["s3_endpoint"]["defaultValue"] == (
        f"{minio['name']}.adaseg.svc.cluster.local:{minio['port']}"
    )


def _service(path: str) -> dict[str, Any]:
    """Name and first port of a Service in k8s/base: what in-cluster URLs must point at."""
    service = yaml.safe_load((ROOT / "k8s/base" / path).read_text())
    assert service["kind"] == "Service"
    return {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_task_runs_as_the_images_non_root_user(name: str) -> None:
    spec, executors = load(name)
    images = spec["deploymentSpec"]["executors"]
    assert set(executors) == set(images), "every container task has Kubernetes settings"
    for executor, config in executors.items():
        assert config["securityContext"] == {
            "runAsUser": "10001",
            "runAsGroup": "10001",
            "runAsNonRoot": True,
        }, executor
    for dockerfile in ("controller_service/Dockerfile", "trainer_image/Dockerfile"):
        assert "USER 10001:10001" in (ROOT / dockerfile).read_text()


def test_search_trainer_tasks_retry_and_nothing_is_cached() -> None:
    spec, _ = load("search")
    tasks = all_tasks(spec)
    for name in ("train-member", "train-and-report"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] >= 1
    for name, task in tasks.items():
        if "componentRef" in task and not name.startswith("for-loop"):
            assert task.get("cachingOptions", {}).get("enableCache", False) is False, name


def test_search_runs_the_population_as_a_loop_plus_member_zero() -> None:
    spec, _ = load("search")
    root = spec["root"]["dag"]["tasks"]
    [loop_name] = [name for name, task in root.items() if "parameterIterator" in task]
    iterator = root[loop_name]["parameterIterator"]
    assert iterator["items"]["inputParameter"] == "pipelinechannel--member-slots-Output"
    loop_tasks = spec["components"][root[loop_name]["componentRef"]["name"]]["dag"]["tasks"]
    assert set(loop_tasks) == {"train-member"}
    # what lets kfp.local run it: no task waits for the loop
    for name, task in root.items():
        assert loop_name not in task.get("dependentTasks", []), name
    outputs = spec["root"]["outputDefinitions"]
    assert set(outputs["parameters"]) == {"run_id", "best_checkpoint_uri", "best_pq"}
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs["artifacts"].items()} == {
        "metrics": "system.Metrics",
        "report": "system.Markdown",
        "report_html": "system.HTML",
    }


def test_transfer_asks_for_gpus_from_its_parameter() -> None:
    spec, executors = load("transfer")
    container = spec["deploymentSpec"]["executors"]["exec-transfer"]["container"]
    accelerator = container["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu"
    assert "gpus" in accelerator["resourceCount"]
    assert executors["exec-transfer"]["secretAsEnv"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in inputs["policy_run"]  # required
    assert inputs["gpus"]["defaultValue"] == 1
    outputs = spec["root"]["outputDefinitions"]
    assert {"checkpoint_uri", "pq"} <= set(outputs["parameters"])
    assert outputs["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_combined_transfer_waits_for_the_whole_population() -> None:
    spec, _ = load("combined")
    root = spec["root"]["dag"]["tasks"]
    [loop_name] = [name for name, task in root.items() if "parameterIterator" in task]
    transfer = root["transfer"]
    assert loop_name in transfer["dependentTasks"]
    policy_run = transfer["inputs"]["parameters"]["policy_run"]["taskOutputParameter"]
    assert policy_run == {"outputParameterKey": "run_id", "producerTask": "train-and-report"}


# Training tasks of each pipeline, and the pipeline parameters their model comes from.
# the tasks that read the model parameters: the trainers, and "create run" for the run's
# loss names (an empty `loss_names` parameter: the model's own)
MODEL_TASKS = {
    "search": {"create-run": "", "train-member": "", "train-and-report": ""},
    "transfer": {"transfer": ""},
    "combined": {
        "create-run": "",
        "train-member": "",
        "train-and-report": "",
        "transfer": "transfer_",
    },
}


def _root_parameter(spec: dict[str, Any], task: dict[str, Any], name: str) -> str:
    """The pipeline parameter a task input comes from (through a loop's channel, if any)."""
    source = task["inputs"]["parameters"][name]["componentInputParameter"]
    return source.removeprefix("pipelinechannel--")


def _gpu_overlay_model_config() -> dict[str, Any]:
    """The --model-config the GPU overlay of k8s/ gives its trainers."""
    kustomization = yaml.safe_load((ROOT / "k8s/overlays/gpu/kustomization.yaml").read_text())
    values = [
        op["value"]
        for patch in kustomization["patches"]
        if "patch" in patch
        for op in yaml.safe_load(patch["patch"])
        if op.get("path", "").endswith("/args/-")
    ]
    return json.loads(values[values.index("--model-config") + 1])


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_task_that_reads_the_model_gets_the_pipeline_parameters(name: str) -> None:
    spec, _ = load(name)
    tasks = all_tasks(spec)
    params = spec["root"]["inputDefinitions"]["parameters"]
    for task_name, prefix in MODEL_TASKS[name].items():
        task = tasks[task_name]
        assert _root_parameter(spec, task, "model") == f"{prefix}model", task_name
        assert _root_parameter(spec, task, "model_config") == f"{prefix}model_config", task_name
        assert params[f"{prefix}model"]["parameterType"] == "STRING"
        # GPU tasks train the GPU-sized model by default, as the GPU overlay's Job does
        assert params[f"{prefix}model_config"]["defaultValue"] == _gpu_overlay_model_config()
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        code = "\n".join(spec["deploymentSpec"]["executors"][executor]["container"]["command"])
        assert "model=model" in code and "model_config=model_config" in code, executor
    assert not set(MODEL_TASKS[name]) ^ {
        t for t, task in tasks.items() if "model" in task.get("inputs", {}).get("parameters", {})
    }, "a task without the model parameters, or an unknown one"


@pytest.mark.parametrize(
    ("name", "parameter", "default"),
    [("transfer", "first_epoch", "equal"), ("combined", "transfer_first_epoch", "policy")],
)
def test_the_transfer_task_takes_its_first_epoch_rule_from_the_pipeline(
    name: str, parameter: str, default: str
) -> None:
    """A standalone transfer may be on other data: the paper's epoch 1 by default. The
    combined pipeline transfers on the data it searched: the policy's weights from epoch 1
    (docs/design.md)."""
    spec, _ = load(name)
    task = all_tasks(spec)["transfer"]
    assert _root_parameter(spec, task, "first_epoch") == parameter
    assert spec["root"]["inputDefinitions"]["parameters"][parameter]["defaultValue"] == default
    executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    code = "\n".join(spec["deploymentSpec"]["executors"][executor]["container"]["command"])
    assert "first_epoch=first_epoch" in code


@pytest.mark.parametrize("name", ["search", "combined"])
def test_worker_ids_come_from_the_run_id_and_the_slot_not_the_pod(name: str) -> None:
    """A retried task (same run, same inputs) must lease under its previous name."""
    spec, _ = load(name)
    tasks = all_tasks(spec)
    for task_name in ("train-member", "train-and-report"):
        inputs = tasks[task_name]["inputs"]["parameters"]
        assert inputs["job_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
        executor = spec["components"][tasks[task_name]["componentRef"]["name"]]["executorLabel"]
        code = "\n".join(spec["deploymentSpec"]["executors"][executor]["container"]["command"])
        assert "steps.worker_id(job_id, " in code, executor
        assert "gethostname" not in code and "HOSTNAME" not in code
    slot = tasks["train-member"]["inputs"]["parameters"]["slot"]
    assert slot["parameterExpressionSelector"] == 'parseJson(string_value)["slot"]'


def test_one_thread_per_cpu_where_a_pod_runs_one_training_process() -> None:
    """A member task's worker gets OMP_NUM_THREADS = its CPU limit; the transfer, which may
    run several torchrun processes in one pod, leaves it to torchrun (1 per process)."""
    spec, _ = load("combined")
    executors = spec["deploymentSpec"]["executors"]
    for name in (*TRAINER_EXECUTORS, "exec-transfer"):
        container = executors[name]["container"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        if name == "exec-transfer":
            assert "OMP_NUM_THREADS" not in env
        else:
            assert env["OMP_NUM_THREADS"] == str(int(container["resources"]["cpuLimit"]))


def test_image_option_replaces_the_image_of_every_task(tmp_path: Path) -> None:
    image = "registry.example.com/team/adaseg-trainer:0.1.0-rc1"
    compile_pipeline("combined", tmp_path / "combined.yaml", image=image)
    spec, _ = load("combined", tmp_path)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {image}


def test_trainer_image_has_what_the_components_run() -> None:
    """Components run ``python3 -m kfp.dsl.executor_main`` and import ``pipelines``
    in the trainer image without pip-installing anything, so the image must hold
    the ``pipelines`` extra (kfp) and the ``pipelines`` package."""
    dockerfile = (ROOT / "trainer_image/Dockerfile").read_text()
    extras = re.findall(r"pip install[^\n]*\"?\.\[([^\]]+)\]", dockerfile)
    assert extras, "trainer_image/Dockerfile does not pip install the project with extras"
    assert any("pipelines" in group.split(",") for group in extras), (
        f"trainer image installs extras {extras}; the pipelines need 'pipelines' (kfp)"
    )
    assert re.search(r"^COPY pipelines ", dockerfile, re.M)


# -- pure helpers of the CLI ---------------------------------------------------------------------


def test_canonical_header_sorts_dict_defaults_and_leaves_the_rest() -> None:
    text = (
        "# Inputs:\n"
        "#    tol: list [Default: [{'key': 'a', 'effect': 'NoSchedule'}]]\n"
        "#    sel: dict [Default: {'z': 'true', 'b': '1'}]\n"
        "#    name: str [Default: '{not parsed}']\n"
        "components:\n"
        "#    x: dict [Default: {'z': 1, 'a': 2}]\n"
    )
    assert canonical_header(text) == (
        "# Inputs:\n"
        "#    tol: list [Default: [{'effect': 'NoSchedule', 'key': 'a'}]]\n"
        "#    sel: dict [Default: {'b': '1', 'z': 'true'}]\n"
        "#    name: str [Default: '{not parsed}']\n"
        "components:\n"
        "#    x: dict [Default: {'z': 1, 'a': 2}]\n"  # not the header: untouched
    )


@pytest.fixture(scope="module")
def transfer_inputs() -> dict[str, Any]:
    return build_pipeline("transfer").component_spec.inputs


def test_params_are_read_as_their_declared_types(transfer_inputs: dict[str, Any]) -> None:
    params = parse_params(
        [
            "policy_run=abc123",
            "gpus=4",
            "s3_secure=True",
            "gpu_node_selector={}",
            'gpu_tolerations=[{"key": "gpu", "operator": "Exists"}]',
            "transfer_id=a=b",
        ],
        transfer_inputs,
    )
    assert params == {
        "policy_run": "abc123",
        "gpus": 4,
        "s3_secure": True,
        "gpu_node_selector": {},
        "gpu_tolerations": [{"key": "gpu", "operator": "Exists"}],
        "transfer_id": "a=b",
    }


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["policy_run=x", "gpus=two"], "'gpus' (Integer): cannot read 'two'"),
        (["policy_run=x", "s3_secure=yes"], "expected true or false"),
        (["policy_run=x", "gpu_tolerations={}"], "expected a JSON list"),
        (["policy_run=x", "gpu_node_selector={bad"], "'gpu_node_selector' (Dict)"),
        (["policy_run=x", "popluation=3"], "unknown parameter 'popluation'"),
        (["policy_run"], "expected NAME=VALUE"),
        (["gpus=2"], "missing required parameter(s): policy_run"),
    ],
)
def test_bad_params_are_refused_by_name(
    transfer_inputs: dict[str, Any], pairs: list[str], message: str
) -> None:
    with pytest.raises(PipelineCliError) as error:
        parse_params(pairs, transfer_inputs)
    assert message in str(error.value)


# -- submit --------------------------------------------------------------------------------------


class FakeKfp(BaseHTTPRequestHandler):
    """The KFP v2beta1 calls of ``kfp.Client.create_run_from_pipeline_package``."""

    requests: list[tuple[str, str, Any]]

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        self.requests.append(("GET", url.path, parse_qs(url.query)))
        if url.path == "/apis/v2beta1/healthz":
            self._reply({"multi_user": False})
        elif url.path == "/apis/v2beta1/experiments":
            self._reply({})  # no experiment of that name yet
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif self.path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-42", "display_name": body["display_name"]})
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_kfp() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    requests: list[tuple[str, str, Any]] = []
    handler = type("Handler", (FakeKfp,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_submit_starts_a_run_and_prints_its_url(
    fake_kfp: tuple[str, list[Any]], tmp_path: Path
) -> None:
    host, requests = fake_kfp
    result = subprocess.run(
        [sys.executable, "-m", "controller_service", "pipeline", "submit", "--host", host]
        + ["--pipeline", "search", "--param", "population=4", "--param", "rounds=3"]
        + ["--experiment", "adaseg-test", "--run-name", "smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "HOME": str(tmp_path)},  # no stray kfp context
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{host}/#/runs/details/run-42"
    [experiment] = [
        body
        for method, path, body in requests
        if path.endswith("/experiments") and method == "POST"
    ]
    assert experiment["display_name"] == "adaseg-test"
    [run] = [body for method, path, body in requests if path == "/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1"
    assert run["display_name"] == "smoke"
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "adaseg-search"
    assert run["runtime_config"]["parameters"] == {"population": 4, "rounds": 3}


def test_submit_to_an_unreachable_host_fails_fast_and_says_so() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    result = adaseg("pipeline", "submit", "--host", host, "--pipeline", "search")
    assert result.returncode == 1
    # our own probe, not kfp.Client's health check (30 s of retries, then a TimeoutError)
    assert f"cannot reach Kubeflow Pipelines at {host}" in result.stderr
    assert result.stdout == ""


def test_submit_refuses_bad_params_before_contacting_the_host() -> None:
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens: a bad param must win
    result = adaseg("pipeline", "submit", "--host", host, "--pipeline", "transfer")
    assert result.returncode == 1
    assert "missing required parameter(s): policy_run" in result.stderr
