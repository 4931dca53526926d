"""One pod on the local node, run as real processes: init containers, then containers.

A PodRun owns a thread that materialises the pod's volumes, starts each container as
``unshare --mount --propagation private -- python local_exec.py PLAN`` (its own process group,
output to ``<state-dir>/pods/<namespace>/<pod>/<container>.log``), restarts containers as the
pod's ``restartPolicy`` says, and patches the pod status as the kubelet would, only when it
changed. The pod has its own IP (given by the runner, see
:mod:`kubetune_dev.local_pod_network`). Beside the run thread, each probe of a running
container has a thread (:mod:`kubetune_dev.local_pod_probe`) and one thread refreshes the
pod's ConfigMap/Secret/projected volumes every ``VOLUME_REFRESH_SECONDS``
(:mod:`kubetune_dev.local_pod_volumes`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from kubetune_dev import local_exec
from kubetune_dev.local_pod_probe import (
    Probe,
    ProbeTarget,
    ProbeWorker,
    container_probes,
)
from kubetune_dev.local_pod_setup import (
    ContainerConfigError,
    LaunchPlan,
    Pod,
    UnsupportedPodSpec,
    VolumeNotReady,
    base_environment,
    build_launch_plan,
)
from kubetune_dev.local_pod_status import (
    ConditionTimes,
    ContainerState,
    Status,
    now,
    pod_status_patch,
    terminated_state,
    termination_message,
)
from kubetune_dev.local_pod_volumes import (
    REFRESHED_KINDS,
    TokenCache,
    materialise_volumes,
    refresh_volumes,
)
from kubetune_dev.processes import kill_when_parent_dies

log = logging.getLogger(__name__)
MAX_KILL_GRACE_SECONDS = 10.0
MAX_RESTART_BACKOFF_SECONDS = 10.0
STATUS_RESYNC_SECONDS = 5.0
VOLUME_REFRESH_SECONDS = 1.0  # a real kubelet: its sync period (~1 min) plus its cache's TTL


def pod_dir(state_dir: Path, namespace: str, name: str) -> Path:
    """Where the local runner keeps a pod's logs, volumes and termination messages."""
    return state_dir / "pods" / namespace / name


def local_pod_logs(state_dir: Path, namespace: str, name: str,
                   container: str | None = None) -> str:
    """Output of a pod's container on the local runner (the only container if not named)."""
    folder = pod_dir(state_dir, namespace, name)
    if container is None:
        logs = sorted(folder.glob("*.log"))
        if len(logs) != 1:
            names = [path.stem for path in logs]
            raise ValueError(f"pod {namespace}/{name} has logs for {names}: name a container")
        return logs[0].read_text(errors="replace")
    return (folder / f"{container}.log").read_text(errors="replace")


