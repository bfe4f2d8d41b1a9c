"""Offline checks of the Kubernetes manifests (no cluster here).

Every kustomization is rendered with `kubectl kustomize` on a copy of k8s/ in
which the committed *.env.example files stand in for the users' own *.env
files; every object must pass the Kubernetes 1.30 schema in strict mode; and
the rules a cluster would only enforce later (Pod Security "restricted",
resources, probes, network policy reach, references between objects, valid
`adaseg` command lines) are checked on what would be applied.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller_service.api.settings import Settings
from tests.test_dockerfiles import command_module_exists, parse_adaseg_args

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "adaseg"
# What users apply (the two steps of each overlay) and the bases they build on.
PLATFORMS = ("base", "overlays/local/platform", "overlays/gpu/platform")
WITH_TRAINER = ("overlays/local", "overlays/gpu")
KUSTOMIZATIONS = (*PLATFORMS, "base/trainer", *WITH_TRAINER)
# The pipeline namespace's Secrets and data claim (pipelines/README.md).
PIPELINE_NAMESPACE = "overlays/kubeflow"
# overlays/gpu with components/external-s3 added to its platform, as k8s/README.md says.
EXTERNAL_S3 = ("overlays/gpu-external-s3/platform", "overlays/gpu-external-s3")
# Plain manifests a user applies by hand (k8s/README.md).
STANDALONE = ("overlays/local/data-loader.yaml",)
# Objects the manifests use but the user creates (k8s/README.md); value stands in for tests.
USER_PROVIDED = {
    ("ConfigMap", "adaseg-trainer-run"): {"run-id": "run-0001"},
    ("PersistentVolumeClaim", "adaseg-data"): {},
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet", "Pod"}
COMPLETION_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# A Kubeflow pipeline step pod as Argo Workflows labels it, and where KFP runs it.
KFP_POD = {"workflows.argoproj.io/workflow": "adaseg-search-x7k2p"}
KFP_NAMESPACES = (
    {"kubernetes.io/metadata.name": "kubeflow"},
    {"kubernetes.io/metadata.name": "kubeflow-user", "adaseg.io/pipelines": "allowed"},
)


# --- rendering -------------------------------------------------------------------------


def example_secret_values() -> set[str]:
    """Every value in the committed *.env.example files of the Secrets."""
    values = set()
    for example in (K8S / "base/secrets").glob("*.env.example"):
        for line in example.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                values.add(line.split("=", 1)[1])
    return values


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k8s/ without any real *.env file, the examples copied to the names users create."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    examples = list(tree.rglob("*.env.example"))
    assert examples, "no *.env.example under k8s/"
    for example in examples:
        shutil.copyfile(example, example.with_suffix(""))
    # the documented edit for an S3 store of your own, on a copy of the GPU overlay
    shutil.copytree(tree / "overlays/gpu", tree / "overlays/gpu-external-s3")
    with open(tree / "overlays/gpu-external-s3/platform/kustomization.yaml", "a") as file:
        file.write("\ncomponents:\n  - ../../../components/external-s3\n")
    return tree


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not installed: run `make kubectl` (make test does)")
    return path


@pytest.fixture(scope="session")
def rendered(k8s_tree: Path) -> dict[str, list[dict[str, Any]]]:
    """Objects of every kustomization, as `kubectl apply -k` would send them."""
    renders = {}
    for kustomization in (*KUSTOMIZATIONS, PIPELINE_NAMESPACE, *EXTERNAL_S3):
        done = subprocess.run(
            [kubectl(), "kustomize", str(k8s_tree / kustomization)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"kubectl kustomize {kustomization}:\n{done.stderr}"
        renders[kustomization] = [obj for obj in yaml.safe_load_all(done.stdout) if obj]
    return renders


def standalone_objects() -> list[dict[str, Any]]:
    return [
        obj for path in STANDALONE for obj in yaml.safe_load_all((K8S / path).read_text()) if obj
    ]


# --- helpers over objects ------------------------------------------------------------------


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def generated(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """A ConfigMap or Secret by its generator name, with or without kustomize's hash suffix."""
    pattern = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    matches = [o for o in objects if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    """{metadata, spec} of the pods a workload creates."""
    if obj["kind"] == "Pod":
        return {"metadata": obj["metadata"], "spec": obj["spec"]}
    return obj["spec"]["template"]


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in WORKLOAD_KINDS)


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector; an empty selector matches everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def ingress_admits(
    policy: dict[str, Any], labels: dict[str, str], namespace_labels: dict[str, str]
) -> set[Any]:
    """Ports (as written in the policy) that a pod with these labels, in a namespace
    with these labels, may connect to; NetworkPolicy peers are ORed, the two
    selectors of one peer ANDed, a pod selector alone means the policy's namespace."""
    same_namespace = namespace_labels.get("kubernetes.io/metadata.name") == NAMESPACE
    ports: set[Any] = set()
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer:
                namespace_ok = selector_matches(peer["namespaceSelector"], namespace_labels)
            else:
                namespace_ok = same_namespace
            pod_ok = selector_matches(peer.get("podSelector", {}), labels)
            if namespace_ok and pod_ok:
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


