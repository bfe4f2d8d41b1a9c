"""The transfer pipeline: one model trained with loss weights from a stored policy.

A single task runs ``adaseg transfer`` (Eq. 7 and the other modes) against the
controller that holds the policy run, on ``gpus`` GPUs of one pod (torchrun,
one process per GPU, when ``gpus`` > 1). Its outputs are the checkpoint URI
and the PQ metrics of the real validation split.

The transfer id defaults to ``{policy_run}-{mode}-kfp{job id}``: the same for
every retry of the task, so a retry resumes the stored transfer run.
"""

from typing import NamedTuple

from kfp import dsl

from controller_service.contract.external import DEFAULT_FIRST_EPOCH
from controller_service.search.options import DEFAULT_ROUNDS, DEFAULT_TRANSFER_MODE
from pipelines import components as c


def add_transfer_task(
    *,
    image: str,
    controller_url,
    policy_run,
    data_dir,
    data_pvc,
    store_uri,
    s3_endpoint,
    s3_secure,
    epochs,
    mode,
    gpus,
    transfer_id,
    device,
    batch_size,
    iterations_per_epoch,
    seed,
    model,
    model_config,
    first_epoch,
    gpu_node_selector,
    gpu_tolerations,
    minio_secret,
    token_secret,
) -> dsl.PipelineTask:
    """Add the transfer task to the pipeline being defined (arguments are its channels)."""
    task = c.transfer(
        controller_url=controller_url,
        policy_run=policy_run,
        data_dir=data_dir,
        store_uri=store_uri,
        epochs=epochs,
        mode=mode,
        gpus=gpus,
        transfer_id=transfer_id,
        job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        device=device,
        batch_size=batch_size,
        iterations_per_epoch=iterations_per_epoch,
        seed=seed,
        model=model,
        model_config=model_config,
        first_epoch=first_epoch,
        s3_endpoint=s3_endpoint,
        s3_secure=s3_secure,
    ).set_display_name("transfer")
    return c.trainer_task(
        task,
        image=image,
        gpus=gpus,
        data_pvc=data_pvc,
        node_selector=gpu_node_selector,
        tolerations=gpu_tolerations,
        minio_secret=minio_secret,
        token_secret=token_secret,
    )


class TransferOutputs(NamedTuple):
    checkpoint_uri: str
    transfer_id: str
    pq: float
    metrics: dsl.Metrics
    report: dsl.Markdown


def build_transfer_pipeline(image: str = c.TRAINER_IMAGE):
    """The transfer pipeline with its task in ``image``."""

    def adaseg_transfer(
        policy_run: str,
        controller_url: str = c.DEFAULT_CONTROLLER_URL,
        data_dir: str = c.DATA_MOUNT_PATH,
        data_pvc: str = c.DEFAULT_DATA_PVC,
        store_uri: str = c.DEFAULT_STORE_URI,
        s3_endpoint: str = c.DEFAULT_S3_ENDPOINT,
        s3_secure: bool = False,
        epochs: int = DEFAULT_ROUNDS,
        mode: str = DEFAULT_TRANSFER_MODE,
        gpus: int = 1,
        transfer_id: str = "",
        device: str = "cuda",
        batch_size: int = 0,
        iterations_per_epoch: int = 0,
        seed: int = 0,
        model: str = c.DEFAULT_MODEL,
        model_config: dict = c.DEFAULT_MODEL_CONFIG,
        first_epoch: str = DEFAULT_FIRST_EPOCH,
        gpu_node_selector: dict = c.DEFAULT_GPU_NODE_SELECTOR,
        gpu_tolerations: list = c.DEFAULT_GPU_TOLERATIONS,
        minio_secret: str = c.DEFAULT_MINIO_SECRET,
        token_secret: str = c.DEFAULT_TOKEN_SECRET,
    ) -> TransferOutputs:
        task = add_transfer_task(
            image=image,
            controller_url=controller_url,
            policy_run=policy_run,
            data_dir=data_dir,
            data_pvc=data_pvc,
            store_uri=store_uri,
            s3_endpoint=s3_endpoint,
            s3_secure=s3_secure,
            epochs=epochs,
            mode=mode,
            gpus=gpus,
            transfer_id=transfer_id,
            device=device,
            batch_size=batch_size,
            iterations_per_epoch=iterations_per_epoch,
            seed=seed,
            model=model,
            model_config=model_config,
            first_epoch=first_epoch,
            gpu_node_selector=gpu_node_selector,
            gpu_tolerations=gpu_tolerations,
            minio_secret=minio_secret,
            token_secret=token_secret,
        )
        return TransferOutputs(
            checkpoint_uri=task.outputs["checkpoint_uri"],
            transfer_id=task.outputs["transfer_id"],
            pq=task.outputs["pq"],
            metrics=task.outputs["metrics"],
            report=task.outputs["report"],
        )

    adaseg_transfer.__doc__ = c.pipeline_docstring(
        "Ada-Segment transfer: train a fresh model with loss weights from the "
        "policy of a finished search run; outputs the checkpoint URI and PQ metrics.",
        adaseg_transfer,
    )
    return dsl.pipeline(name="adaseg-transfer")(adaseg_transfer)


transfer_pipeline = build_transfer_pipeline()
