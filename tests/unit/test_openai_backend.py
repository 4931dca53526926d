"""backend openai against a local HTTP stand-in for OpenAI's API (tests/openai_provider_server.py):
job lifecycles, failures and their reasons, retries, restarts and SIGTERM, and the API key in
nothing the run produced. The runner talks to it through the real `openai` client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_contract import PERMANENT_FAILURE_EXIT_CODE, TrainerResult, exit_code_for
from kubetune_trainer.pipeline import run_pipeline
from kubetune_trainer.progress import ProgressMetrics
from tests.judge_server import FakeJudgeServer, verdict
from tests.openai_provider_server import FakeOpenAIProvider, Lifecycle

REPO = Path(__file__).resolve().parents[2]
CHAT = REPO / "examples" / "data" / "support-chat.jsonl"
PREFERENCE = REPO / "examples" / "data" / "preference.jsonl"
KEY = "sk-proj-kubetuneTEST0123456789abcdefghijklmnopqrstuv"


def _spec(server: FakeOpenAIProvider, **provider: Any) -> dict[str, Any]:
    return {
        "backend": "openai",
        "provider": {
            "model": "gpt-4o-mini-2024-07-18",
            "apiKeySecretRef": {"name": "openai", "key": "api-key"},
            "endpoint": server.url,
            "pollIntervalSeconds": 0.05,
            "maxRetries": 3,
            "timeoutSeconds": 10,
            **provider,
        },
        "dataset": {"source": {"uri": f"file://{CHAT}"}, "format": "chat"},
        "dataPolicy": {"dedup": "exact"},
        "resources": {"gpus": 0},
    }


def _run(
    spec: dict[str, Any], workdir: Path, key: str = KEY, metrics: Any | None = None
) -> TrainerResult:
    parsed = FineTuneJobSpec.model_validate(spec)
    old = os.environ.get(c.ENV_PROVIDER_API_KEY)
    os.environ[c.ENV_PROVIDER_API_KEY] = key
    try:
        return run_pipeline(parsed, workdir, metrics=metrics)
    finally:
        if old is None:
            os.environ.pop(c.ENV_PROVIDER_API_KEY, None)
        else:
            os.environ[c.ENV_PROVIDER_API_KEY] = old


def _everything(workdir: Path, *texts: str) -> str:
    """Every file the run wrote, and the given texts (logs, messages), as one string."""
    parts = list(texts)
    for path in sorted(workdir.rglob("*")):
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_a_job_succeeds_with_the_model_id_as_artifact_and_the_key_nowhere(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    metrics = ProgressMetrics.create(None)
    with FakeOpenAIProvider(api_key=KEY) as server:
        spec = _spec(server, suffix="support-router", seed=7, hyperparameters={"nEpochs": 2})
        result = _run(spec, tmp_path, metrics=metrics)
        job = server.only_job()
        assert result.phase == "Succeeded", result.message
        # Uploads: the train and validation splits in OpenAI's chat format; the test split stays.
        assert job.body["model"] == "gpt-4o-mini-2024-07-18"
        train = server.uploaded_lines(job.body["training_file"])
        validation = server.uploaded_lines(job.body["validation_file"])
        assert result.data is not None
        assert (len(train), len(validation)) == (result.data.train, result.data.validation)
        assert all(set(line) == {"messages"} for line in train + validation)
        assert train[0]["messages"][-1]["role"] == "assistant"
        assert job.body["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}}}
        assert (job.body["suffix"], job.body["seed"]) == ("support-router", 7)
        # Every request carried the key as its bearer token.
        assert all(h.get("authorization") == f"Bearer {KEY}" for h in server.headers_seen)

    models = [a for a in result.artifacts if a.kind == "provider-model"]
    assert [a.name for a in models] == [f"ft:gpt-4o-mini-2024-07-18:org-kubetune:support-router:{job.id[-8:]}"]
    record = json.loads((tmp_path / "provider" / "model.json").read_text())
    assert record["model"] == models[0].name and record["job"] == job.id
    assert [ck["step"] for ck in record["checkpoints"]] == [30, 20, 10]
    assert result.training is not None and result.training.trained_tokens == 12345
    assert result.training.steps == 30 and result.training.best_eval_loss is not None
    # The live progress the operator scrapes followed the provider's metrics events.
    exposition = metrics.exposition()
    assert "kubetune_train_step 30.0" in exposition and "kubetune_train_total_steps 30.0" in exposition
    # Evaluated through the chat API on the test split: the fine-tuned model and the base.
    asked = [r["model"] for r in server.chat_requests]
    assert result.evaluation is not None and result.evaluation.base is not None
    n = result.evaluation.examples
    assert n == result.data.test and sorted(set(asked)) == sorted({models[0].name, "gpt-4o-mini-2024-07-18"})
    assert asked.count(models[0].name) == n and asked.count("gpt-4o-mini-2024-07-18") == n
    fine_tuned, base = result.evaluation.fine_tuned, result.evaluation.base
    assert fine_tuned.exact_match is not None and base.exact_match == 0.0
    assert fine_tuned.rouge_l is not None and base.rouge_l is not None
    assert fine_tuned.rouge_l > base.rouge_l and fine_tuned.perplexity is None
    assert result.gate is not None and result.gate.passed, result.gate
    assert {a.kind for a in result.artifacts} >= {"provider-model", "predictions", "report"}
    out, err = capfd.readouterr()
    assert "progress step=10/30" in out and "provider event [info]: Fine-tuning job queued" in out
    assert KEY not in _everything(tmp_path, out, err, result.to_termination_message())


def test_the_judge_and_gate_score_the_provider_model_as_for_a_local_job(tmp_path: Path) -> None:
    judge_key = "sk-judge-0123456789abcdefghijklmnopqrstuv"
    with FakeOpenAIProvider(api_key=KEY, chat_answer="billing") as server, FakeJudgeServer(
        api_key=judge_key,
        # 5 for the fine-tuned model's label answers, 2 for the base model's non-answer.
        responder=lambda body: verdict(
            5 if body["messages"][-1]["content"].endswith("answer]\nbilling") else 2
        ),
    ) as judge:
        spec = _spec(server)
        spec["evaluation"] = {"judge": {"endpoint": judge.url, "model": "judge-model"},
                              "gate": {"minJudgeScore": 3.5}, "maxExamples": 6}
        os.environ[c.ENV_JUDGE_API_KEY] = judge_key
        try:
            result = _run(spec, tmp_path)
        finally:
            os.environ.pop(c.ENV_JUDGE_API_KEY, None)
        judged = len(judge.requests)
    assert result.phase == "Succeeded", result.message
    assert result.evaluation is not None and result.evaluation.examples == 6
    assert judged == 12  # six answers of the fine-tuned model, six of the base
    assert result.gate is not None and result.gate.judge_score is not None
    assert result.evaluation.base is not None and result.evaluation.base.judge_score is not None
    assert (result.evaluation.fine_tuned.judge_score, result.evaluation.base.judge_score) == (5.0, 2.0)
    assert result.gate.judge_score == 5.0 and result.gate.passed, result.gate
    assert result.evaluation.win_rate == 1.0


@pytest.mark.parametrize(
    ("lifecycle", "reason", "words"),
    [
        (Lifecycle(statuses=("validating_files", "failed"), error_code="invalid_training_file",
                   error_message="The file has 3 examples; at least 10 are required."),
         c.Reason.PROVIDER_JOB_FAILED, "failed: invalid_training_file: The file has 3 examples"),
        (Lifecycle(statuses=("queued", "running", "failed"), error_code="server_error",
                   error_message="Internal error while training."),
         c.Reason.PROVIDER_JOB_FAILED, "failed: server_error: Internal error while training."),
        (Lifecycle(statuses=("queued", "running", "cancelled")),
         c.Reason.PROVIDER_JOB_CANCELLED, "was cancelled outside kubetune"),
    ],
    ids=["invalid-file", "training-error", "cancelled"],
)
def test_a_provider_job_that_ends_without_a_model_is_a_permanent_failure_with_its_code(
    tmp_path: Path, lifecycle: Lifecycle, reason: str, words: str
) -> None:
    with FakeOpenAIProvider(api_key=KEY, default=lifecycle) as server:
        result = _run(_spec(server), tmp_path)
        job = server.only_job()
    assert (result.phase, result.reason) == ("Failed", reason)
    assert words in result.message and job.id in result.message
    assert exit_code_for(result) == PERMANENT_FAILURE_EXIT_CODE
    assert not [a for a in result.artifacts if a.kind == "provider-model"]


def test_an_invalid_key_fails_at_once_and_is_never_echoed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    wrong = "sk-proj-WRONGkey9876543210zyxwvutsrqponmlkjihgfedcba"
    with FakeOpenAIProvider(api_key=KEY) as server:
        result = _run(_spec(server), tmp_path, key=wrong)
        requests = list(server.requests)
    assert (result.phase, result.reason) == ("Failed", c.Reason.PROVIDER_AUTH_FAILED)
    assert "HTTP 401 invalid_api_key: Incorrect API key provided: ***" in result.message
    assert "Secret openai, key api-key" in result.message
    assert requests == [("POST", "/v1/files")]  # no retry loop: one request, refused
    assert exit_code_for(result) == PERMANENT_FAILURE_EXIT_CODE
    out, err = capfd.readouterr()
    everything = _everything(tmp_path, out, err, result.to_termination_message())
    assert wrong not in everything and wrong[:12] not in everything


def test_quota_and_unsupported_model_are_permanent_without_retries(tmp_path: Path) -> None:
    with FakeOpenAIProvider(api_key=KEY, quota_exceeded=True) as server:
        quota = _run(_spec(server), tmp_path / "quota")
        assert server.create_attempts == 1
    assert (quota.reason, exit_code_for(quota)) == (
        c.Reason.PROVIDER_QUOTA_EXCEEDED, PERMANENT_FAILURE_EXIT_CODE)
    assert "insufficient_quota" in quota.message

    with FakeOpenAIProvider(api_key=KEY) as server:
        model = _run(_spec(server, model="gpt-3-davinci-legacy"), tmp_path / "model")
        assert server.create_attempts == 1 and not server.jobs
    assert (model.reason, exit_code_for(model)) == (
        c.Reason.PROVIDER_MODEL_UNSUPPORTED, PERMANENT_FAILURE_EXIT_CODE)
    assert "model_not_available: Model gpt-3-davinci-legacy is not available" in model.message
    assert "set provider.model" in model.message


def test_rate_limits_are_retried_and_one_job_is_created(tmp_path: Path) -> None:
    with FakeOpenAIProvider(api_key=KEY, rate_limited_creates=2) as server:
        result = _run(_spec(server), tmp_path)
        assert server.create_attempts == 3 and len(server.jobs) == 1
    assert result.phase == "Succeeded", result.message


def test_rate_limits_beyond_the_retries_may_be_retried_by_the_job(tmp_path: Path) -> None:
    with FakeOpenAIProvider(api_key=KEY, rate_limited_creates=10) as server:
        result = _run(_spec(server, maxRetries=1), tmp_path)
        assert server.create_attempts == 2 and not server.jobs
    assert result.reason == c.Reason.PROVIDER_UNAVAILABLE
    assert exit_code_for(result) != PERMANENT_FAILURE_EXIT_CODE


def test_a_data_policy_failure_uploads_nothing(tmp_path: Path) -> None:
    data = tmp_path / "leaky.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Ticket {i}: charged twice"},
                          {"role": "assistant", "content": "billing"}]} for i in range(20)]
    rows.append({"messages": [{"role": "user", "content": "my key is sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"},
                              {"role": "assistant", "content": "ok"}]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeOpenAIProvider(api_key=KEY) as server:
        spec = _spec(server)
        spec["dataset"]["source"]["uri"] = f"file://{data}"
        spec["dataPolicy"]["action"] = "fail"
        result = _run(spec, tmp_path / "work")
        assert server.requests == []
    assert result.reason == c.Reason.DATA_POLICY


def test_preference_data_trains_with_dpo_in_openais_format(tmp_path: Path) -> None:
    with FakeOpenAIProvider(api_key=KEY) as server:
        spec = _spec(server, method="dpo", hyperparameters={"beta": 0.2})
        spec["objective"] = "dpo"
        spec["dataset"] = {"source": {"uri": f"file://{PREFERENCE}"}, "format": "preference"}
        result = _run(spec, tmp_path)
        job = server.only_job()
        line = server.uploaded_lines(job.body["training_file"])[0]
    assert result.phase == "Succeeded", result.message
    assert set(line) == {"input", "preferred_output", "non_preferred_output"}
    assert line["input"]["messages"][-1]["role"] == "user"
    assert job.body["method"]["type"] == "dpo"
    assert job.body["method"]["dpo"]["hyperparameters"]["beta"] == 0.2


def _trainer(spec: dict[str, Any], workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    spec_file = workdir.parent / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, c.ENV_PROVIDER_API_KEY: KEY, c.ENV_METRICS_PORT: "0",
           c.ENV_TERMINATION_LOG: str(workdir.parent / "termination-log")}
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer", "run", "--spec", str(spec_file),
         "--workdir", str(workdir)],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigterm_pauses_the_provider_job_and_the_next_pod_resumes_the_same_job(tmp_path: Path) -> None:
    workdir, log = tmp_path / "work", tmp_path / "trainer.log"
    with FakeOpenAIProvider(api_key=KEY) as server:
        server.hold_running = True  # still training when the signal lands
        spec = _spec(server, pollIntervalSeconds=0.1)
        first = _trainer(spec, workdir, log)
        _wait(lambda: any(j.status == "running" for j in server.jobs.values()), "a running job")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) != 0
        job = server.only_job()
        assert job.status == "paused", log.read_text()[-2000:]
        position = job.position
        server.hold_running = False
        time.sleep(0.3)  # a paused job does not move however often it is read
        assert job.position == position

        second = _trainer(spec, workdir, log)
        assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
        assert server.only_job() is job and job.status == "succeeded"
        assert len(server.files) == 2  # uploaded once: train and validation
        messages = [e["message"] for e in job.events]
        assert messages.index("Fine-tuning job paused") < messages.index("Fine-tuning job resumed")
    text = log.read_text()
    assert f"paused provider job {job.id}" in text and f"following provider job {job.id}" in text
    result = json.loads((workdir / "result.json").read_text())
    assert result["phase"] == "Succeeded"
    assert KEY not in _everything(workdir, text, (tmp_path / "termination-log").read_text())


def test_the_cancel_command_cancels_the_recorded_job_once(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from kubetune_trainer.provider.openai_backend import cancel_provider_job

    env = {c.ENV_PROVIDER_API_KEY: KEY}
    long_run = Lifecycle(statuses=("queued", *["running"] * 50, "succeeded"))
    with FakeOpenAIProvider(api_key=KEY, default=long_run) as server:
        assert cancel_provider_job(tmp_path, server.url, environ=env) == 0  # nothing recorded
        assert server.requests == []
        job_id = _start_job(server)
        (tmp_path / "provider").mkdir()
        (tmp_path / "provider" / "state.json").write_text(json.dumps({"job": job_id}))
        assert cancel_provider_job(tmp_path, server.url, environ={c.ENV_PROVIDER_API_KEY: "sk-proj-wrongwrongwrongwrong"}) == 1
        assert server.jobs[job_id].status != "cancelled"
        assert cancel_provider_job(tmp_path, server.url, environ=env) == 0
        assert server.jobs[job_id].status == "cancelled"
        assert cancel_provider_job(tmp_path, server.url, environ=env) == 0  # already ended
    out, err = capfd.readouterr()
    assert f"cancelled provider job {job_id}" in out and "already ended (cancelled)" in out
    assert "ProviderAuthFailed" in err and "wrongwrong" not in out + err


def _start_job(server: FakeOpenAIProvider) -> str:
    from openai import OpenAI

    api = OpenAI(api_key=KEY, base_url=server.url)
    upload = api.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    return api.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=upload.id).id


def test_an_unreachable_judge_fails_before_anything_is_uploaded(tmp_path: Path) -> None:
    with FakeOpenAIProvider(api_key=KEY) as server:
        spec = _spec(server)
        spec["evaluation"] = {"judge": {"endpoint": "http://127.0.0.1:9/v1", "model": "judge-model"}}
        result = _run(spec, tmp_path)
        assert server.requests == []  # nothing uploaded, no provider job paid for
    assert (result.phase, result.reason) == ("Failed", c.Reason.JUDGE_UNREACHABLE)
    assert "evaluation.judge.endpoint" in result.message