_QUANTITY = re.compile(r"([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
_SUFFIX = {None: 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SUFFIX |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int) -> Decimal:
    """A Kubernetes resource quantity (the forms these manifests use) as a number."""
    match = _QUANTITY.fullmatch(str(value))
    assert match, f"unexpected resource quantity {value!r}"
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def container_env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the container would start with: envFrom, then env on top."""

    def data_of(kind: str, name: str) -> dict[str, str]:
        if (kind, name) in USER_PROVIDED:
            return USER_PROVIDED[(kind, name)]
        obj = find(objects, kind, name)
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
        return obj.get("data", {})

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= data_of("ConfigMap", source["configMapRef"]["name"])
        else:
            env |= data_of("Secret", source["secretRef"]["name"])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in ref:
            key_ref = ref["configMapKeyRef"]
            env[var["name"]] = data_of("ConfigMap", key_ref["name"])[key_ref["key"]]
        elif "secretKeyRef" in ref:
            key_ref = ref["secretKeyRef"]
            env[var["name"]] = data_of("Secret", key_ref["name"])[key_ref["key"]]
        elif ref.get("fieldRef", {}).get("fieldPath") == COMPLETION_INDEX_FIELD:
            env[var["name"]] = "3"
        else:
            env[var["name"]] = f"<{var['name']}>"
    return env


def expand(argument: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion; a reference to an undefined variable is a bug here."""

    def replace(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not defined in the container"
        return env[match.group(1)]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, argument)


def adaseg_argv(container: dict[str, Any], objects: list[dict[str, Any]]) -> list[str]:
    """The `adaseg` arguments a container of our images runs (the image's ENTRYPOINT is adaseg)."""
    assert "command" not in container, "keep the image's ENTRYPOINT (adaseg)"
    env = container_env(container, objects)
    return [expand(arg, env) for arg in container["args"]]


def our_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict, dict]]:
    """(workload, container) for every container running one of the project's images."""
    for workload in workloads(objects):
        for container in containers(pod_template(workload)["spec"]):
            if container["image"].split("/")[-1].startswith("adaseg-"):
                yield workload, container


# --- rendering and schema ----------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders_the_expected_objects(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    objects = rendered[kustomization]
    kinds_names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    platform = {
        ("Namespace", "adaseg"),
        ("Deployment", "adaseg-controller"),
        ("Service", "adaseg-controller"),
        ("ServiceAccount", "adaseg-controller"),
        ("PodDisruptionBudget", "adaseg-controller"),
        ("StatefulSet", "minio"),
        ("Service", "minio"),
        ("Service", "minio-headless"),
        ("Job", "minio-setup"),
        ("Secret", "adaseg-minio-root"),
        ("Secret", "adaseg-minio"),
        ("Secret", "adaseg-controller-token"),
        ("NetworkPolicy", "adaseg-default-deny-ingress"),
        ("NetworkPolicy", "adaseg-controller"),
        ("NetworkPolicy", "minio"),
    }
    trainer = {("Job", "adaseg-trainer")}
    expected = {
        "base/trainer": trainer,
        **{k: platform for k in PLATFORMS},
        **{k: platform | trainer for k in WITH_TRAINER},
    }[kustomization]
    assert expected <= kinds_names, f"missing: {sorted(expected - kinds_names)}"
    if kustomization in PLATFORMS:
        assert not trainer & kinds_names, "the trainer Job belongs to the second step only"
    assert all(o["metadata"].get("namespace", NAMESPACE) == NAMESPACE for o in objects)


