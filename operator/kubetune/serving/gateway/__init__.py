"""The serving gateway: kubetune's OpenAI-compatible API in front of one pod's Ollama.

Clients call ``POST /v1/chat/completions`` (streamed or not) and ``GET /v1/models`` on the
gateway; it forwards to the local Ollama's ``/v1/chat/completions`` with the model rewritten to
the deployment's alias (``<model>``, the served version), relays the answer, stamps every
response with ``x-kubetune-version``, ``x-kubetune-digest`` and ``x-request-id``, measures it
(Prometheus, OpenTelemetry GenAI names, on ``GET /metrics``) and logs it (SQLite). Clients rate
answers with ``POST /v1/feedback``.

Modules:

- :mod:`.settings`     what the gateway is told, and the served-version provider
- :mod:`.metrics`      the Prometheus series (own registry)
- :mod:`.redaction`    what of a prompt and an answer is stored (full, redacted, none)
- :mod:`.predictions`  the prediction and feedback log (SQLite, batched in a writer thread)
- :mod:`.app`          the aiohttp application: routes, relay, errors (``create_app``)
- :mod:`.process`      running it: ``run_gateway`` (blocking), ``serve_gateway`` (a coroutine),
  ``start_gateway_thread`` (beside the serve-agent's loop); ``python -m
  kubetune.serving.gateway`` for a stand-alone process
"""

from kubetune.serving.gateway.app import create_app
from kubetune.serving.gateway.process import run_gateway, serve_gateway, start_gateway_thread
from kubetune.serving.gateway.settings import GatewaySettings, ServedVersion, StaticVersion

__all__ = [
    "GatewaySettings",
    "ServedVersion",
    "StaticVersion",
    "create_app",
    "run_gateway",
    "serve_gateway",
    "start_gateway_thread",
]
