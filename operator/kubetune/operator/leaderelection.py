"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Every operator replica runs the same watches and keeps the same indexes warm (a hot standby);
only the replica holding the Lease reconciles and writes. The rules are client-go's:

- A candidate takes the Lease when it has no holder, or when the holder's record has not
  changed for `lease_duration` seconds *as observed on this replica's own clock* (the times in
  the Lease are written by another machine, so they are not compared with ours).
- Every write is an update with the last read resourceVersion: two candidates racing for an
  expired Lease cannot both win (the loser gets 409 Conflict).
- The leader renews every `retry_period`; when it has not renewed for `renew_deadline`
  (< lease_duration) it stops leading at once, before any other replica may take over, so
  the two never write at the same time.
- On a clean shutdown the leader gives the Lease up (holder cleared), so a rolling update hands
  over in one retry period instead of a whole lease duration.

Why not kopf peering: see docs/operator.md ("High availability").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from kubetune.operator.kube import FIELD_MANAGER, instrument_client
from kubetune.operator.metrics import LEADER_STATUS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    """Where the Lease lives, who we are, and the timing (seconds)."""

    name: str
    namespace: str
    identity: str
    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 2.0


def _micro_time(when: dt.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for the Lease in a daemon thread and says whether this replica leads.

    `leading` is set while this replica holds the Lease; `may_write()` is the stricter test used
    before every API write (it also fails when the last successful renewal is older than the
    renew deadline, even if the election thread has not noticed yet). `on_started_leading` and
    `on_stopped_leading` run in the election thread.
    """

    def __init__(
        self,
        config: LeaseConfig,
        client: kubernetes.client.ApiClient,
        on_started_leading: Callable[[], None] = lambda: None,
        on_stopped_leading: Callable[[], None] = lambda: None,
    ) -> None:
        if not 0 < config.retry_period < config.renew_deadline < config.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{config.retry_period} < {config.renew_deadline} < {config.lease_duration}: "
                "set KUBETUNE_LEASE_RETRY_PERIOD, KUBETUNE_LEASE_RENEW_DEADLINE and KUBETUNE_LEASE_DURATION"
            )
        self.config = config
        self.coordination = kubernetes.client.CoordinationV1Api(instrument_client(client))
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.leading = threading.Event()
        self.observed_once = threading.Event()  # the Lease has been read (or written) at least once
        self.transitions = 0  # times this replica became the leader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The last Lease record seen (spec and resourceVersion), and when *we* saw it change.
        self._record: dict[str, Any] | None = None
        self._resource_version: str | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0  # monotonic time of our last successful acquire or renew
        self._lock = threading.Lock()
        LEADER_STATUS.labels(config.name).set(0)

    # -- public ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubetune-leader-election", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def may_write(self) -> bool:
        """Whether this replica holds the Lease and renewed it within the renew deadline."""
        with self._lock:
            fresh = time.monotonic() - self._renewed_at < self.config.renew_deadline
        return self.leading.is_set() and fresh

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; when leading and `release`, give the Lease up for a fast handover."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.retry_period + 5)
        if self.leading.is_set():
            self._step_down("shutting down")
            if release:
                self._release()

    # -- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        cfg = self.config
        log.info("leader election: lease %s/%s, identity %s", cfg.namespace, cfg.name, cfg.identity)
        while not self._stop.is_set():
            try:
                acquired = self._try_acquire_or_renew()
            except Exception as exc:  # the apiserver unreachable, a timeout: try again
                log.warning("leader election: lease %s/%s not read or written: %s", cfg.namespace, cfg.name, exc)
                acquired = False
            if self.leading.is_set():
                with self._lock:
                    overdue = time.monotonic() - self._renewed_at >= cfg.renew_deadline
                if not acquired and (overdue or self._held_by_other()):
                    self._step_down("lease lost" if self._held_by_other() else "lease not renewed in time")
            elif acquired:
                self.leading.set()
                self.transitions += 1
                LEADER_STATUS.labels(cfg.name).set(1)
                log.info("leader election: %s became the leader", cfg.identity)
                self.on_started_leading()
            self._stop.wait(cfg.retry_period)

    def _step_down(self, why: str) -> None:
        self.leading.clear()
        LEADER_STATUS.labels(self.config.name).set(0)
        log.warning("leader election: %s stopped leading (%s)", self.config.identity, why)
        self.on_stopped_leading()

    def _held_by_other(self) -> bool:
        holder = (self._record or {}).get("holderIdentity")
        return bool(holder) and holder != self.config.identity

    def _try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, then take or renew it if allowed. True when we hold it."""
        cfg = self.config
        now_wall = dt.datetime.now(dt.UTC)
        lease = self._read()
        if lease is None:
            spec = self._spec(now_wall, transitions=0, acquired=now_wall)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace}, "spec": spec}
            try:
                created = self._json(self.coordination.create_namespaced_lease(
                    cfg.namespace, body, field_manager=FIELD_MANAGER,  # type: ignore[arg-type]
                    _preload_content=False, _request_timeout=self._timeout()))
            except ApiException as exc:
                if exc.status == 409:  # another replica created it first
                    return False
                raise
            self._observe(created)
            self._renewed()
            return True

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != cfg.identity:
            duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
            if time.monotonic() - self._observed_at < duration:
                return False  # held, and renewed within its duration as we observed it
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == cfg.identity:
            new_spec = {**spec, **self._spec(now_wall, transitions, _parse_acquired(spec, now_wall))}
        else:
            new_spec = {**spec, **self._spec(now_wall, transitions + 1, now_wall)}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": new_spec}
        try:
            updated = self._json(self.coordination.replace_namespaced_lease(
                cfg.name, cfg.namespace, body, field_manager=FIELD_MANAGER,  # type: ignore[arg-type]
                _preload_content=False, _request_timeout=self._timeout()))
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote it since we read it
                return False
            raise
        self._observe(updated)
        self._renewed()
        return True

    def _spec(self, now: dt.datetime, transitions: int, acquired: dt.datetime) -> dict[str, Any]:
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_duration)),
            "acquireTime": _micro_time(acquired),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }

    def _read(self) -> dict[str, Any] | None:
        cfg = self.config
        try:
            lease = self._json(self.coordination.read_namespaced_lease(
                cfg.name, cfg.namespace, _preload_content=False, _request_timeout=self._timeout()))
        except ApiException as exc:
            if exc.status == 404:
                self.observed_once.set()
                return None
            raise
        self._observe(lease)
        return lease

    def _observe(self, lease: dict[str, Any]) -> None:
        """Remember the record; restart the expiry clock only when the record changed."""
        record = lease.get("spec") or {}
        if record != self._record:
            self._record = record
            self._observed_at = time.monotonic()
        self._resource_version = lease["metadata"].get("resourceVersion")
        self.observed_once.set()

    def _renewed(self) -> None:
        with self._lock:
            self._renewed_at = time.monotonic()

    def _release(self) -> None:
        """Clear the holder so that a standby takes over at its next retry."""
        cfg = self.config
        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1,
                    "renewTime": _micro_time(dt.datetime.now(dt.UTC))}
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": spec}
            self._json(self.coordination.replace_namespaced_lease(
                cfg.name, cfg.namespace, body, field_manager=FIELD_MANAGER,  # type: ignore[arg-type]
                _preload_content=False, _request_timeout=self._timeout()))
            log.info("leader election: %s released the lease", cfg.identity)
        except Exception as exc:  # best effort: the lease then expires on its own
            log.warning("leader election: could not release the lease: %s", exc)

    def _timeout(self) -> float:
        # A hung request must not outlive the renew deadline (it would hold the loop past it).
        return max(1.0, self.config.renew_deadline / 2)

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        data: bytes = response.data
        response.release_conn()
        return json.loads(data)  # type: ignore[no-any-return]


def _parse_acquired(spec: dict[str, Any], default: dt.datetime) -> dt.datetime:
    raw = spec.get("acquireTime")
    if not raw:
        return default
    try:
        return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return default
