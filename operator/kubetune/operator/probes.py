"""The operator's /healthz and /readyz, served from kopf's own event loop.

Served by the loop that runs kopf's watches, so a stuck loop fails the liveness probe, as
kopf's `--liveness` endpoint does (which serves one path only, hence this server).

- /healthz: 200 while the loop answers and the worker and election threads are alive.
- /readyz: 200 once the operator could reconcile right now: kopf has listed every watched kind
  into the indexes, the workers run, and the leader election knows whether this replica
  leads. A standby replica is ready too: it keeps the same indexes warm and takes over within a
  lease duration, so a rolling update may count it as available.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

import aiohttp.web

Check = Callable[[], tuple[bool, str]]


def parse_endpoint(url: str) -> tuple[str, int, str]:
    """(host, port, health path) of an http://HOST:PORT/PATH endpoint; /readyz is served beside it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.port:
        raise ValueError(f"the probe endpoint must look like http://0.0.0.0:8081/healthz, got {url!r}")
    return parts.hostname or "0.0.0.0", parts.port, parts.path or "/healthz"


async def serve_probes(url: str, healthy: Check, ready: Check) -> aiohttp.web.AppRunner:
    """Start serving `GET <path>` (liveness) and `GET /readyz` on url's host and port."""
    host, port, path = parse_endpoint(url)

    def answer(check: Check) -> Callable[[aiohttp.web.Request], object]:
        async def handle(_: aiohttp.web.Request) -> aiohttp.web.Response:
            ok, detail = check()
            return aiohttp.web.Response(status=200 if ok else 503, text=detail + "\n")

        return handle

    app = aiohttp.web.Application()
    routes = {path: healthy, "/healthz": healthy, "/readyz": ready}
    app.add_routes([aiohttp.web.get(p, answer(check)) for p, check in routes.items()])  # type: ignore[arg-type]
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner
