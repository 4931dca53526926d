"""`kubetune serve-agent` against a real Ollama (v0.11.4, built by hack/build-ollama.sh).

Each test starts its own `ollama serve` (own port, own model store) and the agent as a
subprocess, as in a serving pod, with artifacts on a directory standing in for the training
claim (``pvc://``). The two versions are tiny random Llama models of two seeds, converted to
f16 GGUF by llama.cpp's converter, with the Modelfile the exporter writes.

- two versions registered, the alias on v1, /readyz 200, and ``/v1/chat/completions`` on the
  alias answers what ``<model>:v1`` answers; the switch to v2 moves the alias with a request
  loop running and no failed request;
- a GGUF whose bytes do not match its sha256 is refused (Failed, checksum, permanent), never
  registered, and the other version keeps serving;
- a restarted agent fetches, uploads and creates nothing (blob and manifest mtimes unchanged);
- Ollama killed: not ready, nothing deleted; ready again once Ollama is back;
- a version removed from serving.json is deleted from Ollama, after the alias moved off it.

Needs Ollama (hack/build-ollama.sh) and llama.cpp (hack/fetch-llama-cpp.sh); without them these
tests fail and say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubetune.api.serving import AgentStatus

pytestmark = pytest.mark.slow

MODEL = "support"
CLAIM = "artifacts"
CHAT = {"messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 6, "seed": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, on_fail: Callable[[], str]
) -> float:
    """Seconds until ``check()`` held; fails naming ``what`` and the agent's state after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout} s\n{on_fail()}", pytrace=False)


# --- artifacts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    uri: str
    path: Path
    sha256: str
    modelfile_uri: str
    modelfile_sha256: str

    def version(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "ggufUri": self.uri,
            "sha256": self.sha256,
            "sizeBytes": self.path.stat().st_size,
            "modelfileUri": self.modelfile_uri,
            "modelfileSha256": self.modelfile_sha256,
        }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pvc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny models (seeds 0 and 1) exported as f16 GGUF + Modelfile on a stand-in claim."""
    from transformers import AutoTokenizer

    from kubetune_trainer.export.chat_format import chat_format_from_tokenizer
    from kubetune_trainer.export.llamacpp import LlamaCppError, convert_hf_to_gguf
    from kubetune_trainer.export.modelfile import render_modelfile
    from kubetune_trainer.tiny_model import BUILTIN_CORPUS, build_tiny_llama

    root = tmp_path_factory.mktemp("pvc")
    work = tmp_path_factory.mktemp("models")
    for seed, version in ((0, "v1"), (1, "v2")):
        model_dir = build_tiny_llama(work / version, BUILTIN_CORPUS, seed=seed)
        out = root / CLAIM / MODEL / version
        try:
            convert_hf_to_gguf(model_dir, out / "model-f16.gguf", outtype="f16")
        except LlamaCppError as error:
            pytest.fail(str(error), pytrace=False)
        fmt = chat_format_from_tokenizer(AutoTokenizer.from_pretrained(model_dir))
        (out / "Modelfile").write_text(render_modelfile("model-f16.gguf", fmt))
    return root


def artifact(pvc_root: Path, version: str) -> Artifact:
    folder = pvc_root / CLAIM / MODEL / version
    return Artifact(
        uri=f"pvc://{CLAIM}/{MODEL}/{version}/model-f16.gguf",
        path=folder / "model-f16.gguf",
        sha256=_sha(folder / "model-f16.gguf"),
        modelfile_uri=f"pvc://{CLAIM}/{MODEL}/{version}/Modelfile",
        modelfile_sha256=_sha(folder / "Modelfile"),
    )


# --- processes ----------------------------------------------------------------------------------


class Ollama:
    """`ollama serve` on its own port and model store; SIGKILL-able and restartable."""

    def __init__(self, binary: Path, models: Path, log: Path) -> None:
        self.binary, self.models, self.log_path = binary, models, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> None:
        env = {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            "OLLAMA_MODELS": str(self.models),
            "HOME": str(self.models.parent),
            "OLLAMA_KEEP_ALIVE": "-1",  # as the serving pods run it
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: self.http.get("/api/version").status_code == 200, 30, "ollama up", self.tail
        )

    def kill(self) -> None:
        """SIGKILL the server and its runners, as a crashed container would die."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def tags(self) -> dict[str, str]:
        return {m["name"]: m["digest"] for m in self.http.get("/api/tags").json()["models"]}

    def chat(self, model: str) -> str:
        response = self.http.post(
            "/v1/chat/completions", json={"model": model, **CHAT, "temperature": 0}
        )
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    def blob(self, sha256: str) -> Path:
        return self.models / "blobs" / f"sha256-{sha256}"

    def manifest(self, model: str, tag: str) -> Path:
        return self.models / "manifests" / "registry.ollama.ai" / "library" / model / tag

    def tail(self) -> str:
        return "ollama log:\n" + self.log_path.read_text(errors="replace")[-3000:]


