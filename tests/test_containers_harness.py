"""The pods ``make test-containers`` plays are the manifests' pods (no podman needed here).

tests/containers/e2e.py does a kubelet's share of the work podman 4.3 does not
do: ``$(VAR)`` expansion in args, the Job's completion-index annotation, one
emptyDir per pod. These tests hold it to that on the rendered manifests, so a
change to k8s/ that the container test would play wrongly fails in ``make test``.
"""

from __future__ import annotations

from typing import Any

from tests.containers.e2e import container_env, expand, pod_from_template, private_empty_dirs
from tests.test_dockerfiles import parse_adaseg_args
from tests.test_k8s import find, k8s_tree, rendered  # noqa: F401 - pytest fixtures

RUN_CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "adaseg-trainer-run"},
    "data": {"run-id": "3f2c0a9b1d7e"},
}
INDEX = "batch.kubernetes.io/job-completion-index"


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert expand("$(A)-$(B)", env) == "x-$(B)"  # undefined stays as written
    assert expand("$$(A) $$ $(EMPTY)|", env) == "$(A) $ |"  # $$ escapes
    assert expand("$(A)$(A)", env) == "xx"
    assert expand("$A ${A}", env) == "$A ${A}"  # only $(NAME) is a reference


def test_env_values_are_expanded_with_the_variables_before_them() -> None:
    container = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "$(A)-$(C)"}]}
    assert container_env(container, [], {}) == {"A": "1", "B": "1-$(C)"}


def _local(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:  # noqa: F811
    return [*rendered["overlays/local"], RUN_CONFIG_MAP]


def test_trainer_pods_run_the_jobs_worker_command_with_their_index(
    rendered: dict[str, list[dict[str, Any]]],  # noqa: F811
) -> None:
    objects = _local(rendered)
    job = find(objects, "Job", "adaseg-trainer")
    template = job["spec"]["template"]
    pod = pod_from_template("adaseg-trainer-1", template, objects, {INDEX: "1"})
    (container,) = pod["spec"]["containers"]
    (original,) = template["spec"]["containers"]
    args = parse_adaseg_args(container["args"])
    assert (args.worker_id, args.run, args.device) == ("1", "3f2c0a9b1d7e", "cpu")
    assert args.controller == "http://adaseg-controller:8080"
    assert args.store == "s3://adaseg/store"
    assert not any("$(" in arg for arg in container["args"])
    # everything but the args is the template's own
    assert container["securityContext"] == original["securityContext"]
    assert pod["spec"]["securityContext"] == template["spec"]["securityContext"]
    assert container["env"] == original["env"] and container["envFrom"] == original["envFrom"]
    assert container["volumeMounts"] == original["volumeMounts"]
    assert pod["metadata"]["annotations"][INDEX] == "1"
    assert pod["metadata"]["labels"] == template["metadata"]["labels"]
    assert "args" in original and original["args"] != container["args"]  # the template untouched


def test_controller_pod_is_the_deployments_template_without_probes(
    rendered: dict[str, list[dict[str, Any]]],  # noqa: F811
) -> None:
    objects = _local(rendered)
    template = find(objects, "Deployment", "adaseg-controller")["spec"]["template"]
    pod = pod_from_template("adaseg-controller", template, objects)
    (container,) = pod["spec"]["containers"]
    (original,) = template["spec"]["containers"]
    args = parse_adaseg_args(container["args"])
    assert (args.store, args.host, args.port) == ("s3://adaseg/store", "0.0.0.0", 8080)
    assert not {"startupProbe", "livenessProbe", "readinessProbe"} & set(container)
    assert {"livenessProbe", "readinessProbe"} <= set(original)  # e2e polls readiness itself
    assert container["securityContext"] == original["securityContext"]
    assert container["resources"] == original["resources"]


def test_every_pod_gets_its_own_empty_dirs(
    rendered: dict[str, list[dict[str, Any]]],  # noqa: F811
) -> None:
    objects = _local(rendered)
    template = find(objects, "Job", "adaseg-trainer")["spec"]["template"]
    pods = [
        private_empty_dirs(
            pod_from_template(f"adaseg-trainer-{i}", template, objects, {INDEX: "0"})
        )
        for i in (0, 1)
    ]
    names = [{v["name"] for v in pod["spec"]["volumes"]} for pod in pods]
    for i, pod in enumerate(pods):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for mount in pod["spec"]["containers"][0]["volumeMounts"]:
            volume = volumes[mount["name"]]  # every mount still names a volume
            if "emptyDir" in volume:
                assert mount["name"].startswith(f"adaseg-trainer-{i}-")
            else:
                assert volume["persistentVolumeClaim"]["claimName"] == "adaseg-data"
    shared = names[0] & names[1]
    assert shared == {"data"}, "only the claim's volume may be shared between pods"
