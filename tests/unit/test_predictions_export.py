"""`kubetune alerts` and `kubetune predictions export`: exit codes, and the pure transforms from
the gateway's prediction log to the trainer's chat and preference data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes.client import ApiClient, V1ObjectMeta, V1Pod, V1PodList, V1PodStatus
from kubernetes.client.rest import RESTResponse
from urllib3 import HTTPResponse

from kubetune.cli import main
from kubetune.predictions_export import (
    ExportCounts,
    export,
    parse_since,
    select_since,
    to_chat_records,
    to_jsonl,
    to_preference_pairs,
)
from kubetune.serving.alerts import render_all
from kubetune_trainer.data.sources import parse_jsonl
from kubetune_trainer.data.validate import check_roles, detect_format, validate_rows


def test_alerts_check_passes_on_the_shipped_files() -> None:
    assert main(["alerts", "--check"]) == 0


def test_alerts_writes_then_check_fails_when_a_file_is_edited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alerts", "--check", "--out", str(tmp_path)]) == 1  # nothing written yet
    assert main(["alerts", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render_all())
    assert main(["alerts", "--check", "--out", str(tmp_path)]) == 0
    rules = tmp_path / "kubetune-rules.yaml"
    rules.write_text(rules.read_text() + "# hand edit\n")
    capsys.readouterr()
    assert main(["alerts", "--check", "--out", str(tmp_path)]) == 1
    assert "kubetune-rules.yaml" in capsys.readouterr().err


# --- predictions export -------------------------------------------------------------------

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SYSTEM = {"role": "system", "content": "You answer support questions."}


def _line(
    rid: str,
    question: str,
    response: str | None,
    score: int | None,
    *,
    minutes_ago: float = 10,
    messages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "requestId": rid,
        "time": (NOW - timedelta(minutes=minutes_ago)).timestamp(),
        "version": "v1",
        "digest": "sha256:" + "a" * 64,
        "messages": messages if messages is not None else [SYSTEM, {"role": "user", "content": question}],
        "response": response,
        "score": score,
        "comment": None,
    }


LOG = [
    _line("r1", "How do I reset my password?", "Open Settings, then Security, then Reset.", 5),
    _line("r2", "How do I reset my password?", "I cannot help with that.", 1),
    _line("r3", "How do I reset my password?", "Maybe ask someone.", 2),
    _line("r4", "Where is my invoice?", "Under Billing, Invoices.", 4),
    _line("r5", "Where is my invoice?", "Somewhere.", 3),  # middling: neither chosen nor rejected
    _line("r6", "Can I pay by card?", "Yes, every major card.", None),  # no feedback
    _line("r7", "Is there an API?", None, 5),  # a failed request: no answer text
    _line("r8", "Is there an API?", "Yes.", 5, messages=[]),  # logged with content: none
    _line("r9", "?", "Ok.", 5, messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
    _line("r10", "Do you ship abroad?", "Yes, to 40 countries.", 4, minutes_ago=60 * 24 * 8),
]


def test_parse_since() -> None:
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("12h") == timedelta(hours=12)
    assert parse_since("30m") == timedelta(minutes=30)
    assert parse_since("1.5h") == timedelta(minutes=90)
    assert parse_since("2w") == timedelta(days=14)
    for bad in ("", "7", "d", "7 days", "-1d", "7y"):
        with pytest.raises(ValueError, match="unit"):
            parse_since(bad)


def test_select_since_reads_unix_and_iso_times() -> None:
    iso = dict(LOG[0], requestId="iso", time=(NOW - timedelta(days=1)).isoformat())
    bad = dict(LOG[0], requestId="bad", time="yesterday")
    kept = select_since([*LOG, iso, bad], timedelta(days=7), NOW)
    assert [p["requestId"] for p in kept] == [*(f"r{i}" for i in range(1, 10)), "iso"]


def test_chat_records_keep_well_scored_answers_once_with_the_request_messages() -> None:
    counts = ExportCounts()
    duplicated = [*LOG[:9], dict(LOG[0]), dict(LOG[3], response="a retry logged twice")]
    records = to_chat_records(duplicated, min_score=4, counts=counts)
    assert records == [
        {"messages": [SYSTEM, {"role": "user", "content": "How do I reset my password?"},
                      {"role": "assistant", "content": "Open Settings, then Security, then Reset."}]},
        {"messages": [SYSTEM, {"role": "user", "content": "Where is my invoice?"},
                      {"role": "assistant", "content": "Under Billing, Invoices."}]},
    ]
    assert (counts.duplicates, counts.unscored, counts.below_min_score) == (2, 1, 3)
    assert (counts.no_text, counts.not_ending_with_user) == (2, 1)
    assert len(to_chat_records(LOG, min_score=5)) == 1


def test_chat_records_join_text_content_parts_and_refuse_images() -> None:
    parts = [{"type": "text", "text": "How do I "}, {"type": "text", "text": "log in?"}]
    image = [{"type": "image_url", "image_url": {"url": "data:…"}}]
    records = to_chat_records(
        [_line("a", "", "With your email.", 5, messages=[{"role": "user", "content": parts}]),
         _line("b", "", "A cat.", 5, messages=[{"role": "user", "content": image}])],
        min_score=4,
    )
    assert records == [{"messages": [{"role": "user", "content": "How do I log in?"},
                                     {"role": "assistant", "content": "With your email."}]}]


def test_preference_pairs_match_good_and_bad_answers_to_the_same_messages() -> None:
    pairs = to_preference_pairs(LOG, min_score=4)
    prompt = [SYSTEM, {"role": "user", "content": "How do I reset my password?"}]
    good = [{"role": "assistant", "content": "Open Settings, then Security, then Reset."}]
    assert pairs == [
        {"prompt": prompt, "chosen": good, "rejected": [{"role": "assistant", "content": "I cannot help with that."}]},
        {"prompt": prompt, "chosen": good, "rejected": [{"role": "assistant", "content": "Maybe ask someone."}]},
    ]
    # Same question without the system prompt is another prompt: no pair across the two.
    other = _line("x", "", "Wrong.", 1, messages=[{"role": "user", "content": "Where is my invoice?"}])
    assert len(to_preference_pairs([*LOG, other], min_score=4)) == 2
    same_text = _line("y", "How do I reset my password?", "Open Settings, then Security, then Reset.", 1)
    assert len(to_preference_pairs([*LOG, same_text], min_score=4)) == 2
    with pytest.raises(ValueError):
        to_preference_pairs(LOG, min_score=2)


def _trainer_accepts(text: str, fmt: str) -> int:
    """How many records the trainer's own validation keeps; fails on any problem."""
    rows = parse_jsonl(text.encode(), "export.jsonl")
    assert detect_format(rows, "auto") == fmt
    records, problems, _ = validate_rows(rows, fmt)  # type: ignore[arg-type]
    kept, role_problems = check_roles(records, tokenizer=None)
    assert not problems and not role_problems, [str(p) for p in [*problems, *role_problems]]
    return len(kept)


