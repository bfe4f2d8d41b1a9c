"""The lightweight KFP components of the pipelines, and how their pods are dressed.

Each component is the source text of one function that KFP runs in the
trainer image, so every import sits inside the function body and the work is
one call into :mod:`pipelines.steps`. The image must hold the project with
its ``trainer`` and ``pipelines`` extras: ``install_kfp_package=False`` means
the pod never pip-installs kfp at start (clusters without internet work, and
the executor matches the SDK that compiled the pipeline).

Outside the functions, :func:`trainer_task` and :func:`light_task` attach the
Kubernetes side (GPU, Secrets, node selector and tolerations, data volume,
retries) with ``kfp-kubernetes``; kfp.local ignores all of it. Caching is off
for every task: a cached "create run" would hand a second submission the first
one's run id, and training is never a pure function of its inputs.
"""

from typing import NamedTuple

from kfp import dsl, kubernetes

# The image every task runs in; `adaseg pipeline compile --image` replaces it.
TRAINER_IMAGE = "adaseg-trainer:0.1.0"
IMAGE_UID = 10001  # the non-root user both Dockerfiles create (USER 10001:10001)
# The trainers' model: "" is their default (panoptic_deeplab); the GPU-sized
# settings, as the GPU overlay of k8s/ trains, because every training task asks
# for a GPU ({} is the CPU-sized default).
DEFAULT_MODEL = ""
DEFAULT_MODEL_CONFIG = {"preset": "gpu"}

# Cluster defaults of the pipeline parameters, matching k8s/base.
DEFAULT_CONTROLLER_URL = "http://adaseg-controller.adaseg.svc.cluster.local:8080"
DEFAULT_STORE_URI = "s3://adaseg/store"
DEFAULT_S3_ENDPOINT = "minio.adaseg.svc.cluster.local:9000"
DEFAULT_DATA_PVC = "adaseg-data"
# The Secrets of k8s/base/secrets, created again in the pipeline's namespace.
DEFAULT_MINIO_SECRET = "adaseg-minio"
DEFAULT_TOKEN_SECRET = "adaseg-controller-token"
# Set by the NVIDIA GPU operator's feature discovery on GPU nodes; pass {} to drop it.
DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

# Where the dataset PersistentVolumeClaim is mounted in trainer pods.
DATA_MOUNT_PATH = "/data"
GPU_RESOURCE = "nvidia.com/gpu"
TRAINER_CPU_REQUEST = "4"
TRAINER_CPU_LIMIT = "8"
TRAINER_MEMORY_REQUEST = "16Gi"
TRAINER_MEMORY_LIMIT = "32Gi"
# A trainer task that fails (node lost, OOM, preemption) starts again; the
# controller re-issues its lease, so a retry loses at most one interval.
TRAINER_RETRIES = 3
TRAINER_RETRY_BACKOFF = "60s"

# What each pipeline parameter means; the pipelines' docstrings are built from
# this, so the KFP UI shows the same text in all three.
PARAMETER_HELP = {
    "controller_url": "URL of the Ada-Segment controller service.",
    "data_dir": "Dataset folder (COCO panoptic layout) inside the trainer pods.",
    "data_pvc": f"PersistentVolumeClaim with the dataset, mounted at {DATA_MOUNT_PATH}.",
    "store_uri": "Object store of checkpoints and policies: s3://bucket/prefix or file:///dir.",
    "s3_endpoint": "MinIO/S3 host:port; empty to use the pods' ADASEG_S3_ENDPOINT.",
    "s3_secure": "Speak HTTPS to the S3 endpoint.",
    "loss_names": "Names of the model's losses, in its order; [] = those of model and "
    "model_config (`adaseg models`).",
    "population": "Models trained per round (m): one GPU task each.",
    "rounds": "Rounds of the search (T), after the round-0 pseudo epoch.",
    "seed": "Seed of the run (policy, sampling) and of the trainers.",
    "run_options": "Other fields of POST /v1/runs, e.g. {'sigma': 0.2, 'lease_seconds': 900}.",
    "iterations": "Iterations per round and member; 0 = one epoch of the proxy-train split.",
    "batch_size": "Batch size per GPU; 0 = the trainer's default.",
    "device": "cuda, cpu or auto.",
    "model": "Registered model of the trainers; empty = their default (panoptic_deeplab).",
    "model_config": "The model's settings (--model-config), e.g. {'preset': 'gpu'}; {} = its "
    "defaults (CPU-sized).",
    "policy_run": "Id of the finished search run whose policy gives the weights.",
    "epochs": "Epochs of the transfer run.",
    "mode": "Weights from the policy: ensemble (Eq. 7), final, static-pred or static-final.",
    "first_epoch": "Epoch 1 of a dynamic mode: equal (weights 1, the paper) or policy (the "
    "policy's weights for the search's l1; for a transfer on the data that was searched).",
    "gpus": "GPUs of the transfer pod; torchrun starts one process per GPU.",
    "transfer_id": "Name of the transfer in the store; empty = {policy_run}-{mode}-kfp{job id}.",
    "iterations_per_epoch": "Iterations per transfer epoch; 0 = the whole train split.",
    "transfer_data_dir": "Dataset folder of the transfer run.",
    "transfer_data_pvc": "PersistentVolumeClaim with the transfer dataset.",
    "transfer_epochs": "Epochs of the transfer run.",
    "transfer_mode": "Transfer mode: ensemble, final, static-pred or static-final.",
    "transfer_gpus": "GPUs of the transfer pod.",
    "transfer_batch_size": "Batch size per GPU of the transfer run; 0 = default.",
    "transfer_iterations_per_epoch": "Iterations per transfer epoch; 0 = whole split.",
    "transfer_model": "Registered model of the transfer run; empty = the trainers' default.",
    "transfer_model_config": "The transfer model's settings; {} = its defaults (CPU-sized).",
    "transfer_first_epoch": "Transfer epoch 1: policy (the policy's weights for the search's "
    "l1, for a transfer on the searched data) or equal (weights 1, the paper).",
    "gpu_node_selector": "nodeSelector of the GPU pods, e.g. {} or {'gpu-type': 'a100'}.",
    "gpu_tolerations": "Tolerations of the GPU pods (list of Kubernetes tolerations).",
    "minio_secret": "Secret with ADASEG_S3_ACCESS_KEY and ADASEG_S3_SECRET_KEY, in the "
    "pipeline's namespace.",
    "token_secret": "Secret with ADASEG_TOKEN, the controller's bearer token (optional).",
}