class Agent:
    """`kubetune serve-agent` as the serving pod's kubetune container runs it."""

    def __init__(self, workdir: Path, ollama: Ollama, pvc_root: Path) -> None:
        self.config = workdir / "serving.json"
        self.cache = workdir / "cache"
        self.log_path = workdir / "agent.log"
        self.ollama, self.pvc_root = ollama, pvc_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=5)

    def write_config(
        self, revision: str, versions: list[dict[str, Any]], served: str | None, keep: list[str]
    ) -> None:
        body = {
            "model": MODEL,
            "revision": revision,
            "versions": versions,
            "served": served,
            "keepLoaded": keep,
        }
        staged = self.config.with_suffix(".tmp")
        staged.write_text(json.dumps(body))
        staged.replace(self.config)  # atomic, as the kubelet's symlink swap is

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOSTNAME": "support-0"}
        args = [
            sys.executable, "-m", "kubetune.cli", "serve-agent",
            "--config", str(self.config),
            "--ollama", self.ollama.url,
            "--listen", f"127.0.0.1:{self.port}",
            "--cache-dir", str(self.cache),
            "--pvc-root", str(self.pvc_root),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.log_offset = self.log_path.stat().st_size
        wait_until(
            lambda: self.http.get("/healthz").status_code == 200, 60, "agent up", self.describe
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def status(self) -> AgentStatus:
        return AgentStatus.model_validate(self.http.get("/status").json())

    def readyz(self) -> int:
        return self.http.get("/readyz").status_code

    def version(self, name: str) -> Any:
        return next(v for v in self.status().versions if v.name == name)

    def rss_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def log_since_start(self) -> str:
        return self.log_path.read_bytes()[self.log_offset :].decode(errors="replace")

    def describe(self) -> str:
        try:
            status = self.status().model_dump_json(indent=1, by_alias=True)
        except (httpx.HTTPError, ValueError) as error:
            status = f"(no status: {error})"
        log = self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
        return f"agent status: {status}\nagent log:\n{log}\n{self.ollama.tail()}"

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 60) -> float:
        return wait_until(check, timeout, what, self.describe)


@pytest.fixture
def ollama(tmp_path: Path) -> Iterator[Ollama]:
    from kubetune_dev.tools import ToolchainError, find_ollama

    try:
        binary = find_ollama()
    except ToolchainError as error:
        pytest.fail(str(error), pytrace=False)
    server = Ollama(binary, tmp_path / "ollama" / "models", tmp_path / "ollama.log")
    server.models.mkdir(parents=True)
    server.start()
    yield server
    server.kill()
    server.http.close()


@pytest.fixture
def agent(tmp_path: Path, ollama: Ollama, pvc_root: Path) -> Iterator[Agent]:
    process = Agent(tmp_path, ollama, pvc_root)
    yield process
    process.stop()
    process.http.close()


def ready_on(agent: Agent, version: str, sha256: str) -> Callable[[], bool]:
    def check() -> bool:
        status = agent.status()
        return status.ready and status.served == version and status.served_digest == sha256

    return check


# --- tests --------------------------------------------------------------------------------------


def test_serves_v1_then_switches_to_v2_with_no_failed_request(
    agent: Agent, ollama: Ollama, pvc_root: Path, record_property: Callable[[str, object], None]
) -> None:
    v1, v2 = artifact(pvc_root, "v1"), artifact(pvc_root, "v2")
    agent.write_config("r1", [v1.version("v1"), v2.version("v2")], "v1", ["v1", "v2"])
    agent.start()
    registered = agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1")

    status = agent.status()
    assert status.revision == "r1" and status.pod == "support-0" and status.ollama_reachable
    assert [(v.name, v.phase, v.sha256_verified) for v in status.versions] == [
        ("v1", "Ready", True),
        ("v2", "Ready", True),
    ]
    assert agent.readyz() == 200
    shown = ollama.http.post("/api/show", json={"model": MODEL}).json()
    assert f"sha256-{v1.sha256}" in shown["modelfile"]  # the alias is v1's GGUF
    assert shown["template"] in v1.path.with_name("Modelfile").read_text()  # TEMPLATE registered
    # The GGUFs live in Ollama's blob store only, not twice; the Modelfiles stay cached.
    assert {p.name for p in agent.cache.iterdir()} == {
        f"sha256-{v1.modelfile_sha256}",
        f"sha256-{v2.modelfile_sha256}",
    }
    answer_v1, answer_v2 = ollama.chat(f"{MODEL}:v1"), ollama.chat(f"{MODEL}:v2")
    assert answer_v1 != answer_v2  # the two seeds answer differently, so answers tell them apart
    assert ollama.chat(MODEL) == answer_v1

    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def request_loop() -> None:
        with httpx.Client(base_url=ollama.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post("/v1/chat/completions", json={"model": MODEL, **CHAT})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    failures.append(repr(error))
                served[0] += 1

    loop = threading.Thread(target=request_loop)
    loop.start()
    try:
        # Requests before, during and after the switch (counted, not timed: the machine is shared).
        agent.wait(lambda: served[0] >= 3, "requests answered before the switch", timeout=60)
        agent.write_config("r2", [v1.version("v1"), v2.version("v2")], "v2", ["v2", "v1"])
        switch = agent.wait(ready_on(agent, "v2", v2.sha256), "ready on v2", timeout=30)
        after = served[0]
        agent.wait(lambda: served[0] >= after + 3, "requests answered after the switch", timeout=60)
    finally:
        stop.set()
        loop.join(timeout=60)

    assert failures == [], failures[:5]
    assert "HTTP Request:" not in agent.log_since_start()  # no per-request (URL) logging
    assert served[0] >= 6
    assert ollama.chat(MODEL) == answer_v2
    assert agent.readyz() == 200
    assert (
        f"sha256-{v2.sha256}"
        in ollama.http.post("/api/show", json={"model": MODEL}).json()["modelfile"]
    )
    rss = agent.rss_mib()
    record_property("register_two_versions_s", round(registered, 2))
    record_property("switch_s", round(switch, 2))
    record_property("agent_rss_mib", round(rss, 1))
    print(
        f"\nready on v1 after {registered:.2f} s; switch {switch:.2f} s; {served[0]} requests; agent RSS {rss:.0f} MiB"
    )


def test_a_corrupted_gguf_is_refused_and_the_other_version_keeps_serving(
    agent: Agent, ollama: Ollama, pvc_root: Path, tmp_path: Path
) -> None:
    v1, v2 = artifact(pvc_root, "v1"), artifact(pvc_root, "v2")
    corrupted = tmp_path / "v2-corrupted.gguf"
    data = bytearray(v2.path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    corrupted.write_bytes(bytes(data))
    bad = {**v2.version("v2"), "ggufUri": corrupted.as_uri()}  # file://, v2's real digest
    agent.write_config("r1", [v1.version("v1"), bad], "v1", ["v1"])
    agent.start()
    agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1")
    agent.wait(lambda: agent.version("v2").phase == "Failed", "v2 Failed")

    failed = agent.version("v2")
    assert failed.step == "checksum" and failed.permanent and not failed.sha256_verified
    assert "v2" in failed.message and v2.sha256 in failed.message
    assert hashlib.sha256(bytes(data)).hexdigest() in failed.message  # the digest it really has
    assert f"{MODEL}:v2" not in ollama.tags()
    assert ollama.http.head(f"/api/blobs/sha256:{v2.sha256}").status_code == 404
    assert (
        not list(agent.cache.glob(".partial-*"))
        and not (agent.cache / f"sha256-{v2.sha256}").exists()
    )
    assert agent.readyz() == 200
    assert ollama.chat(MODEL) == ollama.chat(f"{MODEL}:v1")
    time.sleep(3)  # permanent: not retried
    assert agent.log_since_start().count(f"{MODEL}:v2: fetching") == 1
    assert agent.version("v2").phase == "Failed"


def test_a_broken_config_edit_keeps_the_pod_serving_the_last_good_one(
    agent: Agent, ollama: Ollama, pvc_root: Path
) -> None:
    v1 = artifact(pvc_root, "v1")
    agent.write_config("r1", [v1.version("v1")], "v1", ["v1"])
    agent.start()
    agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1")
    staged = agent.config.with_suffix(".tmp")
    staged.write_text('{"model": "support", "revision": "r2", "versions": "oops"}')
    staged.replace(agent.config)
    agent.wait(lambda: "not a valid ServingConfig" in agent.status().message, "config error reported")
    status = agent.status()
    assert status.revision == "r1" and status.ready and agent.readyz() == 200
    assert "holding revision r1" in status.message
    assert ollama.chat(MODEL)  # still answers, and nothing was deleted
    assert f"{MODEL}:v1" in ollama.tags()


def test_a_restarted_agent_fetches_uploads_and_creates_nothing(
    agent: Agent, ollama: Ollama, pvc_root: Path
) -> None:
    v1 = artifact(pvc_root, "v1")
    agent.write_config("r1", [v1.version("v1")], "v1", ["v1"])
    agent.start()
    agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1")
    assert "uploading blob" in agent.log_since_start()
    blob, manifest = ollama.blob(v1.sha256), ollama.manifest(MODEL, "v1")
    before = (blob.stat().st_mtime_ns, manifest.stat().st_mtime_ns)

    agent.stop()
    agent.start()
    restarted = agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1 after restart")

    log = agent.log_since_start()
    assert "already registered" in log
    assert "uploading blob" not in log and "fetching" not in log
    assert (blob.stat().st_mtime_ns, manifest.stat().st_mtime_ns) == before
    assert not (agent.cache / f"sha256-{v1.sha256}").exists()
    print(f"\nready {restarted:.2f} s after the restart")


def test_ollama_killed_means_not_ready_and_nothing_deleted_until_it_is_back(
    agent: Agent, ollama: Ollama, pvc_root: Path
) -> None:
    v1, v2 = artifact(pvc_root, "v1"), artifact(pvc_root, "v2")
    agent.write_config("r1", [v1.version("v1"), v2.version("v2")], "v1", ["v1", "v2"])
    agent.start()
    agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1")
    agent.wait(lambda: agent.version("v2").phase == "Ready", "v2 Ready")
    tags = ollama.tags()

    ollama.kill()
    agent.wait(lambda: not agent.status().ollama_reachable and agent.readyz() == 503, "not ready")
    status = agent.status()
    assert "unreachable" in status.message and not status.ready
    assert all(v.phase != "Ready" for v in status.versions)  # nothing is known while it is away
    time.sleep(3)  # a few backoff rounds
    assert ollama.manifest(MODEL, "v1").is_file() and ollama.manifest(MODEL, "v2").is_file()

    ollama.start()
    recovered = agent.wait(ready_on(agent, "v1", v1.sha256), "ready again", timeout=60)
    agent.wait(lambda: agent.version("v2").phase == "Ready", "v2 Ready again")
    assert ollama.tags() == tags  # nothing deleted, nothing re-created
    assert "uploading blob" not in agent.log_since_start().split("unreachable")[-1]
    print(f"\nready {recovered:.2f} s after Ollama came back")


def test_a_version_removed_from_the_config_is_deleted(
    agent: Agent, ollama: Ollama, pvc_root: Path
) -> None:
    v1, v2 = artifact(pvc_root, "v1"), artifact(pvc_root, "v2")
    agent.write_config("r1", [v1.version("v1"), v2.version("v2")], "v1", ["v1", "v2"])
    agent.start()
    agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1")
    agent.wait(lambda: agent.version("v2").phase == "Ready", "v2 Ready")

    agent.write_config("r2", [v1.version("v1")], "v1", ["v1"])
    agent.wait(lambda: f"{MODEL}:v2" not in ollama.tags(), "support:v2 deleted")
    assert {f"{MODEL}:v1", f"{MODEL}:latest"} <= set(ollama.tags())
    assert agent.readyz() == 200

    # The served version removed in the same revision that serves another: the alias moves
    # first, then the old version goes.
    agent.write_config("r3", [v2.version("v2")], "v2", ["v2"])
    agent.wait(ready_on(agent, "v2", v2.sha256), "ready on v2")
    agent.wait(lambda: f"{MODEL}:v1" not in ollama.tags(), "support:v1 deleted")
    assert ollama.chat(MODEL) == ollama.chat(f"{MODEL}:v2")
    loaded = {m["name"] for m in ollama.http.get("/api/ps").json()["models"]}
    assert f"{MODEL}:v1" not in loaded


def test_files_ollama_refuses_fail_at_register_or_load_and_are_never_served(
    agent: Agent, ollama: Ollama, pvc_root: Path, tmp_path: Path
) -> None:
    """Bytes that match their digest but are no model: not GGUF at all (Ollama refuses the
    create: permanent at once), or a GGUF cut short (registered, but no runner can load it:
    permanent after three refusals). The served version is untouched."""
    v1 = artifact(pvc_root, "v1")
    junk, truncated = tmp_path / "junk.gguf", tmp_path / "truncated.gguf"
    junk.write_bytes(b"not a gguf file " * 4096)
    truncated.write_bytes(v1.path.read_bytes()[: v1.path.stat().st_size * 2 // 3])
    versions = [v1.version("v1")] + [
        {"name": name, "ggufUri": path.as_uri(), "sha256": _sha(path)}
        for name, path in (("junk", junk), ("cut", truncated))
    ]
    agent.write_config("r1", versions, "v1", ["v1"])
    agent.start()
    agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1")
    agent.wait(lambda: agent.version("junk").permanent, "junk Failed, permanent")
    agent.wait(lambda: agent.version("cut").permanent, "cut Failed, permanent", timeout=60)

    junk_state, cut_state = agent.version("junk"), agent.version("cut")
    assert (junk_state.phase, junk_state.step, junk_state.sha256_verified) == (
        "Failed",
        "register",
        True,
    )
    assert "not in GGUF format" in junk_state.message and "junk" in junk_state.message
    assert (cut_state.phase, cut_state.step) == ("Failed", "load")
    assert "unable to load model" in cut_state.message and "version cut" in cut_state.message
    assert (
        agent.log_since_start().count(f"{MODEL}:cut: fetching") == 1
    )  # fetched once, retried from Ollama's blob
    assert agent.readyz() == 200 and agent.status().served == "v1"