class PodRun:
    """Runs one pod's containers until they end, the pod is deleted or the runner stops."""

    def __init__(self, core: client.CoreV1Api, pod: Pod, state_dir: Path,
                 apiserver: tuple[str, int], pod_ip: str,
                 on_exit: Callable[[PodRun], None]) -> None:
        self.core = core
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.namespace: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self.state_dir = state_dir
        self.dir = pod_dir(state_dir, self.namespace, self.name)
        self.apiserver = apiserver
        self.pod_ip = pod_ip
        self.on_exit = on_exit
        self.created_paths: list[str] = []
        self._stopping = threading.Event()
        self._done = threading.Event()  # the run thread ended: helpers stop
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._probe_stops: dict[str, threading.Event] = {}  # per container run
        self._lock = threading.Lock()  # processes, probe stops and probe results
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        spec = pod["spec"]
        self._containers = [ContainerState(c["name"], c.get("image", ""))
                            for c in spec["containers"]]
        self._init_containers = [ContainerState(c["name"], c.get("image", ""))
                                 for c in spec.get("initContainers") or []]
        self._start_time = now()
        self._tokens = TokenCache()
        self._status_lock = threading.Lock()  # status patches come from several threads
        self._phase = "Pending"
        self._condition_times = ConditionTimes()
        self._last_status: Status | None = None

    def start(self) -> None:
        if self.dir.exists() and (self.dir / ".uid").read_text(errors="ignore") != self.uid:
            shutil.rmtree(self.dir)  # an older pod of the same name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / ".uid").write_text(self.uid)
        self._thread.start()

    def kill(self, grace: float) -> None:
        """Stop the pod's processes (SIGTERM, SIGKILL after ``grace`` s) and wait for the run."""
        self._stopping.set()
        with self._lock:
            processes = list(self._processes.values())
            for stop in self._probe_stops.values():
                stop.set()
        live = [p for p in processes if p.poll() is None]
        self._terminate(live, grace)
        self._thread.join(timeout=MAX_KILL_GRACE_SECONDS)

    def _terminate(self, live: list[subprocess.Popen[bytes]], grace: float) -> None:
        self._signal(live, signal.SIGTERM)
        deadline = time.monotonic() + min(grace, MAX_KILL_GRACE_SECONDS)
        while time.monotonic() < deadline and any(p.poll() is None for p in live):
            time.sleep(0.1)
        self._signal(live, signal.SIGKILL)  # also whatever the container left in its group
        for process in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)  # reap, so no zombie outlives the pod

    @staticmethod
    def _signal(processes: list[subprocess.Popen[bytes]], signum: int) -> None:
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)

    # -- the run thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            volumes = self._wait_for_volumes()
            if volumes is not None:
                self._start_volume_refresh()
                if self._run_init_containers(volumes):
                    self._run_containers(volumes)
        except UnsupportedPodSpec as error:
            self._fail_unsupported(str(error))
        except Exception:
            log.exception("pod %s/%s: run failed", self.namespace, self.name)
        finally:
            self._done.set()
            with self._lock:
                for stop in self._probe_stops.values():
                    stop.set()
            self._collect_created_paths()
            self.on_exit(self)

    def _collect_created_paths(self) -> None:
        for listing in sorted(self.dir.glob("*.created-paths")):
            self.created_paths.extend(listing.read_text().split())
            listing.unlink()

    def _patch(self, phase: str | None = None) -> None:
        """Patch the pod status for ``phase`` (None: the current one), unless nothing changed."""
        with self._status_lock:
            if phase is not None:
                self._phase = phase
            if self._stopping.is_set() and (phase is None or phase in ("Succeeded", "Failed")):
                return  # being deleted: the pod object is going away
            body = pod_status_patch(self._phase, self._containers, self._init_containers,
                                    self._start_time, self.pod_ip, self._condition_times)
            if body == self._last_status:
                return
            try:
                self.core.patch_namespaced_pod_status(self.name, self.namespace, body)
            except client.ApiException as error:
                if error.status != 404:
                    raise
            self._last_status = body

    def _try_patch(self) -> None:
        """Patch from outside the run thread, or to retry one that failed: failures are logged
        (the next call sends the status again, since only a sent status counts as sent)."""
        try:
            self._patch()
        except Exception as error:
            log.warning("pod %s/%s: status not patched: %s", self.namespace, self.name, error)

    def _record_event(self, container: str, reason: str, message: str) -> None:
        """A Warning event on the pod, as the kubelet records failed probes and kills."""
        stamp = now()
        event = {
            "metadata": {"generateName": f"{self.name}."},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": self.namespace,
                               "name": self.name, "uid": self.uid,
                               **({"fieldPath": f"spec.containers{{{container}}}"}
                                  if container else {})},
            "reason": reason, "message": message[:1024], "type": "Warning", "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": "kubelet", "host": self.pod["spec"].get("nodeName", "")},
        }
        try:
            self.core.create_namespaced_event(self.namespace, event)  # type: ignore[arg-type]
        except Exception as error:  # an event is worth no failure
            log.info("pod %s/%s: event %s not recorded: %s", self.namespace, self.name,
                     reason, error)

    def _wait_for_volumes(self) -> dict[str, Path] | None:
        reported = ""
        while not self._stopping.is_set():
            try:
                return materialise_volumes(self.core, self.pod, self.dir, self.state_dir,
                                           self.pod_ip, self._tokens)
            except VolumeNotReady as error:
                for state in self._init_containers or self._containers:
                    state.waiting_message = f"waiting for volumes: {error}"
                self._patch("Pending")
                if str(error) != reported:  # the kubelet's FailedMount event, once per cause
                    reported = str(error)
                    self._record_event("", "FailedMount", f"MountVolume.SetUp failed: {error}")
                self._stopping.wait(1.0)
        return None

    def _start_configured(self, state: ContainerState, init: bool, volumes: dict[str, Path],
                          phase: str) -> bool:
        """Start a container once the ConfigMaps/Secrets its environment reads exist; until
        then it waits with reason CreateContainerConfigError and the kubelet's message, and a
        Warning event `Failed` says so. False when the pod is stopped meanwhile."""
        reported = ""
        while not self._stopping.is_set():
            try:
                self._start_container(state, init, volumes)
            except ContainerConfigError as error:
                state.waiting_reason, state.waiting_message = "CreateContainerConfigError", str(error)
                self._patch(phase)
                if str(error) != reported:
                    reported = str(error)
                    self._record_event(state.name, "Failed", f"Error: {error}")
                self._stopping.wait(1.0)
                continue
            state.waiting_reason, state.waiting_message = "ContainerCreating", ""
            return True
        return False

    def _start_volume_refresh(self) -> None:
        volumes = self.pod["spec"].get("volumes") or []
        if any(kind in volume for volume in volumes for kind in REFRESHED_KINDS):
            threading.Thread(target=self._refresh_volumes, daemon=True,
                             name=f"volumes-{self.name}").start()

    def _refresh_volumes(self) -> None:
        while not self._done.wait(VOLUME_REFRESH_SECONDS) and not self._stopping.is_set():
            try:
                changed = refresh_volumes(self.core, self.pod, self.dir, self.pod_ip,
                                          self._tokens)
            except Exception as error:  # the apiserver away, a source gone bad: try again
                log.info("pod %s/%s: volumes not refreshed: %s", self.namespace, self.name,
                         error)
                continue
            if changed:
                log.info("pod %s/%s: volumes %s updated", self.namespace, self.name, changed)

    def _spec(self, name: str, init: bool) -> dict[str, Any]:
        key = "initContainers" if init else "containers"
        return next(c for c in self.pod["spec"][key] if c["name"] == name)

    def _start_container(self, state: ContainerState, init: bool,
                         volumes: dict[str, Path]) -> subprocess.Popen[bytes]:
        spec = self._spec(state.name, init)
        plan = build_launch_plan(self.core, self.pod, spec, volumes, self.dir,
                                 base_environment(self.pod, *self.apiserver), self.pod_ip)
        probes = {} if init else container_probes(spec)
        plan_file = self.dir / f"{state.name}.plan.json"
        plan_file.write_text(json.dumps(plan.to_json_dict(), indent=1))
        Path(plan.start_error_file).unlink(missing_ok=True)
        argv = [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private",
                "--", sys.executable, local_exec.__file__, str(plan_file)]
        with (self.dir / f"{state.name}.log").open("ab") as output:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=kill_when_parent_dies)
        with self._lock:
            self._processes[state.name] = process
            state.pid, state.started_at, state.terminated = process.pid, now(), None
            state.startup_passed = False if "startup" in probes else None
            state.readiness_passed = False if "readiness" in probes else None
            stop = self._probe_stops[state.name] = threading.Event()
        if probes:
            self._start_probes(state, spec, plan, process, probes, stop)
        return process

    # -- probes ---------------------------------------------------------------------------

    def _start_probes(self, state: ContainerState, spec: dict[str, Any], plan: LaunchPlan,
                      process: subprocess.Popen[bytes], probes: dict[str, Probe],
                      stop: threading.Event) -> None:
        ports = {p["name"]: int(p["containerPort"]) for p in spec.get("ports") or []
                 if p.get("name")}
        target = ProbeTarget(self.pod_ip, process.pid, plan.env, ports)
        started = threading.Event()  # the startup probe passed (at once without one)
        if "startup" not in probes:
            started.set()
        begun = time.monotonic()
        for kind, probe in probes.items():
            def on_change(passed: bool, detail: str, kind: str = kind) -> None:
                self._on_probe_result(state, process, kind, passed, detail, started)

            ProbeWorker(probe, target, begun, on_change, stop,
                        gate=None if kind == "startup" else started).start()

    def _on_probe_result(self, state: ContainerState, process: subprocess.Popen[bytes],
                         kind: str, passed: bool, detail: str, started: threading.Event) -> None:
        with self._lock:
            if self._processes.get(state.name) is not process or state.terminated is not None:
                return  # a result about a container run that is over
            if kind == "startup":
                state.startup_passed = passed
            elif kind == "readiness":
                state.readiness_passed = passed
        where = f"pod {self.namespace}/{self.name} container {state.name}"
        log.info("%s: %s probe %s (%s)", where, kind, "passed" if passed else "failed", detail)
        if not passed:
            self._record_event(state.name, "Unhealthy",
                               f"{kind.capitalize()} probe failed: {detail}")
        if kind == "startup" and passed:
            started.set()
        if kind in ("startup", "liveness") and not passed:
            self._record_event(state.name, "Killing", f"Container {state.name} failed "
                               f"{kind} probe, will be restarted")
            grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
            self._terminate([process], grace)  # the run thread sees the exit and restarts it
            return
        self._try_patch()

    # -- containers -----------------------------------------------------------------------

    def _finish_container(self, state: ContainerState, init: bool, exit_code: int) -> None:
        spec = self._spec(state.name, init)
        with self._lock:
            self._probe_stops[state.name].set()
        start_error = self.dir / f"{state.name}.start-error"
        reason = None
        if start_error.exists():
            message, reason = start_error.read_text(), "StartError"
        else:
            message = termination_message(
                exit_code, self.dir / f"{state.name}.termination-log",
                self.dir / f"{state.name}.log",
                spec.get("terminationMessagePolicy", "File"))
        state.terminated = terminated_state(exit_code, message, state.started_at or now(),
                                            state.pid, reason)

    def _should_restart(self, exit_code: int, init: bool) -> bool:
        policy: str = self.pod["spec"].get("restartPolicy", "Always")
        if init or policy == "OnFailure":  # init containers only ever restart on failure
            return policy != "Never" and exit_code != 0
        return policy == "Always"

    def _restart(self, state: ContainerState, init: bool, volumes: dict[str, Path]) -> None:
        backoff = min(2.0 ** state.restart_count, MAX_RESTART_BACKOFF_SECONDS)
        state.last_terminated, state.restart_count = state.terminated, state.restart_count + 1
        if not self._stopping.wait(backoff):
            self._start_configured(state, init, volumes, "Pending" if init else "Running")

    def _wait(self, states: list[ContainerState], init: bool, volumes: dict[str, Path],
              phase: str) -> bool:
        """Run ``states`` until all ended for good; False when the run is being stopped."""
        resync = time.monotonic() + STATUS_RESYNC_SECONDS
        while not self._stopping.is_set():
            if time.monotonic() >= resync:  # sends only what a failed patch did not
                self._try_patch()
                resync = time.monotonic() + STATUS_RESYNC_SECONDS
            changed = False
            for state in states:
                process = self._processes.get(state.name)
                if state.terminated is not None or process is None:
                    continue
                code = process.poll()
                if code is None:
                    continue
                exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N
                self._finish_container(state, init, exit_code)
                changed = True
                if self._should_restart(exit_code, init):
                    self._patch(phase)
                    self._restart(state, init, volumes)
            if changed:
                self._patch(phase)
            if all(state.terminated is not None for state in states):
                return True
            time.sleep(0.1)
        return False

    def _run_init_containers(self, volumes: dict[str, Path]) -> bool:
        for state in self._init_containers:
            if not self._start_configured(state, True, volumes, "Pending"):
                return False
            self._patch("Pending")
            if not self._wait([state], True, volumes, "Pending"):
                return False
            if state.terminated and state.terminated["exitCode"] != 0:
                self._patch("Failed")
                return False
        return True

    def _run_containers(self, volumes: dict[str, Path]) -> None:
        for state in self._containers:
            if not self._start_configured(state, False, volumes, "Pending"):
                return
        self._patch("Running")
        if self._wait(self._containers, False, volumes, "Running"):
            failed = any(s.terminated and s.terminated["exitCode"] != 0 for s in self._containers)
            self._patch("Failed" if failed else "Succeeded")

    def _fail_unsupported(self, message: str) -> None:
        log.warning("pod %s/%s: %s", self.namespace, self.name, message)
        for state in self._init_containers + self._containers:
            if state.terminated is None:
                state.terminated = terminated_state(128, message, now(), None, "StartError")
        self._patch("Failed")