def pipeline_docstring(summary: str, pipeline_function) -> str:
    """A Google-style docstring with ``summary`` and every parameter of the
    pipeline function, which KFP turns into its description and parameter help."""
    import inspect

    names = inspect.signature(pipeline_function).parameters
    lines = [summary, "", "Args:"]
    lines += [f"    {name}: {PARAMETER_HELP[name]}" for name in names]
    return "\n".join(lines)


# Keys of the Secrets (as in k8s/base) and the variables they become.
S3_SECRET_KEYS = {
    "ADASEG_S3_ACCESS_KEY": "ADASEG_S3_ACCESS_KEY",
    "ADASEG_S3_SECRET_KEY": "ADASEG_S3_SECRET_KEY",
}
TOKEN_SECRET_KEYS = {"ADASEG_TOKEN": "ADASEG_TOKEN"}
# Pods labelled as trainers pass the NetworkPolicy of the controller and MinIO.
TRAINER_POD_LABELS = {
    "app.kubernetes.io/part-of": "adaseg",
    "app.kubernetes.io/component": "trainer",
}


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def create_run(
    controller_url: str,
    loss_names: list,
    population: int,
    rounds: int,
    seed: int,
    run_options: dict,
    run_name: str,
    model: str,
    model_config: dict,
) -> str:
    """Create a run on the controller; the output is its id."""
    from pipelines import steps

    return steps.create_run(
        controller_url,
        loss_names,
        population,
        rounds,
        seed,
        run_name,
        run_options,
        model=model,
        model_config=model_config,
    )


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def member_slots(run_id: str, population: int) -> list:
    """The loop items of members 1..population-1 (member 0 is the reporter task)."""
    from pipelines import steps

    return steps.member_slots(run_id, population)


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train_member(
    controller_url: str,
    run_id: str,
    slot: str,
    job_id: str,
    data_dir: str,
    store_uri: str,
    device: str,
    iterations: int,
    batch_size: int,
    model: str,
    model_config: dict,
    s3_endpoint: str,
    s3_secure: bool,
):
    """One population member: run ``adaseg worker`` until the run is finished."""
    from pipelines import steps

    steps.run_command(
        steps.worker_command(
            controller_url=controller_url,
            run_id=run_id,
            data_dir=data_dir,
            store_uri=store_uri,
            worker=steps.worker_id(job_id, slot),
            device=device,
            iterations=iterations,
            batch_size=batch_size,
            model=model,
            model_config=model_config,
        ),
        env=steps.s3_environment(s3_endpoint, s3_secure),
    )


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train_and_report(
    controller_url: str,
    run_id: str,
    job_id: str,
    data_dir: str,
    store_uri: str,
    device: str,
    iterations: int,
    batch_size: int,
    model: str,
    model_config: dict,
    s3_endpoint: str,
    s3_secure: bool,
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.Markdown],
    report_html: dsl.Output[dsl.HTML],
) -> NamedTuple(
    "SearchResult", [("run_id", str), ("best_checkpoint_uri", str), ("best_pq", float)]
):
    """Member 0: run ``adaseg worker`` until the run is finished, then publish the
    run's outputs (its worker exits only when the controller says finished)."""
    from pipelines import steps

    steps.run_command(
        steps.worker_command(
            controller_url=controller_url,
            run_id=run_id,
            data_dir=data_dir,
            store_uri=store_uri,
            worker=steps.worker_id(job_id, "m00"),
            device=device,
            iterations=iterations,
            batch_size=batch_size,
            model=model,
            model_config=model_config,
        ),
        env=steps.s3_environment(s3_endpoint, s3_secure),
    )
    summary = steps.summarize_search(controller_url, run_id)
    steps.publish(
        metrics, summary.metrics, {report.path: summary.markdown, report_html.path: summary.html}
    )
    return (summary.run_id, summary.best_checkpoint_uri, summary.best_pq)


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def transfer(
    controller_url: str,
    policy_run: str,
    data_dir: str,
    store_uri: str,
    epochs: int,
    mode: str,
    gpus: int,
    transfer_id: str,
    job_id: str,
    device: str,
    batch_size: int,
    iterations_per_epoch: int,
    seed: int,
    model: str,
    model_config: dict,
    first_epoch: str,
    s3_endpoint: str,
    s3_secure: bool,
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.Markdown],
) -> NamedTuple("TransferResult", [("checkpoint_uri", str), ("transfer_id", str), ("pq", float)]):
    """Train a fresh model with weights from the policy of ``policy_run`` (``adaseg
    transfer``, under torchrun when ``gpus`` > 1) and publish its checkpoint and PQ."""
    from pipelines import steps

    transfer_id = transfer_id or steps.default_transfer_id(policy_run, mode, job_id)
    steps.run_command(
        steps.transfer_command(
            controller_url=controller_url,
            policy_run=policy_run,
            data_dir=data_dir,
            store_uri=store_uri,
            epochs=epochs,
            mode=mode,
            transfer_id=transfer_id,
            gpus=gpus,
            device=device,
            batch_size=batch_size,
            iterations_per_epoch=iterations_per_epoch,
            seed=seed,
            model=model,
            model_config=model_config,
            first_epoch=first_epoch,
        ),
        env=steps.s3_environment(s3_endpoint, s3_secure),
    )
    summary = steps.summarize_transfer(store_uri, transfer_id)
    steps.publish(metrics, summary.metrics, {report.path: summary.markdown})
    return (summary.checkpoint_uri, summary.transfer_id, summary.metrics["pq"])


