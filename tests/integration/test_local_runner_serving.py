"""The local runner as serving pods need it: a pod IP each, readiness that the real
EndpointSlice controller sees, liveness restarts, and ConfigMap volumes that follow their
ConfigMap while the pod runs, swapped atomically as the kubelet does."""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetune.operator.progress import scrape_progress
from kubetune_dev import LOCAL_RUNNER_LABEL, DevCluster, local_pod_toleration
from kubetune_dev.local_pod_network import POD_CIDR

pytestmark = pytest.mark.cluster

POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def _local_pod_spec(*containers: dict[str, Any], volumes: list[dict[str, Any]] | None = None,
                    restart_policy: str = "Always") -> dict[str, Any]:
    return {
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": 2,
        "nodeSelector": {LOCAL_RUNNER_LABEL: "true"},
        "tolerations": [local_pod_toleration()],
        "containers": list(containers),
        "volumes": volumes or [],
    }


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


# -- a pod IP each ----------------------------------------------------------------------------


def test_replicas_get_their_own_ip_and_serve_on_the_same_port(
        cluster: DevCluster, namespace: str) -> None:
    web = {
        "name": "web", "image": "ignored",
        # $(POD_IP) is expanded by the runner, as the kubelet does.
        "command": ["python", "-m", "http.server", "8080", "--bind", "$(POD_IP)",
                    "--directory", "/podinfo"],
        "env": [POD_IP_ENV],
        "volumeMounts": [{"name": "podinfo", "mountPath": "/podinfo", "readOnly": True}],
    }
    podinfo = {"name": "podinfo", "downwardAPI": {"items": [
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}
    labels = {"app": "echo"}
    client.AppsV1Api(cluster.api_client()).create_namespaced_deployment(namespace, {
        "metadata": {"name": "echo"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": _local_pod_spec(web, volumes=[podinfo])}}})

    def running_pods() -> list[Any]:
        pods = cluster.core().list_namespaced_pod(namespace, label_selector="app=echo").items
        return pods if len(pods) == 2 and all(_ready(p) for p in pods) else []

    pods = cluster.wait_for(running_pods, timeout=60, what="2 Ready replicas of echo")
    ips = [pod.status.pod_ip for pod in pods]
    assert len(set(ips)) == 2, ips
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(POD_CIDR) for ip in ips), ips
    assert all(pod.status.host_ip == "127.0.0.1" for pod in pods)
    assert all(pod.status.pod_ips[0].ip == pod.status.pod_ip for pod in pods)
    for pod in pods:
        ip = pod.status.pod_ip
        name = cluster.wait_for(lambda ip=ip: _get(f"http://{ip}:8080/name"), timeout=30,
                                what=f"the server of {pod.metadata.name} at {ip}")
        assert name == pod.metadata.name  # each answers at its own IP (it bound $(POD_IP))

    def deployment_ready() -> bool:
        deployment = client.AppsV1Api(cluster.api_client()).read_namespaced_deployment(
            "echo", namespace)
        return deployment.status.ready_replicas == 2

    cluster.wait_for(deployment_ready, timeout=30, what="the Deployment to count 2 ready")


TRAINER_METRICS = """
import time
from kubetune.api.trainer_result import Progress
from kubetune_trainer.progress import ProgressMetrics
metrics = ProgressMetrics.create(9400)  # binds 0.0.0.0, as in the trainer
metrics.update(Progress(step=3, total_steps=10, loss=1.5))
print("serving on", metrics.port, flush=True)
time.sleep(600)
"""


def test_trainer_metrics_bound_to_all_addresses_are_scraped_at_the_pod_ip(
        cluster: DevCluster, namespace: str) -> None:
    trainer = {"name": "trainer", "image": "ignored",
               "command": ["python", "-c", TRAINER_METRICS]}
    cluster.core().create_namespaced_pod(namespace, {
        "metadata": {"name": "trainer"},
        "spec": _local_pod_spec(trainer, restart_policy="Never")})
    pod = cluster.wait_for_pod_phase(namespace, "trainer", "Running", timeout=60)
    progress = cluster.wait_for(
        lambda: scrape_progress({"status": {"podIP": pod.status.pod_ip}}, timeout=2),
        timeout=30, what=f"the operator's scrape of {pod.status.pod_ip}:9400")
    assert (progress.step, progress.total_steps, progress.loss) == (3, 10, 1.5), \
        cluster.local_pod_logs(namespace, "trainer")


# -- probes -----------------------------------------------------------------------------------

GATED_SERVER = """
import http.server, os, pathlib
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = pathlib.Path("/state/ready").exists()
        self.send_response(200 if ready else 503)
        self.end_headers()
        self.wfile.write(b"ready" if ready else b"loading")
http.server.HTTPServer((os.environ["POD_IP"], 8081), Handler).serve_forever()
"""


def _slice_endpoint(cluster: DevCluster, namespace: str, service: str) -> Any:
    slices = client.DiscoveryV1Api(cluster.api_client()).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}").items
    endpoints = [e for s in slices for e in s.endpoints or []]
    return endpoints[0] if len(endpoints) == 1 else None


def test_readiness_probes_drive_pod_ready_and_the_endpoint_slice(
        cluster: DevCluster, namespace: str) -> None:
    state = {"name": "state", "mountPath": "/state"}
    server = {
        "name": "server", "image": "ignored", "command": ["python", "-c", GATED_SERVER],
        "env": [POD_IP_ENV], "volumeMounts": [state],
        "ports": [{"name": "http", "containerPort": 8081}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                           "periodSeconds": 1, "failureThreshold": 1},
        "livenessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1,
                          "initialDelaySeconds": 2, "failureThreshold": 5},
    }
    # /state exists only in the container's mount namespace: the exec probe must run there.
    sidecar = {
        "name": "sidecar", "image": "ignored", "command": ["sleep", "600"],
        "volumeMounts": [state],
        "readinessProbe": {"exec": {"command": ["test", "-e", "/state/ready"]},
                           "periodSeconds": 1, "failureThreshold": 1},
    }
    core = cluster.core()
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "gated", "labels": {"app": "gated"}},
        "spec": _local_pod_spec(server, sidecar, volumes=[{"name": "state", "emptyDir": {}}])})
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "gated"},
        "spec": {"selector": {"app": "gated"}, "ports": [{"port": 80, "targetPort": 8081}]}})
    pod = cluster.wait_for_pod_phase(namespace, "gated", "Running", timeout=60)
    ip = pod.status.pod_ip

    # Up and answering, but not ready: the probe fails, so Ready stays False.
    cluster.wait_for(lambda: _probe_status(ip) == 503, timeout=30, what="the server at 503")
    endpoint = cluster.wait_for(lambda: _slice_endpoint(cluster, namespace, "gated"),
                                timeout=30, what="an EndpointSlice endpoint for gated")
    assert endpoint.addresses == [ip]
    assert endpoint.conditions.ready is False
    pod = core.read_namespaced_pod("gated", namespace)
    assert not _ready(pod)
    assert [c.ready for c in pod.status.container_statuses] == [False, False]
    assert all(c.started for c in pod.status.container_statuses)
    # Restarts from here on would be the liveness probe misreading the readiness flips below. (A
    # restart before the server first answered was seen once in CI, on a busy machine; what
    # this test checks starts once the server is up.)
    restarts = [c.restart_count for c in pod.status.container_statuses]

    ready_file = cluster.local_pod_dir(namespace, "gated") / "volumes" / "state" / "ready"
    ready_file.touch()
    pod = cluster.wait_for_pod(namespace, "gated", _ready, timeout=20, what="gated Ready")
    assert [c.ready for c in pod.status.container_statuses] == [True, True]
    cluster.wait_for(lambda: _slice_endpoint(cluster, namespace, "gated").conditions.ready,
                     timeout=20, what="the endpoint to be ready")

    ready_file.unlink()
    cluster.wait_for_pod(namespace, "gated", lambda p: not _ready(p), timeout=20,
                         what="gated not Ready again")
    cluster.wait_for(
        lambda: _slice_endpoint(cluster, namespace, "gated").conditions.ready is False,
        timeout=20, what="the endpoint to be not ready again")
    pod = core.read_namespaced_pod("gated", namespace)
    assert [c.restart_count for c in pod.status.container_statuses] == restarts  # liveness held