def test_exported_files_are_valid_trainer_data() -> None:
    chat = to_jsonl(to_chat_records(LOG, min_score=4))
    pairs = to_jsonl(to_preference_pairs(LOG, min_score=4))
    assert _trainer_accepts(chat, "chat") == 3  # r1, r4 and r10 (no --since here)
    assert _trainer_accepts(pairs, "preference") == 2
    rows = parse_jsonl(pairs.encode(), "pairs.jsonl")
    records, _, _ = validate_rows(rows, "preference")
    assert records[0].data["prompt_messages"][-1] == {"role": "user", "content": "How do I reset my password?"}


class FakeCluster(ApiClient):
    """An ApiClient answering the pod list and each pod's proxied /v1/predictions from memory,
    below the generated API code (so the real request building and decoding run)."""

    def __init__(self, pods: dict[str, str | int | None], phase: dict[str, str] | None = None) -> None:
        super().__init__()
        self.pods = pods  # name -> JSONL body, an HTTP status, or None (connection refused)
        self.phase = phase or {}
        self.queries: list[tuple[str, list[tuple[str, str]]]] = []

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> RESTResponse:
        parsed = urlsplit(url)
        query = parse_qsl(parsed.query)
        assert method == "GET"
        if parsed.path == "/api/v1/namespaces/ml/pods":
            assert dict(query)["labelSelector"] == (
                "kubetune.dev/modeldeployment=support,kubetune.dev/component=serving"
            )
            pods = V1PodList(items=[
                V1Pod(metadata=V1ObjectMeta(name=n), status=V1PodStatus(phase=self.phase.get(n, "Running")))
                for n in self.pods
            ])
            return _response(200, json.dumps(self.sanitize_for_serialization(pods)), "application/json")
        prefix, _, rest = parsed.path.rpartition("/pods/")
        assert prefix == "/api/v1/namespaces/ml" and rest.endswith(":8080/proxy/v1/predictions"), url
        name = rest.split(":")[0]
        self.queries.append((name, query))
        body = self.pods[name]
        if body is None:
            raise ConnectionRefusedError("connection refused")
        if isinstance(body, int):
            return _response(body, '{"error": "no endpoints"}', "application/json")
        return _response(200, body, "application/x-ndjson")


