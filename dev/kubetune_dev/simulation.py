"""The simulation contract: which nodes exist and how kwok drives the pods on them.

Tests decide how a pod on a simulated node ends by annotating it (also after it started):

- ``sim.kubetune.dev/outcome``: ``succeed`` | ``fail`` | ``oomkilled``; absent: stays Running;
- ``sim.kubetune.dev/exit-code``: integer; default 0 / 1 / 137 for the three outcomes;
- ``sim.kubetune.dev/termination-message``: put in
  ``status.containerStatuses[*].state.terminated.message``.

The node ``kubetune-local`` is kept Ready by kwok, but its pods are run for real by
:mod:`kubetune_dev.local_runner`, so every pod stage here excludes it.
"""

from __future__ import annotations

from typing import Any

OUTCOME_ANNOTATION = "sim.kubetune.dev/outcome"
EXIT_CODE_ANNOTATION = "sim.kubetune.dev/exit-code"
MESSAGE_ANNOTATION = "sim.kubetune.dev/termination-message"

LOCAL_NODE = "kubetune-local"
LOCAL_RUNNER_LABEL = "kubetune.dev/local-runner"
LOCAL_RUNNER_TAINT = {"key": LOCAL_RUNNER_LABEL, "value": "true", "effect": "NoSchedule"}
KWOK_MANAGED_LABEL = "kubetune.dev/kwok-managed"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"
GPU_NODES = tuple(f"kubetune-gpu-{index}" for index in range(4))
CPU_NODES = tuple(f"kubetune-cpu-{index}" for index in range(2))
GPUS_PER_NODE = 8

# outcome -> (pod phase, terminated.reason, default exit code)
OUTCOMES: dict[str, tuple[str, str, int]] = {
    "succeed": ("Succeeded", "Completed", 0),
    "fail": ("Failed", "Error", 1),
    "oomkilled": ("Failed", "OOMKilled", 137),
}

Manifest = dict[str, Any]


def local_pod_toleration() -> Manifest:
    """The toleration a pod needs (with ``nodeSelector``) to opt in to the local runner."""
    return {"key": LOCAL_RUNNER_LABEL, "operator": "Equal", "value": "true",
            "effect": "NoSchedule"}


def _node(name: str, labels: dict[str, str], capacity: dict[str, str],
          taints: list[Manifest] | None = None,
          addresses: list[Manifest] | None = None) -> Manifest:
    status: Manifest = {"capacity": capacity, "allocatable": dict(capacity)}
    if addresses:
        status["addresses"] = addresses
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                KWOK_MANAGED_LABEL: "true",
                **labels,
            },
        },
        "spec": {"taints": taints or []},
        "status": status,
    }


def node_manifests() -> list[Manifest]:
    """4 GPU nodes (8 x A100 each), 2 CPU-only nodes and the local-runner node."""
    gpu_capacity = {"cpu": "96", "memory": "1152Gi", "pods": "110",
                    "ephemeral-storage": "2Ti", GPU_RESOURCE: str(GPUS_PER_NODE)}
    gpu_labels = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": GPU_PRODUCT,
                  "nvidia.com/gpu.count": str(GPUS_PER_NODE), "nvidia.com/gpu.memory": "81920"}
    cpu_capacity = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    local_capacity = {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return [
        *(_node(name, gpu_labels, gpu_capacity) for name in GPU_NODES),
        *(_node(name, {}, cpu_capacity) for name in CPU_NODES),
        _node(LOCAL_NODE, {LOCAL_RUNNER_LABEL: "true"}, local_capacity,
              taints=[LOCAL_RUNNER_TAINT],
              addresses=[{"type": "InternalIP", "address": "127.0.0.1"},
                         {"type": "Hostname", "address": LOCAL_NODE}]),
    ]


def _stage(name: str, kind: str, match: list[Manifest], next_: Manifest,
           delay_ms: int = 0) -> Manifest:
    spec: Manifest = {"resourceRef": {"apiGroup": "v1", "kind": kind},
                      "selector": {"matchExpressions": match},
                      "next": next_}
    if delay_ms:
        spec["delay"] = {"durationMilliseconds": delay_ms, "jitterDurationMilliseconds": delay_ms}
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage",
            "metadata": {"name": name}, "spec": spec}


def _expr(key: str, operator: str, *values: str) -> Manifest:
    expression: Manifest = {"key": key, "operator": operator}
    if values:
        expression["values"] = list(values)
    return expression


_NOT_DELETED = _expr(".metadata.deletionTimestamp", "DoesNotExist")
_NOT_LOCAL = _expr(".spec.nodeName", "NotIn", LOCAL_NODE)
_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'

_NODE_STATUS = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
{{ with .status.addresses }}{{ YAML . 1 }}{{ else }}
- address: {{ NodeIP | Quote }}
  type: InternalIP
{{ end }}
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  operatingSystem: linux
  bootID: ""
  machineID: ""
  osImage: ""
  systemUUID: ""
phase: Running
"""

_POD_RUNNING = """\
{{ $now := Now }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

_POD_TERMINATED = """\
{{ $now := Now }}
{{ $started := or .status.startTime $now }}
{{ $annotations := .metadata.annotations }}
{{ $exitCode := or ( index $annotations "EXIT_CODE_ANNOTATION" ) "DEFAULT_EXIT_CODE" }}
{{ $message := index $annotations "MESSAGE_ANNOTATION" }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready, reason: PodCompleted}
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady, reason: PodCompleted}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: {{ $exitCode }}
      reason: REASON
      startedAt: {{ $started | Quote }}
      finishedAt: {{ $now | Quote }}
      {{ with $message }}message: {{ . | Quote }}{{ end }}
{{ end }}
phase: PHASE
"""


def _terminated_template(phase: str, reason: str, exit_code: int) -> str:
    return (_POD_TERMINATED.replace("EXIT_CODE_ANNOTATION", EXIT_CODE_ANNOTATION)
            .replace("DEFAULT_EXIT_CODE", str(exit_code))
            .replace("MESSAGE_ANNOTATION", MESSAGE_ANNOTATION)
            .replace("REASON", reason).replace("PHASE", phase))


def kwok_stages() -> list[Manifest]:
    """Every stage kwok runs, explicitly (kwok's defaults are never used)."""
    stages = [
        _stage("node-initialize", "Node", [_expr(_READY, "NotIn", "True")],
               {"statusTemplate": _NODE_STATUS}),
        # With --node-lease-duration-seconds, kwok renews node leases itself; the status
        # heartbeat only needs to be rare.
        _stage("node-heartbeat", "Node",
               [_expr(".status.phase", "In", "Running"), _expr(_READY, "In", "True")],
               {"statusTemplate": _NODE_STATUS}, delay_ms=60_000),
        _stage("pod-ready", "Pod",
               [_NOT_DELETED, _NOT_LOCAL, _expr(".status.podIP", "DoesNotExist")],
               {"statusTemplate": _POD_RUNNING}),
        _stage("pod-delete", "Pod",
               [_NOT_LOCAL, _expr(".metadata.deletionTimestamp", "Exists")],
               {"finalizers": {"empty": True}, "delete": True}),
    ]
    for outcome, (phase, reason, exit_code) in OUTCOMES.items():
        stages.append(_stage(
            f"pod-{outcome}", "Pod",
            [_NOT_DELETED, _NOT_LOCAL, _expr(".status.phase", "In", "Running"),
             _expr(f'.metadata.annotations["{OUTCOME_ANNOTATION}"]', "In", outcome)],
            {"statusTemplate": _terminated_template(phase, reason, exit_code)},
        ))
    return stages
