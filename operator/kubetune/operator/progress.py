"""Live progress of running trainers, scraped from their Prometheus endpoint."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx

from kubetune.api import constants as c
from kubetune.api.trainer_contract import Progress, parse_progress_metrics

log = logging.getLogger(__name__)

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _http() -> httpx.Client:
    """One pooled client for every scrape. `httpx.get` builds a client per call, and with it a
    TLS context (the system CA bundle parsed again) even for plain HTTP: with 1000 running
    trainers that was 78 % of the operator's CPU (bench/operator_scale.py under py-spy)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client()
        return _client


def scrape_progress(pod: dict[str, Any], timeout: float) -> Progress | None:
    """Progress of a running trainer pod, or None when its endpoint does not answer."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    try:
        response = _http().get(f"http://{host}:{c.METRICS_PORT}/metrics", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.debug("no progress from %s: %s", ip, exc)
        return None
    return parse_progress_metrics(response.text)
