"""Training data from what a ModelDeployment served: `kubetune predictions export`.

Every serving pod's gateway keeps a prediction log and serves it as JSONL on
``GET /v1/predictions?minScore=&since=``, one line per logged request::

    {"requestId", "time", "version", "digest", "messages": [...], "response", "score", "comment"}

(``time`` in Unix seconds or ISO 8601; ``score`` 1..5 or null when no feedback came).
:func:`collect_predictions` reads it from every pod through the apiserver's pod proxy, so the
command needs only a kubeconfig, no port-forward. The pure functions turn the lines into the
trainer's formats (``kubetune_trainer.data.formats``):

- :func:`to_chat_records`: ``{"messages": [...request..., {"role": "assistant", "content":
  response}]}`` for every answer scored at least ``min_score``, once per request id;
- :func:`to_preference_pairs`: ``{"prompt": [...request...], "chosen": [assistant message],
  "rejected": [assistant message]}`` from two answers to the same request messages, one scored
  at least ``min_score`` and one at most ``max_rejected_score`` (TRL's conversational
  preference shape, which the trainer reads as is).

A line that cannot become a record (no text because the log keeps none, a failed request, a
conversation that does not end with the user's turn) is skipped and counted, never guessed at.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
MAX_REJECTED_SCORE = 2
"""An answer scored at most this is a rejected answer of a preference pair."""
PROXY_TIMEOUT_S = 60.0

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")  # as the gateway reads it
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> timedelta:
    """A duration such as ``30m``, ``12h``, ``7d`` or ``2w`` (s, m, h, d, w); ValueError otherwise."""
    match = _SINCE.match(text)
    if match is None:
        raise ValueError(f"--since {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 7d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_predictions(text: str, source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects of a JSONL body, and a warning per line that is not a JSON object."""
    out: list[dict[str, Any]] = []
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            warnings.append(f"{source}: line {number}: not JSON ({exc.msg}); skipped")
            continue
        if not isinstance(value, dict):
            warnings.append(f"{source}: line {number}: not a JSON object; skipped")
            continue
        out.append(value)
    return out, warnings


def prediction_time(prediction: dict[str, Any]) -> datetime | None:
    """When the request was logged (``time`` as Unix seconds or ISO 8601), or None."""
    value = prediction.get("time")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def select_since(
    predictions: Iterable[dict[str, Any]], since: timedelta, now: datetime
) -> list[dict[str, Any]]:
    """The predictions logged within ``since`` before ``now`` (an unreadable time is left out)."""
    cutoff = now - since
    return [p for p in predictions if (t := prediction_time(p)) is not None and t >= cutoff]


@dataclass
class ExportCounts:
    """Why predictions did not become records (the command prints these)."""

    unscored: int = 0
    below_min_score: int = 0
    no_text: int = 0
    not_ending_with_user: int = 0
    duplicates: int = 0


def _score(prediction: dict[str, Any]) -> int | None:
    score = prediction.get("score")
    return score if isinstance(score, int) and not isinstance(score, bool) else None


