"""Helpers for the serving tests and bench/serving.py: train tiny versions through the real
operator, apply a ModelDeployment whose pods the local pod runner runs (real Ollama built by
hack/build-ollama.sh, real serve-agent), and drive requests at every pod."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client

from kubetune.api import constants as c
from kubetune.api import serving as s
from kubetune.operator.builders.serving import selector_labels
from kubetune_dev import LOCAL_NODE, DevCluster, local_pod_toleration
from kubetune_dev.finetunejobs import apply_ftj
from kubetune_dev.tools import find_ollama

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "support-chat.jsonl"
LOCAL = {"nodeSelector": {"kubernetes.io/hostname": LOCAL_NODE}, "tolerations": [local_pod_toleration()]}


def operator_env() -> dict[str, str]:
    """The operator's settings for serving on the local pod runner: the containers run the
    Ollama built from its Go module and this checkout's serve-agent."""
    return {
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, "-m", "kubetune_trainer"]),
        "KUBETUNE_SERVE_AGENT_COMMAND": json.dumps([sys.executable, "-m", "kubetune.cli", "serve-agent"]),
        "KUBETUNE_OLLAMA_COMMAND": json.dumps([str(find_ollama()), "serve"]),
        "KUBETUNE_OPERATOR_METRICS_PORT": "0",
        "KUBETUNE_SERVING_RESYNC": "1",
    }


def tiny_version_spec(seed: int) -> dict[str, Any]:
    """A FineTuneJob spec that trains the builtin tiny Llama for a few steps and exports f16."""
    return {
        "baseModel": {"uri": "builtin://tiny-llama"},
        "method": "lora",
        "dataset": {"source": {"configMap": {"name": "support-data", "key": "train.jsonl"}}, "format": "chat"},
        "lora": {"r": 8, "alpha": 16},
        "training": {"maxSteps": 10, "learningRate": 3e-3, "batchSize": 8, "gradientAccumulationSteps": 1,
                     "maxLength": 128, "evalSteps": 10, "gradientCheckpointing": False, "seed": seed},
        "evaluation": {"metrics": ["exact_match"], "maxNewTokens": 4, "maxExamples": 4,
                       "gate": {"minExactMatch": 0.0, "minQuantizedAgreement": 0.0}},
        "export": {"gguf": ["f16"]},
        "resources": {"gpus": 0, **LOCAL},
        "backoffLimit": 0,
    }


def train_versions(cluster: DevCluster, namespace: str, names: list[str], operator: Any,
                   timeout: float = 1200) -> dict[str, dict[str, Any]]:
    """Train one FineTuneJob per name (in parallel) and return their Succeeded statuses."""
    core = cluster.core()
    try:
        data: Any = {"metadata": {"name": "support-data"}, "data": {"train.jsonl": DATA.read_text()}}
        core.create_namespaced_config_map(namespace, data)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    jobs = [apply_ftj(cluster, namespace, tiny_version_spec(seed=i + 1), name=n) for i, n in enumerate(names)]
    out = {}
    for job in jobs:
        status = job.wait_status(lambda st: st.get("phase") in ("Succeeded", "Failed"), "finished",
                                 timeout=timeout, operator=operator)
        assert status["phase"] == "Succeeded", f"{job.name}: {status.get('reason')}: {status.get('message')}"
        out[job.name] = status
    return out


def f16_sha(status: dict[str, Any]) -> str:
    return str(next(a["sha256"] for a in status["artifacts"] if a["kind"] == "gguf" and a["quantization"] == "f16"))