def _response(status: int, body: str, content_type: str) -> RESTResponse:
    reason = {200: "OK", 503: "Service Unavailable"}.get(status, "")
    return RESTResponse(HTTPResponse(body.encode(), status=status, reason=reason,
                                     headers={"Content-Type": content_type}, preload_content=True))


def _export(cluster: FakeCluster, tmp_path: Path, **kw: Any) -> int:
    options: dict[str, Any] = {"min_score": 4, "since": "7d", "pairs": None, **kw}
    return export(cluster, "ml", "support", out=str(tmp_path / "chat.jsonl"), now=NOW, **options)


def test_export_reads_every_pod_and_dedups_across_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = to_jsonl(LOG)
    cluster = FakeCluster({"support-a": body, "support-b": to_jsonl(LOG[3:5])})
    assert _export(cluster, tmp_path, pairs=str(tmp_path / "pairs.jsonl")) == 0
    assert _trainer_accepts((tmp_path / "chat.jsonl").read_text(), "chat") == 2
    assert _trainer_accepts((tmp_path / "pairs.jsonl").read_text(), "preference") == 2
    assert cluster.queries == [
        ("support-a", [("minScore", "1"), ("since", "7d")]),  # pairs need the low scores
        ("support-b", [("minScore", "1"), ("since", "7d")]),
    ]
    out = capsys.readouterr().out
    assert "wrote 2 chat record(s)" in out and "2 duplicate" in out and "wrote 2 preference pair(s)" in out
    cluster = FakeCluster({"support-a": body})
    assert _export(cluster, tmp_path) == 0
    assert cluster.queries == [("support-a", [("minScore", "4"), ("since", "7d")])]


def test_export_warns_about_pods_that_do_not_answer_and_fails_only_if_none_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster(
        {"support-a": 503, "support-b": None, "support-c": "not json\n" + to_jsonl(LOG), "support-d": ""},
        phase={"support-d": "Pending"},
    )
    assert _export(cluster, tmp_path) == 0
    err = capsys.readouterr().err
    assert 'pod support-a: its gateway did not answer: HTTP 503 Service Unavailable: {"error"' in err
    assert "pod support-b: its gateway did not answer: connection refused" in err
    assert "pod support-c: line 1: not JSON" in err
    assert "pod support-d: not running (Pending)" in err
    assert _trainer_accepts((tmp_path / "chat.jsonl").read_text(), "chat") == 2

    (tmp_path / "chat.jsonl").unlink()
    assert _export(FakeCluster({"support-a": 503, "support-b": None}), tmp_path) == 1
    assert "none of the 2 pod(s) of ml/support answered" in capsys.readouterr().err
    assert not (tmp_path / "chat.jsonl").exists()


def test_export_without_pods_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _export(FakeCluster({}), tmp_path) == 1
    assert "no serving pods of ModelDeployment ml/support" in capsys.readouterr().err


def test_cli_refuses_bad_arguments_before_calling_the_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["predictions", "export", "--deployment", "support", "--out", str(tmp_path / "o.jsonl")]
    assert main([*base, "--since", "a week"]) == 2
    assert "--since 'a week'" in capsys.readouterr().err
    assert _export(FakeCluster({"support-a": ""}), tmp_path, min_score=2, pairs=str(tmp_path / "p")) == 2
    assert "--pairs needs --min-score above 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--min-score", "6"])