def _probe_status(ip: str) -> int | None:
    try:
        urllib.request.urlopen(f"http://{ip}:8081/readyz", timeout=2)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None
    return 200


SICKLY = """
import os, time
if os.path.exists("/state/sick"):
    os.remove("/state/sick")  # healthy again after the restart
print("started", flush=True)
time.sleep(600)
"""


def test_failing_liveness_probe_restarts_the_container(
        cluster: DevCluster, namespace: str) -> None:
    main = {
        "name": "main", "image": "ignored", "command": ["python", "-c", SICKLY],
        "volumeMounts": [{"name": "state", "mountPath": "/state"}],
        # The delay gives the restarted container time to heal before it is judged.
        "livenessProbe": {"exec": {"command": ["sh", "-c", "! test -e /state/sick"]},
                          "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 2},
    }
    core = cluster.core()
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "sickly"},
        "spec": _local_pod_spec(main, volumes=[{"name": "state", "emptyDir": {}}])})
    cluster.wait_for_pod_phase(namespace, "sickly", "Running", timeout=60)
    # Running is not enough: the script heals itself on start, so let it start first.
    cluster.wait_for(lambda: "started" in cluster.local_pod_logs(namespace, "sickly"),
                     timeout=30, what="the container's first output")
    (cluster.local_pod_dir(namespace, "sickly") / "volumes" / "state" / "sick").touch()

    def restarted_and_ready(pod: Any) -> bool:
        return _ready(pod) and pod.status.container_statuses[0].restart_count == 1

    pod = cluster.wait_for_pod(namespace, "sickly", restarted_and_ready, timeout=60,
                               what="a restart after the liveness probe failed")
    assert pod.status.container_statuses[0].last_state.terminated is not None
    # Ready as soon as it runs (no readiness probe): its output may come a little later.
    cluster.wait_for(lambda: cluster.local_pod_logs(namespace, "sickly").count("started") == 2,
                     timeout=30, what="the restarted container's output")
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=sickly").items
    assert {"Unhealthy", "Killing"} <= {event.reason for event in events}


