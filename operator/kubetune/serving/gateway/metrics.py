"""The gateway's Prometheus series, in their own registry (served on the gateway's /metrics).

OpenTelemetry GenAI semantic-convention names where one exists, in Prometheus form (dots become
underscores, the unit is a suffix). Labels have bounded values only: the deployment, the
version served when the request arrived, the route (``local``: this pod's Ollama;
``fallback``: the model of ``spec.fallback``), the fallback's reason (``error``, ``timeout``,
``refusal``), the finish
reason (:data:`FINISH_REASONS`) and the error type (:data:`ERROR_TYPES`); never prompt text,
request ids or user ids.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

FINISH_REASONS: Final = frozenset(
    {"stop", "length", "tool_calls", "content_filter", "error", "cancelled", "other"}
)
"""OpenAI's finish reasons, plus ``error`` (no answer), ``cancelled`` (the client left) and
``other`` (anything else Ollama may say, so the label stays bounded)."""
ERROR_TYPES: Final = frozenset(
    {
        "bad_request",  # malformed JSON, missing messages, unknown route or method
        "body_too_large",
        "upstream_unreachable",  # connection refused or reset
        "upstream_timeout",
        "upstream_status",  # Ollama answered an error status
        "upstream_protocol",  # Ollama's answer could not be read
        "client_disconnected",
        "log_dropped",  # the prediction log's queue was full
        "fallback_failed",  # the fallback was asked and did not answer (the local error stands)
        "internal",
    }
)

# OpenTelemetry's advice for gen_ai.server.request.duration.
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                     40.96, 81.92)  # fmt: skip
# ... for gen_ai.server.time_to_first_token, with 1 ms added (a loaded model on a GPU).
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0)  # fmt: skip
# ... for gen_ai.server.time_per_output_token.
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# ... for gen_ai.client.token.usage (powers of 4).
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_SCORE_BUCKETS = (1, 2, 3, 4, 5)


class GatewayMetrics:
    """Every series of the gateway, registered in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from a chat completion request to its last byte from the model server.",
            ["deployment", "version", "route", "finish_reason"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from a streamed request to its first chunk with a choice.",
            ["deployment", "version"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, of streamed requests.",
            ["deployment", "version"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Input and output tokens per request, as the model server counts them.",
            ["deployment", "version", "gen_ai_token_type"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "kubetune_gateway_requests",
            "Chat completion requests answered, by finish reason.",
            ["deployment", "version", "route", "finish_reason"],
            registry=r,
        )
        self.errors = Counter(
            "kubetune_gateway_errors",
            "Requests the gateway could not answer as asked, and log writes dropped.",
            ["deployment", "version", "error_type"],
            registry=r,
        )
        self.fallbacks = Counter(
            "kubetune_gateway_fallbacks",
            "Requests the fallback model answered, by why the local model did not.",
            ["deployment", "version", "reason"],
            registry=r,
        )
        self.feedback_score = Histogram(
            "kubetune_feedback_score",
            "Scores (1-5) clients gave answers, by the version that answered.",
            ["deployment", "version"],
            buckets=_SCORE_BUCKETS,
            registry=r,
        )


def finish_reason_label(value: object) -> str:
    """A finish reason as a bounded label value."""
    return value if isinstance(value, str) and value in FINISH_REASONS else "other"
