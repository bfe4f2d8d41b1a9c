"""The search pipeline: one Ada-Segment run, population trained in parallel pods.

Shape (and why)::

    create-run ──► member-slots ──► ParallelFor(members 1..m-1): train-member
         └───────► train-and-report (member 0, then the run's outputs)

Every member task runs ``adaseg worker`` until the controller says the run is
finished, and any one worker can finish a run alone (it keeps leasing until no
work is left), so the tasks need no order among themselves. The outputs (run
id, best checkpoint URI, best PQ as ``dsl.Metrics``, Markdown and HTML pages)
come from member 0, which is a task beside the loop rather than after it:

* kfp.local (the local runner) cannot run a task that depends on a loop, nor a
  ``dsl.If`` on a loop item or task output, and runs every plain task before
  any loop. A summary task that waited for the run would therefore wait for
  members that have not started. Member 0 trains instead of waiting, so
  locally it does the whole run itself, the loop members then find it
  finished and exit, and the outputs appear once.
* On a cluster all m tasks start together and share the work; member 0's
  worker exits only when the run is finished, so its outputs are final.
* kfp.local also replaces any task output fed into a loop with the loop item,
  so the run id reaches the loop members inside the items of ``member-slots``.

The combined pipeline (:mod:`pipelines.combined`) reuses :func:`add_search_tasks`.
"""

from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl

from controller_service.search.options import DEFAULT_POPULATION, DEFAULT_ROUNDS
from pipelines import components as c


@dataclass(frozen=True)
class SearchTasks:
    """The tasks of a search, for pipelines that add steps after it."""

    create: dsl.PipelineTask
    reporter: dsl.PipelineTask
    member: dsl.PipelineTask  # inside the loop: ``.after(member)`` waits for all members


def add_search_tasks(
    *,
    image: str,
    controller_url,
    data_dir,
    data_pvc,
    store_uri,
    s3_endpoint,
    s3_secure,
    loss_names,
    population,
    rounds,
    seed,
    run_options,
    iterations,
    batch_size,
    device,
    model,
    model_config,
    gpu_node_selector,
    gpu_tolerations,
    minio_secret,
    token_secret,
) -> SearchTasks:
    """Add the search's tasks to the pipeline being defined (arguments are its channels)."""
    create = c.create_run(
        controller_url=controller_url,
        loss_names=loss_names,
        population=population,
        rounds=rounds,
        seed=seed,
        run_options=run_options,
        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        model=model,
        model_config=model_config,
    ).set_display_name("create run")
    c.light_task(create, image=image, token_secret=token_secret)

    slots = c.member_slots(run_id=create.output, population=population)
    slots.set_display_name("member slots")
    c.light_task(slots, image=image, token_secret=token_secret)

    pod = dict(
        image=image,
        data_pvc=data_pvc,
        node_selector=gpu_node_selector,
        tolerations=gpu_tolerations,
        minio_secret=minio_secret,
        token_secret=token_secret,
    )
    # Worker ids come from the pipeline run's id and the member's slot, so a retried
    # task reclaims its own lease (steps.worker_id).
    training = dict(
        controller_url=controller_url,
        job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        data_dir=data_dir,
        store_uri=store_uri,
        device=device,
        iterations=iterations,
        batch_size=batch_size,
        model=model,
        model_config=model_config,
        s3_endpoint=s3_endpoint,
        s3_secure=s3_secure,
    )
    reporter = c.train_and_report(run_id=create.output, **training)
    reporter.set_display_name("member 0 + run outputs")
    c.one_process_per_pod(c.trainer_task(reporter, gpus=1, **pod))

    with dsl.ParallelFor(slots.output, name="members") as slot:
        member = c.train_member(run_id=slot.run_id, slot=slot.slot, **training)
        member.set_display_name("member")
        c.one_process_per_pod(c.trainer_task(member, gpus=1, **pod))
    return SearchTasks(create=create, reporter=reporter, member=member)


class SearchOutputs(NamedTuple):
    run_id: str
    best_checkpoint_uri: str
    best_pq: float
    metrics: dsl.Metrics
    report: dsl.Markdown
    report_html: dsl.HTML


def build_search_pipeline(image: str = c.TRAINER_IMAGE):
    """The search pipeline with its tasks in ``image``."""

    def adaseg_search(
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
        gpu_node_selector: dict = c.DEFAULT_GPU_NODE_SELECTOR,
        gpu_tolerations: list = c.DEFAULT_GPU_TOLERATIONS,
        minio_secret: str = c.DEFAULT_MINIO_SECRET,
        token_secret: str = c.DEFAULT_TOKEN_SECRET,
    ) -> SearchOutputs:
        tasks = add_search_tasks(
            image=image,
            controller_url=controller_url,
            data_dir=data_dir,
            data_pvc=data_pvc,
            store_uri=store_uri,
            s3_endpoint=s3_endpoint,
            s3_secure=s3_secure,
            loss_names=loss_names,
            population=population,
            rounds=rounds,
            seed=seed,
            run_options=run_options,
            iterations=iterations,
            batch_size=batch_size,
            device=device,
            model=model,
            model_config=model_config,
            gpu_node_selector=gpu_node_selector,
            gpu_tolerations=gpu_tolerations,
            minio_secret=minio_secret,
            token_secret=token_secret,
        )
        out = tasks.reporter.outputs
        return SearchOutputs(
            run_id=out["run_id"],
            best_checkpoint_uri=out["best_checkpoint_uri"],
            best_pq=out["best_pq"],
            metrics=out["metrics"],
            report=out["report"],
            report_html=out["report_html"],
        )

    adaseg_search.__doc__ = c.pipeline_docstring(
        "Ada-Segment search: a controller run trained by a population of GPU "
        "pods; outputs the run id, best checkpoint, best PQ and a report of weights and PQ "
        "per round.",
        adaseg_search,
    )
    return dsl.pipeline(name="adaseg-search")(adaseg_search)


search_pipeline = build_search_pipeline()