class Md:
    """A ModelDeployment under test."""

    def __init__(self, cluster: DevCluster, namespace: str, name: str) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.api = client.CustomObjectsApi(cluster.api_client())
        self.core = cluster.core()

    @classmethod
    def create(cls, cluster: DevCluster, namespace: str, name: str, spec: dict[str, Any]) -> Md:
        body = {"apiVersion": c.API_VERSION, "kind": c.MODELDEPLOYMENT_KIND, "metadata": {"name": name},
                "spec": {**LOCAL, **spec}}
        client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, body)
        return cls(cluster, namespace, name)

    def get(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.get_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, c.MODELDEPLOYMENT_PLURAL, self.name))

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def patch_spec(self, patch: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(c.GROUP, c.VERSION, self.namespace, c.MODELDEPLOYMENT_PLURAL,
                                                self.name, {"spec": patch})

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 300,
                    operator: Any = None) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            if operator is not None:
                operator.check_alive()
            st = self.status()
            return st if predicate(st) else None

        try:
            return self.cluster.wait_for(probe, timeout=timeout, what=f"{self.name}: {what}")
        except Exception:
            print("last status:", json.dumps(self.status(), indent=1))
            for pod in self.pods():
                for container in ("ollama", "kubetune"):
                    print(f"--- {pod.metadata.name}/{container}")
                    print(self.cluster.local_pod_logs(self.namespace, pod.metadata.name, container)[-3000:])
            if operator is not None:
                print(operator.log_tail())
            raise

    def wait_serving(self, version: str, operator: Any = None, timeout: float = 300) -> dict[str, Any]:
        return self.wait_status(
            lambda st: st.get("servedVersion") == version and st.get("phase") == "Ready",
            f"Ready serving {version}", timeout, operator)

    def pods(self) -> list[Any]:
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(self.name).items())
        return [p for p in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
                if p.metadata is not None and p.metadata.deletion_timestamp is None]

    def pod_ips(self) -> list[str]:
        return [p.status.pod_ip for p in self.pods() if p.status.pod_ip]

    def events(self) -> list[Any]:
        return list(self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.name}").items)


def post_json(url: str, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def alias_digest(pod_ip: str, model: str) -> str | None:
    """sha256 of the GGUF that `model` resolves to in the pod's Ollama (from /api/show)."""
    shown = post_json(f"http://{pod_ip}:{s.OLLAMA_PORT}/api/show", {"model": model})
    m = re.search(r"sha256-([0-9a-f]{64})", shown.get("modelfile", ""))
    return m.group(1) if m else None


def chat(pod_ip: str, model: str, timeout: float = 60, port: int = s.OLLAMA_PORT,
         content: str = "Where is my order?", max_tokens: int | None = 2) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}],
                            "temperature": 0}
    if max_tokens is not None:  # None: the version's Modelfile (PARAMETER num_predict) decides
        body["max_tokens"] = max_tokens
    return post_json(f"http://{pod_ip}:{port}/v1/chat/completions", body, timeout)


@dataclass
class RequestLoop:
    """A steady loop of chat completions on `model`, round-robin over the pods' IPs (the test's
    stand-in for the Service: the dev cluster has no kube-proxy), counting failures."""

    ips: list[str]
    model: str
    port: int = s.OLLAMA_PORT
    prompts: tuple[str, ...] = ("Where is my order?",)  # sent in turn
    max_tokens: int | None = 2
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    failure_times: list[float] = field(default_factory=list)  # time.monotonic() of each
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RequestLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            ip = self.ips[i % len(self.ips)]
            i += 1
            started = time.monotonic()
            try:
                # Every pod gets every prompt in turn (not prompt k on pod k mod pods).
                prompt = self.prompts[((i - 1) // len(self.ips)) % len(self.prompts)]
                answer = chat(ip, self.model, port=self.port, content=prompt, max_tokens=self.max_tokens)
                if not answer.get("choices"):
                    raise ValueError(f"no choices: {answer}")
                self.ok += 1
                self.latencies.append(time.monotonic() - started)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                body = exc.read().decode(errors="replace")[:300] if isinstance(exc, urllib.error.HTTPError) else ""
                self.failures.append(f"{ip}: {exc} {body}")
                self.failure_times.append(time.monotonic())
                time.sleep(0.05)  # a failing upstream answers at once: do not spin
