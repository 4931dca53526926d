"""Running the gateway: in its own process, or beside the serve-agent's loop in a thread.

- :func:`serve_gateway`: a coroutine that serves until cancelled (for a process that already
  runs an event loop);
- :func:`start_gateway_thread`: its own event loop in a daemon thread, for the serve-agent,
  whose loop is synchronous; :meth:`GatewayThread.stop` drains and closes it;
- :func:`run_gateway`: blocking until SIGTERM or SIGINT (``python -m kubetune.serving.gateway``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading

from aiohttp import web

from kubetune.serving.gateway.app import create_app
from kubetune.serving.gateway.settings import GatewaySettings, VersionProvider

log = logging.getLogger("kubetune.serving.gateway")


async def serve_gateway(
    settings: GatewaySettings, version: VersionProvider, started: threading.Event | None = None
) -> None:
    """Serve on ``settings.listen_host:listen_port`` until cancelled; then write what is queued."""
    runner = web.AppRunner(create_app(settings, version), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.listen_host, settings.listen_port, backlog=1024)
        await site.start()
        log.info(
            "gateway for %s on %s:%d -> %s, log %s (content %s)",
            settings.model, settings.listen_host, settings.listen_port, settings.ollama_url,
            settings.db_path, settings.content,
        )  # fmt: skip
        if started is not None:
            started.set()
        # What exists now (modules, the app, the pools) lives as long as the process: keep it
        # out of the cyclic collector's full passes, which otherwise stall the event loop for
        # tens of milliseconds now and then (the gateway's p99).
        gc.collect()
        gc.freeze()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop (libuv: the proxy's socket work in C), unless
    KUBETUNE_GATEWAY_LOOP=asyncio asks for the standard library's (for comparison, or where
    uvloop is not installed: it is a base dependency on Linux and macOS only)."""
    if os.environ.get("KUBETUNE_GATEWAY_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class GatewayThread:
    """A gateway on its own event loop in a daemon thread."""

    def __init__(self, settings: GatewaySettings, version: VersionProvider) -> None:
        self.loop = new_event_loop()
        self.started = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(settings, version), name="kubetune-gateway", daemon=True
        )

    def _run(self, settings: GatewaySettings, version: VersionProvider) -> None:
        asyncio.set_event_loop(self.loop)
        self._task = self.loop.create_task(serve_gateway(settings, version, self.started))
        try:
            self.loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # e.g. the port is taken: reported by start()
            self.error = error
        finally:
            self.started.set()
            self.loop.close()

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; raises what stopped it from listening."""
        self._thread.start()
        self.started.wait(timeout)
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, write the queued predictions, close."""
        if self._task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout)


def start_gateway_thread(settings: GatewaySettings, version: VersionProvider) -> GatewayThread:
    """A gateway serving in a daemon thread (returns once it listens)."""
    gateway = GatewayThread(settings, version)
    gateway.start()
    return gateway


def run_gateway(settings: GatewaySettings, version: VersionProvider) -> int:
    """Serve until SIGTERM or SIGINT; the exit code (1: cannot listen)."""

    async def main() -> int:
        task = asyncio.ensure_future(serve_gateway(settings, version))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return 0
        except OSError as error:
            log.error(
                "gateway: cannot listen on %s:%d: %s",
                settings.listen_host, settings.listen_port, error.strerror,
            )  # fmt: skip
            return 1
        return 0

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main())