def run_as_image_user(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Run as the images' non-root user; kfp-kubernetes also drops every capability and
    the KFP compiler sets no privilege escalation and the RuntimeDefault seccomp profile."""
    return kubernetes.set_security_context(
        task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True
    )


def one_process_per_pod(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A task whose pod runs one training process: one thread per CPU of its limit.
    PyTorch would start one per core of the node, many times what the pod may use on
    a large GPU node. (Under torchrun, the transfer task, torchrun sets 1 per process.)"""
    return task.set_env_variable("OMP_NUM_THREADS", TRAINER_CPU_LIMIT)


def light_task(task: dsl.PipelineTask, *, image: str, token_secret) -> dsl.PipelineTask:
    """A short CPU task that may talk to the controller (with its token, if any)."""
    task.set_container_image(image)
    task.set_caching_options(False)
    run_as_image_user(task)
    task.set_cpu_request("100m").set_memory_request("256Mi").set_memory_limit("1Gi")
    kubernetes.use_secret_as_env(task, token_secret, TOKEN_SECRET_KEYS, optional=True)
    return task


def trainer_task(
    task: dsl.PipelineTask,
    *,
    image: str,
    gpus,
    data_pvc,
    node_selector,
    tolerations,
    minio_secret,
    token_secret,
) -> dsl.PipelineTask:
    """Dress a training task: ``gpus`` × nvidia.com/gpu, retries, the data volume,
    S3 keys and the controller token from Secrets, GPU node placement."""
    task.set_container_image(image)
    task.set_caching_options(False)
    run_as_image_user(task)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request(TRAINER_CPU_REQUEST).set_cpu_limit(TRAINER_CPU_LIMIT)
    task.set_memory_request(TRAINER_MEMORY_REQUEST).set_memory_limit(TRAINER_MEMORY_LIMIT)
    task.set_retry(num_retries=TRAINER_RETRIES, backoff_duration=TRAINER_RETRY_BACKOFF)
    task.set_env_variable("PYTHONUNBUFFERED", "1")
    kubernetes.use_secret_as_env(task, minio_secret, S3_SECRET_KEYS)
    # The token is optional: a controller without ADASEG_TOKEN accepts any client.
    kubernetes.use_secret_as_env(task, token_secret, TOKEN_SECRET_KEYS, optional=True)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    # kfp-kubernetes 2.16 mounts a claim read-write, with no read-only switch: the
    # read-only mount comes from the claim's volume (k8s/overlays/kubeflow).
    kubernetes.mount_pvc(task, pvc_name=data_pvc, mount_path=DATA_MOUNT_PATH)
    # DataLoader workers and NCCL exchange tensors through /dev/shm, which is
    # 64 MiB in a container unless a memory-backed volume replaces it.
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    for key, value in TRAINER_POD_LABELS.items():
        kubernetes.add_pod_label(task, key, value)
    return task
