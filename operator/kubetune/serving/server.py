"""The agent's HTTP endpoints, and the process that runs agent and endpoints together.

- ``GET /healthz``: 200 while the agent's loop is alive (a pass finished recently);
- ``GET /readyz``: 200 only while the alias serves the configured version and answered a
  1-token generation; 503 with the reason otherwise;
- ``GET /status``: the :class:`~kubetune.api.serving.AgentStatus` as camelCase JSON.

The standard library's ThreadingHTTPServer in a daemon thread: three tiny endpoints need no
framework, and a slow /status reader never holds up the loop.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from kubetune.serving.agent import ServeAgent
from kubetune.serving.config import AgentSettings
from kubetune.serving.gateway.process import start_gateway_thread
from kubetune.serving.gateway.settings import GatewaySettings

log = logging.getLogger("kubetune.serving")

# The loop waits at most this long on one Ollama call (model loads), so a pass older than this
# means the loop is stuck.
STALE_AFTER_S = 900.0


def start_http_server(agent: ServeAgent, host: str, port: int) -> ThreadingHTTPServer:
    """Serve /healthz, /readyz and /status for ``agent`` on ``host:port`` in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                alive = time.monotonic() - agent.heartbeat < STALE_AFTER_S
                self._send(200 if alive else 503, "ok\n" if alive else "agent loop stuck\n")
            elif path == "/readyz":
                ready, why = agent.readiness()
                self._send(200 if ready else 503, "ok\n" if ready else f"not ready: {why}\n")
            elif path == "/status":
                body = agent.status().model_dump(mode="json", by_alias=True)
                self._send(200, json.dumps(body) + "\n", "application/json")
            else:
                self._send(404, "not found\n")

        def _send(
            self, code: int, text: str, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the agent's own log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kubetune-agent-http", daemon=True).start()
    return server


def run_serve_agent(settings: AgentSettings, gateway: GatewaySettings | None = None) -> int:
    """Run the agent and its endpoints until SIGTERM or SIGINT; the exit code. With `gateway`,
    the OpenAI-compatible gateway serves in the same process (its own event loop in a thread),
    answering for the version the agent last read back from Ollama."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # httpx logs every request with its URL at INFO: noise every second, and a presigned
    # https:// source would put its credentials (the query string) into the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    agent = ServeAgent(settings)
    try:
        server = start_http_server(agent, settings.listen_host, settings.listen_port)
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d: %s", settings.listen_host, settings.listen_port, exc.strerror
        )
        return 1

    gateway_thread = None
    if gateway is not None:
        try:
            gateway_thread = start_gateway_thread(gateway, lambda: agent.served_version)
        except OSError as exc:
            server.shutdown()
            log.error("gateway cannot listen on %s:%d: %s", gateway.listen_host, gateway.listen_port,
                      exc.strerror)
            return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "serve-agent: config %s, Ollama %s, listening on %s:%d, cache %s",
        settings.config_path,
        settings.ollama_url,
        settings.listen_host,
        settings.listen_port,
        settings.cache_dir,
    )
    try:
        agent.run()
    finally:
        if gateway_thread is not None:
            gateway_thread.stop()
        server.shutdown()
        agent.client.close()
    return 0