def test_the_minio_statefulset_is_governed_by_a_headless_service(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered["base"]}
    statefulset = objects[("StatefulSet", "minio")]
    governing = objects[("Service", statefulset["spec"]["serviceName"])]
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"].items() <= (
        statefulset["spec"]["template"]["metadata"]["labels"].items()
    )


def test_every_object_passes_the_kubernetes_schema_strictly(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    unique = {json.dumps(o, sort_keys=True): o for objs in rendered.values() for o in objs}
    unique |= {json.dumps(o, sort_keys=True): o for o in standalone_objects()}
    errors = []
    for obj in unique.values():
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message} (there are no CRDs here)")
    assert not errors, "\n".join(errors)
    assert len(unique) >= 20


def test_schema_check_rejects_what_a_cluster_would_reject() -> None:
    """The validator really is strict: an unknown field and a wrong type both fail."""
    pod = standalone_objects()[0]
    typo = json.loads(json.dumps(pod))
    typo["spec"]["containers"][0]["securityContxt"] = {}
    wrong_type = json.loads(json.dumps(pod))
    wrong_type["spec"]["containers"][0]["securityContext"]["runAsUser"] = "10001"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


# --- security and resources of every pod ----------------------------------------------------


def pod_violations(workload: dict[str, Any]) -> list[str]:
    """What breaks the Pod Security "restricted" profile or our own rules."""
    where = f"{workload['kind']}/{workload['metadata']['name']}"
    spec = pod_template(workload)["spec"]
    pod_security = spec.get("securityContext", {})
    problems = []
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: mounts a service account token it never uses")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{where}: {flag}")
    if any("hostPath" in volume for volume in spec.get("volumes", [])):
        problems.append(f"{where}: hostPath volume")
    for container in containers(spec):
        at = f"{where}/{container['name']}"
        security = container.get("securityContext", {})

        def effective(field: str, security: dict = security) -> Any:
            return security.get(field, pod_security.get(field))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{at}: runAsNonRoot is not true")
        uid = effective("runAsUser")
        if not (isinstance(uid, int) and uid > 0):
            problems.append(f"{at}: runAsUser {uid!r} is not a non-zero uid")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: root filesystem is writable")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation is not false")
        if security.get("privileged"):
            problems.append(f"{at}: privileged")
        capabilities = security.get("capabilities", {})
        if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
            problems.append(f"{at}: capabilities are not exactly drop [ALL]")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{at}: seccompProfile is not RuntimeDefault")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    problems.append(f"{at}: no {resource} {kind[:-1]}")
        for resource, request in resources.get("requests", {}).items():
            limit = resources.get("limits", {}).get(resource)
            if limit is not None and quantity(limit) < quantity(request):
                problems.append(f"{at}: {resource} limit {limit} below request {request}")
        image = container["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "@sha256:" not in image and tag in {"", "latest"}:
            problems.append(f"{at}: image {image} is not pinned to a tag")
    return problems


def test_every_pod_template_is_locked_down(rendered: dict[str, list[dict[str, Any]]]) -> None:
    problems, checked = [], set()
    for kustomization, objects in rendered.items():
        for workload in workloads(objects):
            checked.add((workload["kind"], workload["metadata"]["name"]))
            problems += [f"{kustomization}: {p}" for p in pod_violations(workload)]
    for pod in standalone_objects():
        problems += pod_violations(pod)
    assert not problems, "\n".join(problems)
    assert checked == {
        ("Deployment", "adaseg-controller"),
        ("StatefulSet", "minio"),
        ("Job", "minio-setup"),
        ("Job", "adaseg-trainer"),
    }


def test_lockdown_check_catches_a_weakened_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The check above is not vacuous: each weakening of a real pod is reported."""
    original = find(rendered["base"], "Deployment", "adaseg-controller")
    weakenings = {
        "root filesystem is writable": ("readOnlyRootFilesystem", False),
        "allowPrivilegeEscalation": ("allowPrivilegeEscalation", True),
        "capabilities": ("capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]}),
        "runAsUser": ("runAsUser", 0),
    }
    for message, (field, value) in weakenings.items():
        weak = json.loads(json.dumps(original))
        weak["spec"]["template"]["spec"]["containers"][0]["securityContext"][field] = value
        assert any(message in p for p in pod_violations(weak)), field
    weak = json.loads(json.dumps(original))
    del weak["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert any("no memory limit" in p for p in pod_violations(weak))


# --- the controller ------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", PLATFORMS + WITH_TRAINER)
def test_controller_is_one_recreated_pod_with_both_probes(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    objects = rendered[kustomization]
    deployment = find(objects, "Deployment", "adaseg-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    template = pod_template(deployment)
    assert selector_matches(deployment["spec"]["selector"], template["metadata"]["labels"])
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("livenessProbe", "readinessProbe")
    }
    assert probes == {"livenessProbe": ("/healthz", "http"), "readinessProbe": ("/readyz", "http")}
    # the port the probes and the Service use is the one `adaseg serve` listens on
    args = parse_adaseg_args(adaseg_argv(container, objects))
    assert ports["http"] == args.port
    service = find(objects, "Service", "adaseg-controller")
    assert selector_matches(
        {"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"]
    )
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}


@pytest.mark.parametrize("kustomization", PLATFORMS)
def test_controller_settings_from_the_manifests_are_valid(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    """The service's own settings parser accepts what the pod would get."""
    objects = rendered[kustomization]
    (container,) = pod_template(find(objects, "Deployment", "adaseg-controller"))["spec"][
        "containers"
    ]
    env = container_env(container, objects)
    args = parse_adaseg_args(adaseg_argv(container, objects))
    settings = Settings.from_env(env).override(store=args.store, host=args.host, port=args.port)
    assert settings.store == "s3://adaseg/store"
    assert settings.host == "0.0.0.0"
    assert settings.token and settings.token in example_secret_values()
    assert env["ADASEG_S3_ENDPOINT"].split(":")[0] == "minio"  # the MinIO Service
    find(objects, "Service", "minio")


def test_disruption_budget_covers_the_controller(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["base"]
    budget = find(objects, "PodDisruptionBudget", "adaseg-controller")["spec"]
    labels = pod_template(find(objects, "Deployment", "adaseg-controller"))["metadata"]["labels"]
    assert selector_matches(budget["selector"], labels)
    assert budget.get("maxUnavailable") == 0 or budget.get("minAvailable") == 1
    # a controller that is not ready (store down) must never block a node drain
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --- network policies -------------------------------------------------------------------------


def _pod_labels(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    return pod_template(find(objects, kind, name))["metadata"]["labels"]


@pytest.mark.parametrize("kustomization", WITH_TRAINER)
def test_network_policies_admit_only_trainers_pipelines_and_setup(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    objects = rendered[kustomization]
    own_namespace = {"kubernetes.io/metadata.name": NAMESPACE}
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = find(objects, "NetworkPolicy", "adaseg-default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny

    controller = _pod_labels(objects, "Deployment", "adaseg-controller")
    minio = _pod_labels(objects, "StatefulSet", "minio")
    trainer = _pod_labels(objects, "Job", "adaseg-trainer")
    setup = _pod_labels(objects, "Job", "minio-setup")
    stranger = {"app.kubernetes.io/name": "something-else"}

    def reach(target: dict[str, str], source: dict[str, str], namespace: dict[str, str]) -> set:
        selecting = [p for p in policies if selector_matches(p["spec"]["podSelector"], target)]
        assert selecting, f"no policy selects pods {target}"
        return set().union(*(ingress_admits(p, source, namespace) for p in selecting))

    assert reach(controller, trainer, own_namespace) == {"http"}
    assert reach(minio, trainer, own_namespace) == {"s3"}
    assert reach(minio, controller, own_namespace) == {"s3"}
    assert reach(minio, setup, own_namespace) == {"s3"}
    for namespace in KFP_NAMESPACES:
        assert reach(controller, KFP_POD, namespace) == {"http"}
        assert reach(minio, KFP_POD, namespace) == {"s3"}
    # nobody else: not other pods, not pipeline pods of other namespaces, not a
    # trainer-labelled pod elsewhere, not MinIO calling the controller
    assert reach(controller, stranger, own_namespace) == set()
    assert reach(controller, minio, own_namespace) == set()
    assert reach(controller, setup, own_namespace) == set()
    assert reach(minio, stranger, own_namespace) == set()
    assert reach(controller, KFP_POD, {"kubernetes.io/metadata.name": "default"}) == set()
    assert reach(minio, trainer, {"kubernetes.io/metadata.name": "default"}) == set()
    assert reach(trainer, controller, own_namespace) == set()

    # the named ports exist on the pods they guard
    ports = {
        "http": pod_template(find(objects, "Deployment", "adaseg-controller")),
        "s3": pod_template(find(objects, "StatefulSet", "minio")),
    }
    for name, template in ports.items():
        names = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert name in names


# --- the trainer Job ---------------------------------------------------------------------------


def _trainer(objects: list[dict[str, Any]]) -> tuple[dict, dict]:
    job = find(objects, "Job", "adaseg-trainer")
    (container,) = pod_template(job)["spec"]["containers"]
    return job, container


def _worker_args(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    argv = adaseg_argv(container, objects)
    assert argv[0] == "worker"
    return dict(zip(argv[1::2], argv[2::2], strict=True))


def test_base_trainer_is_an_indexed_job_of_eight_gpu_workers(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["overlays/gpu"]
    job, container = _trainer(objects)
    spec = job["spec"]
    base_spec = find(rendered["base/trainer"], "Job", "adaseg-trainer")["spec"]
    for s in (spec, base_spec):
        assert (s["completionMode"], s["completions"], s["parallelism"]) == ("Indexed", 8, 8)
    assert pod_template(job)["spec"]["restartPolicy"] == "Never"
    flags = _worker_args(container, objects)
    assert flags["--worker-id"] == "3"  # the completion index (3 stands in for it here)
    assert flags["--run"] == USER_PROVIDED[("ConfigMap", "adaseg-trainer-run")]["run-id"]
    assert flags["--controller"] == "http://adaseg-controller:8080"
    assert flags["--store"] == "s3://adaseg/store"
    assert flags["--data"] == "/data"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod_template(job)["spec"]["volumes"]}
    assert volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"] == "adaseg-data"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_gpu_trainer_asks_for_a_gpu_on_gpu_nodes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["overlays/gpu"]
    job, container = _trainer(objects)
    pod = pod_template(job)["spec"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    flags = _worker_args(container, objects)
    assert flags["--device"] == "cuda"
    assert json.loads(flags["--model-config"]) == {"preset": "gpu"}  # not the CPU-sized default
    # GPUs only where they are used
    for workload in workloads(objects):
        if workload is not job:
            assert "nvidia.com/gpu" not in json.dumps(workload)


def test_local_overlay_has_no_gpu_and_trains_on_cpu(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["overlays/local"]
    assert "nvidia.com" not in json.dumps(objects)
    job, container = _trainer(objects)
    assert _worker_args(container, objects)["--device"] == "cpu"
    assert 1 <= job["spec"]["parallelism"] <= job["spec"]["completions"] <= 8
    # the local platform brings the dataset volume the trainers mount
    find(rendered["overlays/local/platform"], "PersistentVolumeClaim", "adaseg-data")
    local, base = (
        find(rendered[k], "Deployment", "adaseg-controller") for k in ("overlays/local", "base")
    )
    memory = [
        quantity(pod_template(d)["spec"]["containers"][0]["resources"]["limits"]["memory"])
        for d in (local, base)
    ]
    assert memory[0] < memory[1], "local resources should be smaller than the base's"


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_adaseg_command_lines_in_the_manifests_parse(
    rendered: dict[str, list[dict[str, Any]]], command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each project container's arguments are a valid `adaseg` command line, in its environment."""
    found = {
        (kustomization, workload["metadata"]["name"]): (container, objects)
        for kustomization, objects in rendered.items()
        if kustomization != "base/trainer"  # its generated names resolve in the overlays
        for workload, container in our_containers(objects)
    }
    commands = {adaseg_argv(c, objs)[0] for c, objs in found.values()}
    assert commands == {"serve", "worker"}, "update the parametrization"
    if not command_module_exists(command):
        pytest.skip(f"`adaseg {command}` is not written yet")
    for (kustomization, name), (container, objects) in found.items():
        argv = adaseg_argv(container, objects)
        if argv[0] != command:
            continue
        with monkeypatch.context() as patch:
            for variable, value in container_env(container, objects).items():
                patch.setenv(variable, value)
            assert parse_adaseg_args(argv) is not None, f"{kustomization}: {name}"


# --- references and credentials ---------------------------------------------------------------


@pytest.mark.parametrize("kustomization", PLATFORMS + WITH_TRAINER)
def test_every_reference_resolves(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    """ConfigMaps, Secrets (and their keys), volumes and service accounts a pod names exist
    (base/trainer alone names the generated ConfigMap without its hash: see the overlays)."""
    check_references(rendered[kustomization])


def check_references(objects: list[dict[str, Any]]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in objects} | set(USER_PROVIDED)
    for workload in workloads(objects):
        spec = pod_template(workload)["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, claim
        for container in containers(spec):
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            claims = workload["spec"].get("volumeClaimTemplates", [])
            volumes = {v["name"] for v in spec.get("volumes", [])}
            assert mounted <= volumes | {c["metadata"]["name"] for c in claims}
            container_env(container, objects)  # raises on a missing object or key


def test_secrets_hold_only_the_example_placeholders(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Rendered from the examples, no Secret may hold a value from anywhere else
    (a literal in a kustomization, a committed key)."""
    placeholders = example_secret_values()
    assert placeholders and all(v.startswith("change-me") for v in placeholders)
    secrets = [o for objs in rendered.values() for o in objs if o["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        assert "stringData" not in secret
        for key, value in secret["data"].items():
            decoded = base64.b64decode(value).decode()
            assert decoded in placeholders, f"Secret {secret['metadata']['name']}: {key}"


def test_credentials_come_only_from_git_ignored_env_files() -> None:
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            assert doc.get("kind") != "Secret", f"{path}: a committed Secret"
            for generator in doc.get("secretGenerator", []):
                assert set(generator) <= {"name", "envs", "options"}, f"{path}: {generator}"
                for env_file in generator["envs"]:
                    assert env_file.endswith(".env"), env_file
                    example = path.parent / f"{env_file}.example"
                    assert example.is_file(), f"{example} is missing"
                    assert _git_ignored(path.parent / env_file), f"{env_file} is not git-ignored"


def _git_ignored(path: Path) -> bool:
    if (REPO / ".git").exists() and shutil.which("git"):
        done = subprocess.run(
            ["git", "check-ignore", "-q", str(path.relative_to(REPO))], cwd=REPO, timeout=30
        )
        return done.returncode == 0
    # no repository (a source tarball): the ignore file must at least say so
    return "*.env" in (K8S / ".gitignore").read_text().split()


# --- the MinIO setup script ---------------------------------------------------------------------


@pytest.fixture
def fake_mc(tmp_path: Path) -> Path:
    """An `mc` that logs its arguments, keeps the policy it is given, and fails
    `policy attach` with the message in $MC_ATTACH_ERROR."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mc = bin_dir / "mc"
    mc.write_text(
        "#!/bin/sh\n"
        'echo "$*" >>"$MC_LOG"\n'
        'if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "$MC_LOG.policy"; fi\n'
        'if [ "$1 $2 $3" = "admin policy attach" ]; then echo "$MC_ATTACH_ERROR" >&2; exit 1; fi\n'
    )
    mc.chmod(0o755)
    return bin_dir


ALREADY_ATTACHED = "mc: <ERROR> The specified policy change is already in effect."


def _run_setup(
    rendered: dict[str, list[dict[str, Any]]],
    fake_mc: Path,
    secrets: dict[str, str],
    attach_error: str = ALREADY_ATTACHED,
) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    objects = rendered["base"]
    setup = find(objects, "Job", "minio-setup")
    (container,) = pod_template(setup)["spec"]["containers"]
    env = container_env(container, objects) | secrets
    script = generated(objects, "ConfigMap", "minio-setup")["data"]["setup-minio.sh"]
    assert container["command"] == ["/bin/sh", "/config/setup-minio.sh"]
    log = fake_mc.parent / "mc.log"
    done = subprocess.run(
        ["sh", "-c", script],
        env=env
        | {
            "PATH": f"{fake_mc}:{os.environ['PATH']}",
            "MC_LOG": str(log),
            "MC_ATTACH_ERROR": attach_error,
            "TMPDIR": str(fake_mc.parent),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls, Path(f"{log}.policy")


REAL_LOOKING = {
    "MINIO_ROOT_USER": "root-1c8e",
    "MINIO_ROOT_PASSWORD": "9f2d3c4b5a697887",
    "ADASEG_S3_ACCESS_KEY": "adaseg-7d1f",
    "ADASEG_S3_SECRET_KEY": "0a1b2c3d4e5f6a7b",
    "ADASEG_TOKEN": "b2c3d4e5f6a7b8c9",
}


def test_minio_setup_creates_the_bucket_and_a_bucket_scoped_user(
    rendered: dict[str, list[dict[str, Any]]], fake_mc: Path
) -> None:
    done, calls, policy_file = _run_setup(rendered, fake_mc, REAL_LOOKING)
    assert done.returncode == 0, done.stderr
    assert calls[0] == "alias set adaseg http://minio:9000 root-1c8e 9f2d3c4b5a697887"
    assert "mb --ignore-existing adaseg/adaseg" in calls
    assert "admin user add adaseg adaseg-7d1f 0a1b2c3d4e5f6a7b" in calls
    assert "admin policy attach adaseg adaseg-store --user adaseg-7d1f" in calls
    policy = json.loads(policy_file.read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::adaseg", "arn:aws:s3:::adaseg/*"}


def test_minio_setup_refuses_the_example_credentials(
    rendered: dict[str, list[dict[str, Any]]], fake_mc: Path
) -> None:
    for name in REAL_LOOKING:
        secrets = REAL_LOOKING | {name: "change-me-please"}
        done, calls, _ = _run_setup(rendered, fake_mc, secrets)
        assert done.returncode == 1, name
        assert "example" in done.stderr and calls == [], name


def test_minio_setup_fails_on_any_other_mc_error(
    rendered: dict[str, list[dict[str, Any]]], fake_mc: Path
) -> None:
    done, _, _ = _run_setup(rendered, fake_mc, REAL_LOOKING, "mc: <ERROR> Access Denied.")
    assert done.returncode == 1
    assert "Access Denied" in done.stderr


# --- the pipeline namespace ---------------------------------------------------------------------


def test_pipeline_namespace_gets_the_client_secrets_and_a_read_only_data_claim(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """overlays/kubeflow gives the KFP namespace exactly what the pipelines name, and no more."""
    from pipelines import components

    objects = rendered[PIPELINE_NAMESPACE]
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == {
        ("Secret", components.DEFAULT_MINIO_SECRET),
        ("Secret", components.DEFAULT_TOKEN_SECRET),
        ("PersistentVolumeClaim", components.DEFAULT_DATA_PVC),
        ("PersistentVolume", "adaseg-data-kubeflow"),
    }
    for obj in objects:
        if obj["kind"] != "PersistentVolume":  # cluster-scoped
            assert obj["metadata"]["namespace"] == "kubeflow", obj["metadata"]
    # the same Secrets, from the same files, as the platform's (MinIO's root account stays there)
    platform = {o["metadata"]["name"]: o for o in rendered["base"] if o["kind"] == "Secret"}
    for name, keys in (
        (components.DEFAULT_MINIO_SECRET, components.S3_SECRET_KEYS),
        (components.DEFAULT_TOKEN_SECRET, components.TOKEN_SECRET_KEYS),
    ):
        secret = find(objects, "Secret", name)
        assert secret["data"] == platform[name]["data"]
        assert set(keys) == set(secret["data"]), name
    # read-only: KFP mounts the claim read-write, so the volume's source must be read-only
    claim = find(objects, "PersistentVolumeClaim", components.DEFAULT_DATA_PVC)["spec"]
    volume = find(objects, "PersistentVolume", claim["volumeName"])["spec"]
    assert claim["accessModes"] == volume["accessModes"] == ["ReadOnlyMany"]
    assert claim["storageClassName"] == volume["storageClassName"] == ""  # static binding
    sources = [key for key in volume if key in {"nfs", "csi", "cephfs", "iscsi", "rbd"}]
    assert sources and all(volume[key]["readOnly"] is True for key in sources), sources
    assert quantity(volume["capacity"]["storage"]) >= quantity(
        claim["resources"]["requests"]["storage"]
    )


# --- an S3 store of your own -------------------------------------------------------------------


def _store_example() -> dict[str, str]:
    example = K8S / "components/external-s3/store.env.example"
    lines = [line for line in example.read_text().splitlines() if "=" in line]
    return dict(line.split("=", 1) for line in lines if not line.startswith("#"))


@pytest.mark.parametrize("kustomization", EXTERNAL_S3)
def test_external_s3_component_replaces_minio_by_the_users_store(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    objects = rendered[kustomization]
    leftovers = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects
        if "minio" in o["metadata"]["name"] and o["metadata"]["name"] != "adaseg-minio"
    ]
    assert not leftovers, f"MinIO objects left: {leftovers}"
    check_references(objects)  # nothing points at what was dropped
    store = _store_example()
    assert set(store) == {
        "ADASEG_STORE",
        "ADASEG_S3_ENDPOINT",
        "ADASEG_S3_SECURE",
        "ADASEG_S3_REGION",
    }
    for workload, container in our_containers(objects):
        env = container_env(container, objects)
        for key, value in store.items():
            assert env[key] == value, f"{workload['metadata']['name']}: {key}"
        assert {"ADASEG_S3_ACCESS_KEY", "ADASEG_S3_SECRET_KEY"} <= set(env)
    # the rest of the platform is untouched
    with_minio = {(o["kind"], o["metadata"]["name"]) for o in rendered["overlays/gpu"]}
    kept = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Deployment", "adaseg-controller"), ("NetworkPolicy", "adaseg-controller")} <= kept
    if kustomization == "overlays/gpu-external-s3":
        dropped = {n for n in with_minio - kept if not n[1].startswith("adaseg-config")}
        assert dropped == {
            ("StatefulSet", "minio"),
            ("Service", "minio"),
            ("Service", "minio-headless"),
            ("Job", "minio-setup"),
            ("Secret", "adaseg-minio-root"),
            ("ServiceAccount", "minio"),
            ("NetworkPolicy", "minio"),
        } | {n for n in with_minio if n[0] == "ConfigMap" and n[1].startswith("minio-setup")}


# --- threads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", WITH_TRAINER)
def test_trainers_use_one_thread_per_cpu_of_their_limit(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    _, container = _trainer(rendered[kustomization])
    [variable] = [v for v in container["env"] if v["name"] == "OMP_NUM_THREADS"]
    assert variable["valueFrom"]["resourceFieldRef"] == {
        "containerName": container["name"],
        "resource": "limits.cpu",
    }
    assert "cpu" in container["resources"]["limits"]
