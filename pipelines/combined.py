"""Search, then transfer with the policy it found: one pipeline, for clusters only.

The transfer task waits for every population member (``.after`` the task in
the loop, which KFP turns into a dependency on the whole ``ParallelFor``) and
takes the policy run id from the search's reporter. kfp.local cannot run a
task that depends on a loop, so this pipeline is compiled and checked, not run
locally; its two halves are the search and transfer pipelines, which are.
"""

from typing import NamedTuple

from kfp import dsl

from controller_service.search.options import (
    DEFAULT_POPULATION,
    DEFAULT_ROUNDS,
    DEFAULT_TRANSFER_MODE,
)
from pipelines import components as c
from pipelines.search import add_search_tasks
from pipelines.transfer import add_transfer_task


class CombinedOutputs(NamedTuple):
    run_id: str
    best_checkpoint_uri: str
    best_pq: float
    search_metrics: dsl.Metrics
    search_report: dsl.Markdown
    search_report_html: dsl.HTML
    transfer_checkpoint_uri: str
    transfer_metrics: dsl.Metrics
    transfer_report: dsl.Markdown


def build_combined_pipeline(image: str = c.TRAINER_IMAGE):
    """The combined pipeline with its tasks in ``image``."""

    def adaseg_search_transfer(
        controller_url: str = c.DEFAULT_CONTROLLER_URL,
        data_dir: str = c.DATA_MOUNT_PATH,
        data_pvc: str = c.DEFAULT_DATA_PVC,
        store_uri: str = c.DEFAULT_STORE_URI,
        s3_endpoint: str = c.DEFAULT_S3_ENDPOINT,
        s3_secure: bool = False,
        loss_names: list = [],  # noqa: B006 - a KFP parameter default, never mutated
        population: int = DEFAULT_POPULATION,
        rounds: int = DEFAULT_ROUNDS,
        seed: int = 0,
        run_options: dict = {},  # noqa: B006 - a KFP parameter default, never mutated
        iterations: int = 0,
        batch_size: int = 0,
        device: str = "cuda",
        model: str = c.DEFAULT_MODEL,
        model_config: dict = c.DEFAULT_MODEL_CONFIG,
        transfer_data_dir: str = c.DATA_MOUNT_PATH,
        transfer_data_pvc: str = c.DEFAULT_DATA_PVC,
        transfer_epochs: int = DEFAULT_ROUNDS,
        transfer_mode: str = DEFAULT_TRANSFER_MODE,
        transfer_gpus: int = 1,
        transfer_batch_size: int = 0,
        transfer_iterations_per_epoch: int = 0,
        transfer_model: str = c.DEFAULT_MODEL,
        transfer_model_config: dict = c.DEFAULT_MODEL_CONFIG,
        transfer_first_epoch: str = "policy",
        gpu_node_selector: dict = c.DEFAULT_GPU_NODE_SELECTOR,
        gpu_tolerations: list = c.DEFAULT_GPU_TOLERATIONS,
        minio_secret: str = c.DEFAULT_MINIO_SECRET,
        token_secret: str = c.DEFAULT_TOKEN_SECRET,
    ) -> CombinedOutputs:
        placement = dict(
            image=image,
            gpu_node_selector=gpu_node_selector,
            gpu_tolerations=gpu_tolerations,
            minio_secret=minio_secret,
            token_secret=token_secret,
        )
        common = dict(
            controller_url=controller_url,
            store_uri=store_uri,
            s3_endpoint=s3_endpoint,
            s3_secure=s3_secure,
            device=device,
            seed=seed,
        )
        search = add_search_tasks(
            data_dir=data_dir,
            data_pvc=data_pvc,
            loss_names=loss_names,
            population=population,
            rounds=rounds,
            run_options=run_options,
            iterations=iterations,
            batch_size=batch_size,
            model=model,
            model_config=model_config,
            **common,
            **placement,
        )
        transfer = add_transfer_task(
            policy_run=search.reporter.outputs["run_id"],
            data_dir=transfer_data_dir,
            data_pvc=transfer_data_pvc,
            epochs=transfer_epochs,
            mode=transfer_mode,
            gpus=transfer_gpus,
            transfer_id="",
            batch_size=transfer_batch_size,
            iterations_per_epoch=transfer_iterations_per_epoch,
            model=transfer_model,
            model_config=transfer_model_config,
            first_epoch=transfer_first_epoch,
            **common,
            **placement,
        )
        transfer.after(search.member)
        found = search.reporter.outputs
        return CombinedOutputs(
            run_id=found["run_id"],
            best_checkpoint_uri=found["best_checkpoint_uri"],
            best_pq=found["best_pq"],
            search_metrics=found["metrics"],
            search_report=found["report"],
            search_report_html=found["report_html"],
            transfer_checkpoint_uri=transfer.outputs["checkpoint_uri"],
            transfer_metrics=transfer.outputs["metrics"],
            transfer_report=transfer.outputs["report"],
        )

    adaseg_search_transfer.__doc__ = c.pipeline_docstring(
        "Ada-Segment search followed by a transfer run with the policy it found "
        "(for clusters; the transfer waits for the whole population).",
        adaseg_search_transfer,
    )
    return dsl.pipeline(name="adaseg-search-transfer")(adaseg_search_transfer)


combined_pipeline = build_combined_pipeline()