def _request_messages(prediction: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str]:
    """The request's messages as role/content strings, or None and why they cannot be used."""
    messages = prediction.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "no_text"
    out: list[dict[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return None, "no_text"
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: only text parts are training text
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                return None, "no_text"
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str) or not content.strip():
            return None, "no_text"
        out.append({"role": str(message["role"]), "content": content})
    if out[-1]["role"] != "user":
        return None, "not_ending_with_user"
    return out, ""


def _response(prediction: dict[str, Any]) -> str | None:
    response = prediction.get("response")
    return response if isinstance(response, str) and response.strip() else None


def _unique(predictions: Iterable[dict[str, Any]], counts: ExportCounts) -> list[dict[str, Any]]:
    """One prediction per request id, oldest first (pods answer with overlapping logs only if a
    request id repeats, but an export run twice into one file must not double anything)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for p in sorted(predictions, key=_order):
        rid = str(p.get("requestId") or "")
        if rid and rid in seen:
            counts.duplicates += 1
            continue
        seen.add(rid)
        out.append(p)
    return out


def _order(p: dict[str, Any]) -> tuple[float, str]:
    t = prediction_time(p)
    return (t.timestamp() if t else 0.0, str(p.get("requestId") or ""))


def to_chat_records(
    predictions: Iterable[dict[str, Any]], min_score: int, counts: ExportCounts | None = None
) -> list[dict[str, Any]]:
    """Chat records (the trainer's ``chat`` format) of the answers scored at least ``min_score``,
    once per request id, oldest first."""
    counts = counts if counts is not None else ExportCounts()
    records: list[dict[str, Any]] = []
    for p in _unique(predictions, counts):
        score = _score(p)
        if score is None:
            counts.unscored += 1
            continue
        if score < min_score:
            counts.below_min_score += 1
            continue
        messages, why = _request_messages(p)
        response = _response(p)
        if messages is None or response is None:
            if why == "not_ending_with_user":
                counts.not_ending_with_user += 1
            else:
                counts.no_text += 1
            continue
        records.append({"messages": [*messages, {"role": "assistant", "content": response}]})
    return records


def to_preference_pairs(
    predictions: Iterable[dict[str, Any]],
    min_score: int,
    max_rejected_score: int = MAX_REJECTED_SCORE,
) -> list[dict[str, Any]]:
    """Preference pairs (the trainer's ``preference`` format) from answers to the same request
    messages: every answer scored at least ``min_score`` against every one scored at most
    ``max_rejected_score``, each pair of texts once; identical texts make no pair."""
    if max_rejected_score >= min_score:
        raise ValueError("max_rejected_score must be below min_score")
    groups: dict[str, tuple[list[dict[str, str]], list[str], list[str]]] = {}
    for p in _unique(predictions, ExportCounts()):
        score = _score(p)
        messages, _ = _request_messages(p)
        response = _response(p)
        if score is None or messages is None or response is None:
            continue
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        _, chosen, rejected = groups.setdefault(key, (messages, [], []))
        if score >= min_score:
            chosen.append(response)
        elif score <= max_rejected_score:
            rejected.append(response)
    pairs: list[dict[str, Any]] = []
    for messages, chosen, rejected in groups.values():
        seen: set[tuple[str, str]] = set()
        for good, bad in product(chosen, rejected):
            if good.strip() == bad.strip() or (good, bad) in seen:
                continue
            seen.add((good, bad))
            pairs.append(
                {
                    "prompt": messages,
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}],
                }
            )
    return pairs


def to_jsonl(records: Sequence[dict[str, Any]]) -> str:
    """One JSON object per line (UTF-8 text kept as is)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


@dataclass
class Collected:
    """What :func:`collect_predictions` read: the lines, and per pod whether it answered."""

    predictions: list[dict[str, Any]]
    answered: list[str]
    failed: list[str]
    warnings: list[str]


def collect_predictions(
    api_client: Any, namespace: str, deployment: str, min_score: int | None, since: str
) -> Collected:
    """Every serving pod's prediction log of ``deployment``, read through the pod proxy.

    Raises LookupError when the deployment has no pods; a pod that does not answer (not
    running, gateway down, an error status) is a warning and the others are still read."""
    import kubernetes

    from kubetune.api import serving as s
    from kubetune.operator.builders.serving import selector_labels

    core = kubernetes.client.CoreV1Api(api_client)
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(deployment).items())
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    if not pods:
        raise LookupError(
            f"no serving pods of ModelDeployment {namespace}/{deployment} (label selector {selector});"
            " check the name and --namespace"
        )
    query: list[tuple[str, str]] = [("since", since)]
    if min_score is not None:
        query.insert(0, ("minScore", str(min_score)))
    out = Collected([], [], [], [])
    for name, pod in sorted(((str(p.metadata.name if p.metadata else ""), p) for p in pods), key=lambda t: t[0]):
        if pod.status is None or pod.status.phase != "Running":
            out.failed.append(name)
            phase = pod.status.phase if pod.status else "unknown"
            out.warnings.append(f"pod {name}: not running ({phase}); its log was not read")
            continue
        try:
            request = api_client.param_serialize(
                method="GET",
                resource_path=f"/api/v1/namespaces/{{namespace}}/pods/{{name}}:{s.GATEWAY_PORT}/proxy/v1/predictions",
                path_params={"namespace": namespace, "name": name},
                query_params=query,
                header_params={"Accept": "application/x-ndjson, application/json"},
                auth_settings=["BearerToken"],
            )
            response = api_client.call_api(*request, _request_timeout=PROXY_TIMEOUT_S)
            data = response.read()
        except Exception as exc:  # connection refused or reset, a timeout
            out.failed.append(name)
            out.warnings.append(f"pod {name}: its gateway did not answer: {_short(exc)}")
            continue
        if not 200 <= response.status <= 299:
            out.failed.append(name)
            text = data.decode("utf-8", "replace")[:200].strip() if data else ""
            out.warnings.append(
                f"pod {name}: its gateway did not answer: HTTP {response.status} {response.reason or ''}".rstrip()
                + (f": {text}" if text else "")
            )
            continue
        try:
            body = data.decode("utf-8")
        except UnicodeDecodeError:
            out.failed.append(name)
            out.warnings.append(f"pod {name}: its answer is not UTF-8 JSONL")
            continue
        lines, warnings = parse_predictions(body, f"pod {name}")
        out.predictions.extend(lines)
        out.warnings.extend(warnings)
        out.answered.append(name)
    return out


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def export(
    api_client: Any,
    namespace: str,
    deployment: str,
    *,
    min_score: int,
    since: str,
    out: str,
    pairs: str | None,
    now: datetime | None = None,
) -> int:
    """`kubetune predictions export`: write ``out`` (and ``pairs``); the exit status."""
    window = parse_since(since)
    if pairs and min_score <= MAX_REJECTED_SCORE:
        print(
            f"predictions export: --pairs needs --min-score above {MAX_REJECTED_SCORE} "
            f"(answers scored {MAX_REJECTED_SCORE} or less are the rejected ones)",
            file=sys.stderr,
        )
        return 2
    try:
        # Pairs need the low scores too, so the gateway is then asked for every scored answer.
        collected = collect_predictions(
            api_client, namespace, deployment, 1 if pairs else min_score, since
        )
    except LookupError as exc:
        print(f"predictions export: {exc}", file=sys.stderr)
        return 1
    for warning in collected.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not collected.answered:
        print(
            f"predictions export: none of the {len(collected.failed)} pod(s) of {namespace}/{deployment}"
            " answered; nothing written",
            file=sys.stderr,
        )
        return 1
    recent = select_since(collected.predictions, window, now or datetime.now(UTC))
    counts = ExportCounts()
    records = to_chat_records(recent, min_score, counts)
    with open(out, "w", encoding="utf-8") as f:
        f.write(to_jsonl(records))
    print(
        f"wrote {len(records)} chat record(s) to {out} from {len(collected.predictions)} logged request(s)"
        f" of {len(collected.answered)} pod(s) (left out: {counts.duplicates} duplicate, "
        f"{counts.unscored} unscored, {counts.below_min_score} below score {min_score}, "
        f"{counts.no_text} without text, {counts.not_ending_with_user} not ending with the user's turn)"
    )
    if pairs:
        preference = to_preference_pairs(recent, min_score)
        with open(pairs, "w", encoding="utf-8") as f:
            f.write(to_jsonl(preference))
        print(f"wrote {len(preference)} preference pair(s) to {pairs}")
    return 0
