"""``make test-containers``: the images run the manifests' pods, and a search survives a kill.

``python -m tests.containers.e2e`` (as root). Steps:

1. build both images offline with podman (:mod:`tests.containers.images`);
2. render ``k8s/overlays/local`` with ``kubectl kustomize`` (random credentials
   in a copy of k8s/) and take from it the controller Deployment's pod template,
   the trainer Job's pod template, their ConfigMaps and Secrets;
3. on a podman network, play them as Pods with ``podman kube play``: the S3
   store (moto's server, tests/containers/s3-pod.yaml) as ``minio``, the
   controller as ``adaseg-controller`` (the Services' names, which the
   manifests' URLs use), and, after a run exists, the trainer pods 0 and 1 with
   the ConfigMap ``adaseg-trainer-run`` as ``kubectl create configmap`` makes it;
4. check that the controller and trainers really run locked down (uid 10001,
   read-only root, no capabilities, no privilege escalation);
5. create a small run (population 2, 2 rounds, short leases), kill trainer 1
   (SIGKILL) while both trainers hold a lease in round 1, and wait for trainer
   0 to finish the run alone once the dead lease expires;
6. check the run in the S3 store: state, every member of every round reported
   with its checkpoint, the policy snapshots, the re-issued member.

What podman does not do as a kubelet would, and so this script does: it expands
``$(VAR)`` in ``args`` (podman 4.3 passes them literally) from the container's
own environment, sets the completion-index annotation the Job controller sets,
makes Secrets from the rendered ones (``podman secret create``), and polls the
readiness probe's path itself (podman turns probes into healthchecks that need
systemd timers). tests/containers/README.md lists what this cannot prove.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.containers import images
from tests.containers.podman import REPO, GiveUp, podman, podman_out, run, step, wait_for

NETWORK = "adaseg-e2e"
OVERLAY = "overlays/local"
S3_POD = Path(__file__).with_name("s3-pod.yaml")
# The search: small enough for 2 shared CPU cores, big enough to kill a trainer mid-round.
DATA_IMAGES, DATA_SIZE = 48, 64
POPULATION, ROUNDS = 2, 2
LEASE_SECONDS = 20.0  # how soon a killed trainer's member goes to the other trainer
RUN_TIMEOUT = 900.0
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


# --- the rendered manifests ------------------------------------------------------------------


def render(workdir: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of the overlay on a copy of k8s/ with random credentials,
    as a user's *.env files would hold them (k8s/README.md, section 1)."""
    tree = workdir / "k8s"
    shutil.copytree(REPO / "k8s", tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        keys = [
            line.split("=", 1)[0]
            for line in example.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        ]
        example.with_suffix("").write_text(
            "".join(f"{key}={secrets.token_hex(10)}\n" for key in keys)
        )
    done = run(["kubectl", "kustomize", str(tree / OVERLAY)], capture=True)
    objects = [obj for obj in yaml.safe_load_all(done.stdout) if obj]
    kinds = sorted({o["kind"] for o in objects})
    print(f"kubectl kustomize k8s/{OVERLAY}: {len(objects)} objects ({', '.join(kinds)})")
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (match,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return match


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def container_env(
    container: dict[str, Any], objects: list[dict[str, Any]], annotations: dict[str, str]
) -> dict[str, str]:
    """The environment the kubelet would give the container: envFrom, then env in order
    (each value expanded with the variables before it)."""
    config_maps, secret_objs = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= config_maps[source["configMapRef"]["name"]].get("data", {})
        else:
            env |= secret_data(secret_objs[source["secretRef"]["name"]])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[var["name"]] = config_maps[key["name"]]["data"][key["key"]]
        elif "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[var["name"]] = secret_data(secret_objs[key["name"]])[key["key"]]
        elif "fieldRef" in ref:
            match = re.fullmatch(r"metadata\.annotations\['(.+)'\]", ref["fieldRef"]["fieldPath"])
            if match:
                env[var["name"]] = annotations[match.group(1)]
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names replaced, ``$$`` an escaped ``$``,
    undefined references left as they are."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, text)


def pod_from_template(
    name: str,
    template: dict[str, Any],
    objects: list[dict[str, Any]],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod as the Deployment or Job controller would create it from ``template``,
    with the kubelet's ``$(VAR)`` expansion done in ``args`` and the probes left to us."""
    metadata = copy.deepcopy(template["metadata"])
    metadata["name"] = name
    metadata["annotations"] = {**metadata.get("annotations", {}), **(annotations or {})}
    spec = copy.deepcopy(template["spec"])
    for container in spec["containers"]:
        env = container_env(container, objects, metadata["annotations"])
        container["args"] = [expand(arg, env) for arg in container.get("args", [])]
        for probe in PROBES:
            container.pop(probe, None)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def referenced_config_maps(pod: dict[str, Any], objects: list[dict[str, Any]]) -> list[dict]:
    """The ConfigMaps a pod names (podman reads them from the same YAML stream)."""
    names = set()
    for container in pod["spec"]["containers"]:
        names |= {
            s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s
        }
        names |= {
            v["valueFrom"]["configMapKeyRef"]["name"]
            for v in container.get("env", [])
            if "configMapKeyRef" in v.get("valueFrom", {})
        }
    return [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] in names]


# --- podman -------------------------------------------------------------------------------------


def private_empty_dirs(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod with each emptyDir volume named after the pod: podman 4.3 makes an emptyDir
    a named volume shared by every pod that uses the same volume name (all our pods call
    theirs ``tmp``), where Kubernetes gives each pod its own."""
    pod = copy.deepcopy(pod)
    name = pod["metadata"]["name"]
    spec = pod["spec"]
    renamed = {v["name"]: f"{name}-{v['name']}" for v in spec.get("volumes", []) if "emptyDir" in v}
    for volume in spec.get("volumes", []):
        volume["name"] = renamed.get(volume["name"], volume["name"])
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
    return pod


def play(pod: dict[str, Any], config_maps: list[dict[str, Any]], workdir: Path) -> None:
    """``podman kube play`` of the Pod and its ConfigMaps on our network; print what runs."""
    pod = private_empty_dirs(pod)
    path = workdir / f"{pod['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump_all([*config_maps, pod], sort_keys=False))
    podman("kube", "play", "--network", NETWORK, str(path))
    for container in pod["spec"]["containers"]:
        security = {
            **pod["spec"].get("securityContext", {}),
            **container.get("securityContext", {}),
        }
        print(f"pod {pod['metadata']['name']}: {container['image']} {' '.join(container['args'])}")
        print(
            f"    runAsUser {security.get('runAsUser')}, "
            f"readOnlyRootFilesystem {security.get('readOnlyRootFilesystem')}, "
            f"capabilities {security.get('capabilities')}, "
            f"allowPrivilegeEscalation {security.get('allowPrivilegeEscalation')}; volumes "
            + ", ".join(f"{m['mountPath']}{' (ro)' if m.get('readOnly') else ''}"
                        for m in container.get("volumeMounts", []))
        )  # fmt: skip


def container_name(pod: dict[str, Any]) -> str:
    """podman names a played pod's container ``{pod}-{container}``."""
    return f"{pod['metadata']['name']}-{pod['spec']['containers'][0]['name']}"


def pod_ip(pod_name: str) -> str:
    infra = podman_out("pod", "inspect", pod_name, "--format", "{{.InfraContainerID}}")
    networks = json.loads(
        podman_out("inspect", infra, "--format", "{{json .NetworkSettings.Networks}}")
    )
    return networks[NETWORK]["IPAddress"]


def logs(name: str, lines: int = 30) -> str:
    """The container's last lines (podman prints the container's stderr on its own)."""
    done = podman("logs", "--tail", str(lines), name, check=False, stderr=subprocess.STDOUT)
    return done.stdout


def check_locked_down(pod: dict[str, Any], read_only_mounts: tuple[str, ...] = ()) -> None:
    """What the container's process really gets: uid/gid, capabilities, no_new_privs,
    a read-only root with a writable /tmp, read-only data volumes."""
    name = container_name(pod)
    probe = (
        "import os\n"
        "status = dict(l.split(':', 1) for l in open('/proc/1/status').read().splitlines())\n"
        "def writable(d):\n"
        "    try:\n"
        "        path = os.path.join(d, '.written-by-e2e')\n"
        "        open(path, 'w').close(); os.remove(path); return True\n"
        "    except OSError:\n"
        "        return False\n"
        "print(status['Uid'].split()[0], status['Gid'].split()[0], status['CapEff'].strip(),\n"
        "      status['NoNewPrivs'].strip(), writable('/'), writable('/opt'), writable('/tmp'),\n"
        f"      *[writable(d) for d in {list(read_only_mounts)!r}])\n"
    )
    fields = podman_out("exec", name, "python", "-c", probe).split()
    uid, gid, cap_eff, no_new_privs, root_w, opt_w, tmp_w, *data_w = fields
    problems = []
    if (uid, gid) != ("10001", "10001"):
        problems.append(f"runs as {uid}:{gid}")
    if int(cap_eff, 16) != 0:
        problems.append(f"effective capabilities {cap_eff}")
    if no_new_privs != "1":
        problems.append("privilege escalation possible (no_new_privs 0)")
    if root_w == "True" or opt_w == "True":
        problems.append("root filesystem writable")
    if tmp_w != "True":
        problems.append("/tmp (emptyDir) not writable")
    problems += [
        f"{d} writable" for d, w in zip(read_only_mounts, data_w, strict=True) if w == "True"
    ]
    if problems:
        raise AssertionError(f"{name}: {'; '.join(problems)}")
    print(
        f"{name}: pid 1 runs as {uid}:{gid}, CapEff {cap_eff}, NoNewPrivs {no_new_privs}, "
        f"/ read-only, /tmp writable" + "".join(f", {d} read-only" for d in read_only_mounts)
    )


def remove_everything(pod_names: list[str], secret_names: list[str], volume: str | None) -> None:
    """Remove what an earlier run of this script left (only the names it uses)."""
    for name in pod_names:
        podman("pod", "rm", "--force", "--ignore", name, check=False)
    for name in secret_names:
        podman("secret", "rm", name, check=False)
    volumes = podman_out("volume", "ls", "--format", "{{.Name}}").split()
    for name in volumes:
        if name == volume or any(name.startswith(f"{pod}-") for pod in pod_names):
            podman("volume", "rm", "--force", name, check=False)
    podman("network", "rm", "--force", NETWORK, check=False)


@contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="adaseg-e2e-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# --- the scenario -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", required=True, help="torch requirement (the Makefile's TORCH)")
    parser.add_argument("--torch-index", help="index for the torch wheel, e.g. the CPU one")
    parser.add_argument("--keep", action="store_true", help="leave the pods running at the end")
    args = parser.parse_args()
    started = time.monotonic()
    images.build_all(args.torch, args.torch_index)
    with workspace(args.keep) as workdir:
        ok = scenario(workdir, keep=args.keep)
    verdict = "passed" if ok else "FAILED"
    print(f"\nmake test-containers: {verdict} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def scenario(workdir: Path, keep: bool) -> bool:
    step(f"render the manifests: k8s/{OVERLAY}")
    objects = render(workdir)
    deployment = find(objects, "Deployment", "adaseg-controller")
    job = find(objects, "Job", "adaseg-trainer")
    config = next(
        o for o in objects if o["kind"] == "ConfigMap" and "ADASEG_STORE" in o.get("data", {})
    )
    settings = config["data"]
    expected = {images.CONTROLLER_IMAGE: deployment, images.TRAINER_IMAGE: job}
    for image, workload in expected.items():
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image, (
            f"{workload['metadata']['name']} runs {container['image']}"
        )
    claim = next(
        v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    )
    trainer_names = [f"adaseg-trainer-{i}" for i in range(job["spec"]["completions"])]
    secret_names = sorted(by_kind(objects, "Secret"))
    pod_names = ["minio", "adaseg-controller", *trainer_names]
    remove_everything(pod_names, secret_names, claim)
    trainers: list[dict[str, Any]] = []
    try:
        ok = _scenario(workdir, objects, deployment, job, settings, claim, trainer_names, trainers)
    except Exception as error:  # noqa: BLE001 - reported with the pods' logs below
        print(f"\nFAILED: {type(error).__name__}: {error}", flush=True)
        for name in [
            "minio-s3",
            "adaseg-controller-controller",
            *(f"{t}-worker" for t in trainer_names),
        ]:
            print(f"\n--- podman logs {name} (last lines) ---\n{logs(name, 40)}")
        ok = False
    if not keep:
        remove_everything(pod_names, secret_names, claim)
    return ok


def _scenario(
    workdir: Path,
    objects: list[dict[str, Any]],
    deployment: dict[str, Any],
    job: dict[str, Any],
    settings: dict[str, str],
    claim: str,
    trainer_names: list[str],
    trainers: list[dict[str, Any]],
) -> bool:
    from minio import Minio

    from controller_service.contract.client import ControllerClient
    from controller_service.contract.keys import (
        init_checkpoint_key,
        policy_snapshot_key,
        run_state_key,
    )
    from controller_service.contract.store import open_store
    from pipelines.steps import run_loss_names

    step(f"podman network {NETWORK}, the Secrets (podman secret create), the S3 store")
    podman("network", "create", NETWORK)
    for name, secret in by_kind(objects, "Secret").items():
        path = workdir / f"secret-{name}.json"
        path.write_text(json.dumps(secret.get("data", {})))  # podman 4.3 reads {key: base64}
        podman("secret", "create", name, str(path))
        print(f"secret {name}: keys {', '.join(sorted(secret.get('data', {})))}")
    s3_pod = yaml.safe_load(S3_POD.read_text())
    assert s3_pod["spec"]["containers"][0]["image"] == images.S3_IMAGE
    endpoint_host, _, endpoint_port = settings["ADASEG_S3_ENDPOINT"].partition(":")
    assert endpoint_host == s3_pod["metadata"]["name"], (
        "the S3 pod must answer to ADASEG_S3_ENDPOINT"
    )
    s3_pod["spec"]["containers"][0]["args"] = ["-H", "0.0.0.0", "-p", endpoint_port]
    play(s3_pod, [], workdir)
    s3_address = f"{pod_ip('minio')}:{endpoint_port}"
    keys = secret_data(find(objects, "Secret", "adaseg-minio"))
    s3 = Minio(
        s3_address,
        access_key=keys["ADASEG_S3_ACCESS_KEY"],
        secret_key=keys["ADASEG_S3_SECRET_KEY"],
        secure=False,
        region=settings["ADASEG_S3_REGION"],
    )
    bucket = settings["ADASEG_STORE"].removeprefix("s3://").split("/", 1)[0]
    wait_for("the S3 server", lambda: s3.list_buckets() is not None, timeout=60)
    s3.make_bucket(bucket)  # what the minio-setup Job does on a cluster
    print(f"bucket {bucket} created at {s3_address} (the minio-setup Job's part)")

    step("controller: the rendered Deployment's pod template, played as a Pod")
    controller_pod = pod_from_template("adaseg-controller", deployment["spec"]["template"], objects)
    assert (
        controller_pod["metadata"]["name"]
        == settings["ADASEG_CONTROLLER_URL"].split("//")[1].split(":")[0]
    )
    play(controller_pod, referenced_config_maps(controller_pod, objects), workdir)
    (template_container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in template_container["ports"]}
    readiness = template_container["readinessProbe"]["httpGet"]
    port = ports.get(readiness["port"], readiness["port"])
    controller_url = f"http://{pod_ip('adaseg-controller')}:{port}"
    ready_url = f"{controller_url}{readiness['path']}"
    wait_for(
        "controller readiness", lambda: httpx.get(ready_url, timeout=3).status_code == 200, 120
    )
    print(f"readinessProbe GET {readiness['path']} on port {readiness['port']}: 200")
    check_locked_down(controller_pod)

    step(f"dataset volume {claim} (the claim the trainer Job mounts): adaseg data synth")
    podman("volume", "create", claim)
    podman(
        "run", "--rm", "--network", "none", "--user", "0:0", "-v", f"{claim}:/data",
        images.TRAINER_IMAGE, "data", "synth", "--out", "/data", "--images", str(DATA_IMAGES),
        "--size", str(DATA_SIZE), "--seed", "0",
    )  # fmt: skip
    print(f"{DATA_IMAGES} synthetic {DATA_SIZE}x{DATA_SIZE} images in volume {claim}")

    step(f"a run: population {POPULATION}, {ROUNDS} rounds, lease_seconds {LEASE_SECONDS:g}")
    token = secret_data(find(objects, "Secret", "adaseg-controller-token"))["ADASEG_TOKEN"]
    client = ControllerClient(controller_url, token=token)
    run_id = client.create_run(
        run_loss_names("", {}),  # the trainers' default model, as the pods run it
        population=POPULATION,
        rounds=ROUNDS,
        lease_seconds=LEASE_SECONDS,
        seed=0,
        name="make test-containers",
    ).id
    print(f"run {run_id}")
    # exactly what k8s/README.md tells the user to run
    run_config_map = yaml.safe_load(
        run(
            ["kubectl", "create", "configmap", "adaseg-trainer-run",
             f"--from-literal=run-id={run_id}", "--dry-run=client", "-o", "yaml"],
            capture=True,
        ).stdout
    )  # fmt: skip
    objects = [*objects, run_config_map]

    step("trainers: the rendered Job's pod template, played as the pods of indices 0 and 1")
    for index, name in enumerate(trainer_names):
        pod = pod_from_template(
            name, job["spec"]["template"], objects, {COMPLETION_INDEX: str(index)}
        )
        play(pod, referenced_config_maps(pod, objects), workdir)
        trainers.append(pod)
    for pod in trainers:
        check_locked_down(pod, read_only_mounts=("/data",))

    step("kill trainer 1 (SIGKILL) while both trainers hold a lease in round 1")

    def both_leased_in_round_one() -> bool:
        record = client.get_run(run_id)
        if record.status != "running":  # say so now, not after RUN_TIMEOUT
            raise GiveUp(f"run {record.status} before both trainers held a lease")
        current = record.current
        return bool(current and current.round >= 1 and current.members["leased"] == POPULATION)

    wait_for("both trainers training in round 1", both_leased_in_round_one, RUN_TIMEOUT, 0.3)
    victim = container_name(trainers[1])
    podman("kill", "--signal", "KILL", victim)
    killed_at = time.monotonic()
    round_killed = client.get_run(run_id).current.round
    print(f"killed {victim} in round {round_killed}; its lease expires in {LEASE_SECONDS:g} s")
    print(f"--- its last log lines ---\n{logs(victim, 3)}", end="")

    step("wait for the run to finish (trainer 0 alone)")
    survivor = container_name(trainers[0])
    # the worker exits when the run is finished
    exit_code = int(podman("wait", survivor, timeout=RUN_TIMEOUT).stdout.strip())
    record = client.get_run(run_id, history=True).model_dump()
    print(f"{survivor} exited {exit_code} after {time.monotonic() - killed_at:.0f} s; "
          f"run {record['status']}, rounds {record['round']}/{record['rounds']}")  # fmt: skip
    victim_state = podman_out("inspect", victim, "--format", "{{.State.ExitCode}}")
    assert exit_code == 0, f"{survivor} exited {exit_code}"
    assert victim_state == "137", f"{victim} exited {victim_state}, not killed"
    assert record["status"] == "finished", record["status"]

    step("check the run in the S3 store")
    os.environ.update(
        ADASEG_S3_ENDPOINT=s3_address,
        ADASEG_S3_ACCESS_KEY=keys["ADASEG_S3_ACCESS_KEY"],
        ADASEG_S3_SECRET_KEY=keys["ADASEG_S3_SECRET_KEY"],
        ADASEG_S3_SECURE="false",
        ADASEG_S3_REGION=settings["ADASEG_S3_REGION"],
    )
    store = open_store(settings["ADASEG_STORE"])
    state = store.get_json(run_state_key(run_id))
    assert state["status"] == "finished"
    history = record["history"]
    assert [item["round"] for item in history] == list(range(ROUNDS + 1)), history
    print("round member worker attempts     pq  checkpoint")
    reissued = []
    for item in history:
        trained = [c for c in item["candidates"] if c["outcome"] == "trained"]
        expected = 1 if item["round"] == 0 else POPULATION
        assert len(trained) == expected, f"round {item['round']}: {len(trained)} members reported"
        for candidate in trained:
            key = store.key_of(candidate["checkpoint_uri"])
            assert store.exists(key), f"missing checkpoint {candidate['checkpoint_uri']}"
            print(f"{item['round']:>5} {candidate['member']:>6} {candidate['worker']:>6} "
                  f"{candidate['attempts']:>8} {candidate['pq']:6.2f}  {key}")  # fmt: skip
            if candidate["attempts"] > 1:
                reissued.append(candidate)
    for round_ in range(1, ROUNDS + 1):
        assert store.exists(policy_snapshot_key(run_id, round_)), f"no policy snapshot {round_}"
    assert store.exists(init_checkpoint_key(run_id))
    assert len(client.policy(run_id).snapshots) == ROUNDS
    assert reissued, "no member was re-issued after the kill"
    assert all(c["worker"] == "0" for c in reissued), "the killed trainer reported after its death"
    metrics = httpx.get(f"{controller_url}/metrics", timeout=10).text
    counters = {
        name: float(value)
        for name, value in re.findall(r"^(adaseg_leases_\w+_total) (\S+)$", metrics, re.M)
    }
    print(", ".join(f"{name} {value:g}" for name, value in sorted(counters.items())))
    assert counters.get("adaseg_leases_expired_total", 0) >= 1, "no lease expired"
    for item in history:
        for candidate in item["candidates"]:
            if candidate["outcome"] == "trained":
                losses = candidate["losses"].values()
                assert all(math.isfinite(v) for v in losses), candidate
    best = record["best"]
    assert store.exists(store.key_of(best["checkpoint_uri"]))
    objects_stored = store.list(f"runs/{run_id}/")
    print(f"re-issued after the kill: round {round_killed}, member(s) "
          f"{[c['member'] for c in reissued]}, finished by trainer 0")  # fmt: skip
    print(f"policy snapshots: rounds 1..{ROUNDS}; init checkpoint; best PQ {best['pq']:.2f} "
          f"(round {best['round']}, member {best['member']}); {len(objects_stored)} objects "
          f"under {settings['ADASEG_STORE']}/runs/{run_id}/")  # fmt: skip
    print(f"\n--- podman logs {survivor} (last lines) ---\n{logs(survivor, 6)}")
    return True


if __name__ == "__main__":
    sys.exit(main())
