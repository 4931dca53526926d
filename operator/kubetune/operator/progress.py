"""Live progress of running trainers, scraped from their Prometheus endpoint."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from kubetune.api import constants as c
from kubetune.api.trainer_contract import Progress, parse_progress_metrics

log = logging.getLogger(__name__)


def scrape_progress(pod: dict[str, Any], timeout: float) -> Progress | None:
    """Progress of a running trainer pod, or None when its endpoint does not answer."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    try:
        response = httpx.get(f"http://{host}:{c.METRICS_PORT}/metrics", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.debug("no progress from %s: %s", ip, exc)
        return None
    return parse_progress_metrics(response.text)