# -- ConfigMap volumes follow their ConfigMap -------------------------------------------------

# Reads the mounted file in a loop; a torn read (a half-written file, or the file missing) is
# reported in /out/torn. The last version seen goes to /out/seen (itself replaced atomically).
READER = """
import json, os, pathlib, time
out = pathlib.Path("/out")
while True:
    for path in ("/etc/kubetune-serving/config.json", "/etc/projected/serving.json"):
        try:
            config = json.loads(pathlib.Path(path).read_text())
            assert len(set(config["filler"])) == 1 and config["filler"][0] == config["version"]
        except Exception as error:
            with open(out / "torn", "a") as torn:
                torn.write(f"{path}: {type(error).__name__}: {error}\\n")
            continue
        seen = out / f"seen-{os.path.basename(path)}"
        (out / "seen.tmp").write_text(str(config["version"]))
        os.replace(out / "seen.tmp", seen)
    time.sleep(0.005)
"""


def _config(version: int) -> dict[str, str]:
    # ~300 kB, so that a write takes long enough that a non-atomic one would be seen torn.
    return {"config.json": json.dumps({"version": version, "filler": [version] * 60_000})}


def test_config_map_updates_reach_a_running_pod_atomically(
        cluster: DevCluster, namespace: str) -> None:
    core = cluster.core()
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "serving"},
                                                  "data": _config(1)})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "token"},
                                              "stringData": {"token": "one"}})
    reader = {
        "name": "reader", "image": "ignored", "command": ["python", "-c", READER],
        "volumeMounts": [
            {"name": "serving", "mountPath": "/etc/kubetune-serving", "readOnly": True},
            {"name": "projected", "mountPath": "/etc/projected", "readOnly": True},
            {"name": "token", "mountPath": "/etc/token", "readOnly": True},
            {"name": "out", "mountPath": "/out"}],
    }
    volumes = [
        {"name": "serving", "configMap": {"name": "serving"}},
        {"name": "projected", "projected": {"sources": [{"configMap": {
            "name": "serving", "items": [{"key": "config.json", "path": "serving.json"}]}}]}},
        {"name": "token", "secret": {"secretName": "token"}},
        {"name": "out", "emptyDir": {}},
    ]
    core.create_namespaced_pod(namespace, {"metadata": {"name": "reader"},
                                           "spec": _local_pod_spec(reader, volumes=volumes)})
    cluster.wait_for_pod_phase(namespace, "reader", "Running", timeout=60)
    folder = cluster.local_pod_dir(namespace, "reader") / "volumes"
    out = folder / "out"

    config_file = folder / "serving" / "config.json"
    size = len(_config(1)["config.json"])  # every version has the same size

    # The test reads through the pod's volume folder too, as fast as it can.
    torn_here: list[str] = []
    stop = threading.Event()

    def read_from_outside() -> None:
        while not stop.is_set():
            try:
                data = config_file.read_bytes()
            except OSError as error:
                torn_here.append(f"{type(error).__name__}: {error}")
                continue
            if len(data) != size or not data.endswith(b"]}"):
                torn_here.append(f"{len(data)} bytes, ending {data[-20:]!r}")

    outside = threading.Thread(target=read_from_outside, daemon=True)
    outside.start()
    seen = {name: out / f"seen-{name}" for name in ("config.json", "serving.json")}
    try:
        for version in range(1, 5):
            held = None
            if version > 1:
                held = config_file.open("rb")  # opened, not read, before the update
                core.patch_namespaced_config_map("serving", namespace,
                                                 {"data": _config(version)})
            changed = time.monotonic()
            for name, path in seen.items():
                cluster.wait_for(lambda p=path, v=str(version): _read(p) == v, timeout=10,
                                 what=f"version {version} in the pod's {name}")
            assert time.monotonic() - changed < 6  # ~1 s refresh, on a busy machine
            if held is not None:
                # A new file replaced the old one: what was open still reads the old version,
                # whole (a file rewritten in place would read new or truncated content).
                with held:
                    assert json.loads(held.read())["version"] == version - 1
    finally:
        stop.set()
        outside.join(timeout=10)

    assert not (out / "torn").exists(), (out / "torn").read_text()
    assert not torn_here, torn_here[:3]
    # The kubelet's layout: the visible name is a symlink through ..data to one version.
    config_link = folder / "serving" / "config.json"
    assert os.readlink(config_link) == "..data/config.json"
    assert os.readlink(folder / "serving" / "..data").startswith("..")
    versions = [p for p in (folder / "serving").iterdir() if p.name.startswith("..2")]
    assert len(versions) == 1  # old versions are deleted

    core.patch_namespaced_secret("token", namespace, {"stringData": {"token": "two"}})
    cluster.wait_for(lambda: _read(folder / "token" / "token") == "two", timeout=10,
                     what="the Secret update in the pod's volume")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
