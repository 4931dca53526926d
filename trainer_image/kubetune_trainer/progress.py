"""Live training progress: the trainer's Prometheus gauges and its log line.

The trainer pod exposes the gauges named in the contract (`kubetune.api.trainer_contract.
PROGRESS_GAUGES`) on `KUBETUNE_METRICS_PORT` (default 9400) and prints one `progress …` line
per logging step; the operator scrapes the endpoint and reads it with the contract's
`parse_progress_metrics`. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubetune.api import constants as c
from kubetune.api.trainer_contract import PROGRESS_GAUGES as GAUGES
from kubetune.api.trainer_contract import (
    Progress,
    parse_progress_metrics,
    progress_from_values,
)

__all__ = [
    "GAUGES",
    "ProgressMetrics",
    "format_progress_line",
    "metrics_port_from_env",
    "parse_progress_line",
    "parse_progress_metrics",
    "progress_from_values",
]

_LINE = re.compile(r"^progress\s+(?P<body>.*)$")
_PAIR = re.compile(r"(?P<key>[a-z_]+)=(?P<value>\S+)")


def format_progress_line(progress: Progress) -> str:
    """`progress step=12/40 epoch=0.60 loss=1.2345 eval_loss=1.3000 lr=2.00e-04 tokens_per_s=812.3 eta_s=35`."""

    def num(value: float | None, fmt: str) -> str:
        return "nan" if value is None else format(value, fmt)

    total = "?" if progress.total_steps is None else str(progress.total_steps)
    eta = "?" if progress.eta_seconds is None else str(progress.eta_seconds)
    return (
        f"progress step={progress.step}/{total} epoch={num(progress.epoch, '.2f')} "
        f"loss={num(progress.loss, '.4f')} eval_loss={num(progress.eval_loss, '.4f')} "
        f"lr={num(progress.learning_rate, '.2e')} tokens_per_s={num(progress.tokens_per_second, '.1f')} "
        f"eta_s={eta}"
    )


def parse_progress_line(line: str) -> Progress | None:
    """Inverse of `format_progress_line`; None for any other log line."""
    match = _LINE.match(line.strip())
    if not match:
        return None
    raw = {m["key"]: m["value"] for m in _PAIR.finditer(match["body"])}
    values: dict[str, float | None] = {}

    def num(text: str | None) -> float | None:
        if text is None or text in ("?", "nan"):
            return None
        try:
            return float(text)
        except ValueError:
            return None

    step, _, total = raw.get("step", "0").partition("/")
    values["step"] = num(step)
    values["total_steps"] = num(total)
    for key, name in (
        ("epoch", "epoch"),
        ("loss", "loss"),
        ("eval_loss", "eval_loss"),
        ("lr", "learning_rate"),
        ("tokens_per_s", "tokens_per_second"),
        ("eta_s", "eta_seconds"),
    ):
        values[name] = num(raw.get(key))
    return progress_from_values(values)


def metrics_port_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """Port of the metrics endpoint: `KUBETUNE_METRICS_PORT` (default 9400); None when it is
    0, empty, `off`, `false` or `disabled`."""
    env = os.environ if environ is None else environ
    raw = env.get(c.ENV_METRICS_PORT, str(c.METRICS_PORT)).strip().lower()
    if raw in ("", "0", "off", "false", "disabled", "none"):
        return None
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError(f"{c.ENV_METRICS_PORT}={raw}: not a TCP port")
    return port


@dataclass
class ProgressMetrics:
    """The trainer's progress gauges in their own registry (never the process-global one, so
    two trainings in one process, as in tests, do not collide)."""

    registry: CollectorRegistry
    gauges: dict[str, Gauge]
    port: int | None = None

    @classmethod
    def create(cls, port: int | None = None, *, log: TextIO | None = None) -> ProgressMetrics:
        """Gauges, all NaN (unknown) at first; served over HTTP when `port` is given. A port
        that cannot be bound is reported on `log` and not served: progress is not worth
        failing a training for."""
        registry = CollectorRegistry(auto_describe=True)
        gauges = {}
        for name, (_, doc) in GAUGES.items():
            gauge = Gauge(name, doc, registry=registry)
            gauge.set(math.nan)
            gauges[name] = gauge
        served = None
        if port is not None:
            try:
                start_http_server(port, registry=registry)
                served = port
            except OSError as exc:
                print(
                    f"metrics: cannot serve on port {port}: {exc}; progress is only logged",
                    file=log or sys.stderr,
                )
        return cls(registry=registry, gauges=gauges, port=served)

    def update(self, progress: Progress) -> None:
        """Set every gauge from `progress` (None -> NaN)."""
        for name, (field, _) in GAUGES.items():
            value = getattr(progress, field)
            self.gauges[name].set(math.nan if value is None else float(value))

    def exposition(self) -> str:
        """The text a scrape of the endpoint returns."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
