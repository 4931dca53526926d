"""Training on a tiny Llama on CPU: QLoRA (really 4-bit), LoRA with early stopping, DPO, resume
after a kill, and a task the model visibly learns."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import BaseModelSpec, FineTuneJobSpec
from kubetune.api.trainer_result import TrainerResult
from kubetune_trainer.models import (
    ResolvedModel,
    is_4bit,
    load_model,
    load_tokenizer,
    resolve_base_model,
)
from kubetune_trainer.progress import parse_progress_line
from kubetune_trainer.train.config import lora_config, sft_config
from kubetune_trainer.train.run import TrainOutcome, latest_checkpoint, train_model

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]

# A routing task a 2-layer random model learns in a few dozen LoRA steps: the label follows from
# one key word, wrapped in varying text, so held-out tickets need the rule, not memory.
LABELS = {"damaged": "refund", "late": "delay", "password": "account", "invoice": "billing"}
OPENERS = ["Ticket {n}:", "Hello, ticket {n}.", "Re: case {n} -", "Order {n}:"]


def ticket(rng: random.Random) -> tuple[str, str]:
    key = rng.choice(list(LABELS))
    opener = rng.choice(OPENERS).format(n=rng.randint(1000, 9999))
    return f"{opener} my {key} issue needs help. Category?", LABELS[key]


def chat_records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question, answer = ticket(rng)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return out


def preference_records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question, answer = ticket(rng)
        wrong = rng.choice([v for v in LABELS.values() if v != answer])
        out.append({"prompt": question, "chosen": answer, "rejected": wrong})
    return out


def make_spec(**overrides: Any) -> FineTuneJobSpec:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "builtin://tiny-llama", "acceptLicense": True},
        "method": "lora",
        "dataset": {"source": {"uri": "file://data.jsonl"}},
        "lora": {"r": 8, "alpha": 16},
        "training": {
            "maxSteps": 4,
            "batchSize": 4,
            "gradientAccumulationSteps": 1,
            "evalSteps": 2,
            "learningRate": 2e-3,
            "maxLength": 64,
            "gradientCheckpointing": True,
        },
        "resources": {"gpus": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return FineTuneJobSpec.model_validate(spec)


@pytest.fixture(scope="module")
def base() -> ResolvedModel:
    corpus = [json.dumps(r) for r in chat_records(64, seed=0)]
    return resolve_base_model(BaseModelSpec(uri="builtin://tiny-llama"), corpus=corpus)


@pytest.fixture(scope="module")
def tokenizer(base: ResolvedModel) -> Any:
    return load_tokenizer(base)


def assert_adapter(outcome: TrainOutcome) -> None:
    out = Path(outcome.output_dir)
    assert outcome.kind == "adapter" and out.name == "adapter"
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer_config.json").is_file()
    assert (
        json.loads((out / "trainer_state.json").read_text())["global_step"] == outcome.global_step
    )


def test_sft_config_masks_prompts(tmp_path: Path) -> None:
    spec = make_spec()
    kwargs = {"n_train": 64, "has_eval": True, "device": "cpu", "half_dtype": "float32"}
    chat = sft_config(spec, tmp_path, data_format="chat", **kwargs)
    # Chat data arrives tokenized with assistant masks from the model's own template
    # (train/masking.py, tested per family): trl builds labels from them, not from markers.
    assert chat.assistant_only_loss is False and chat.completion_only_loss is None
    completion = sft_config(spec, tmp_path, data_format="completion", **kwargs)
    assert completion.completion_only_loss is True and completion.assistant_only_loss is False
    assert chat.load_best_model_at_end and chat.metric_for_best_model == "eval_loss"
    assert chat.save_steps == chat.eval_steps == 2 and chat.save_total_limit == 2
    assert chat.output_dir == str(tmp_path / "checkpoints")
    assert lora_config(spec).target_modules == "all-linear"
    assert lora_config(make_spec(method="full")) is None


def test_qlora_trains_a_4bit_base_on_cpu(
    tmp_path: Path, base: ResolvedModel, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_spec(
        method="qlora",
        quantization={"type": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"},
    )
    model = load_model(base, spec, device="cpu")
    assert is_4bit(model), "bitsandbytes fell back to 16-bit"
    q_proj = model.model.layers[0].self_attn.q_proj
    assert str(q_proj.weight.dtype) == "torch.uint8"  # packed 4-bit values, two per byte
    assert q_proj.weight.numel() * 2 == q_proj.in_features * q_proj.out_features
    del model

    outcome = train_model(
        spec,
        base,
        tokenizer,
        chat_records(32, 1),
        chat_records(8, 2),
        tmp_path,
        data_format="chat",
        device="cpu",
    )
    assert_adapter(outcome)
    assert outcome.global_step == 4
    assert any("eval_loss" in e for e in outcome.log_history)
    lines = [
        parse_progress_line(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("progress ")
    ]
    assert lines and lines[-1] is not None and lines[-1].step == 4 and lines[-1].total_steps == 4
    assert lines[-1].loss is not None and lines[-1].tokens_per_second


def test_lora_stops_early_and_keeps_the_best_checkpoint(
    tmp_path: Path, base: ResolvedModel, tokenizer: Any
) -> None:
    # A threshold no improvement can meet: the second evaluation counts as "no better", so
    # patience 1 stops the run at step 4 of 20.
    spec = make_spec(
        training={
            "maxSteps": 20,
            "earlyStopping": {"enabled": True, "patience": 1, "threshold": 100.0},
        }
    )
    train, validation = chat_records(48, 3), chat_records(8, 4)
    outcome = train_model(
        spec,
        base,
        tokenizer,
        train,
        validation,
        tmp_path,
        data_format="chat",
        device="cpu",
    )
    assert_adapter(outcome)
    assert outcome.stopped_early and outcome.global_step == 4
    evals = [(e["eval_loss"], e["step"]) for e in outcome.log_history if "eval_loss" in e]
    best_loss, best_step = min(evals)
    assert outcome.best_eval_loss == pytest.approx(best_loss)
    assert outcome.best_checkpoint is not None and outcome.best_checkpoint.endswith(
        f"checkpoint-{best_step}"
    )
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert 1 <= len(checkpoints) <= 2 and f"checkpoint-{best_step}" in checkpoints
    # A second call with the same settings and data finds the outcome and does not train again;
    # other settings (an edited YAML in the same `kubetune run` workdir) start over.
    finished = (tmp_path / "train_outcome.json").stat().st_mtime_ns
    again = train_model(
        spec, base, tokenizer, train, validation, tmp_path, data_format="chat", device="cpu"
    )
    assert again.global_step == outcome.global_step
    assert (tmp_path / "train_outcome.json").stat().st_mtime_ns == finished
    edited = make_spec(training={"maxSteps": 2})
    fresh = train_model(
        edited, base, tokenizer, train, validation, tmp_path, data_format="chat", device="cpu"
    )
    assert fresh.global_step == 2 and fresh.resumed_from_step is None


def test_dpo_with_lora(tmp_path: Path, base: ResolvedModel, tokenizer: Any) -> None:
    spec = make_spec(
        objective="dpo",
        dataset={"source": {"uri": "file://p.jsonl"}, "format": "preference"},
        training={"dpoBeta": 0.1},
    )
    outcome = train_model(
        spec,
        base,
        tokenizer,
        preference_records(32, 5),
        preference_records(8, 6),
        tmp_path,
        data_format="preference",
        device="cpu",
    )
    assert_adapter(outcome)
    losses = [e["loss"] for e in outcome.log_history if "loss" in e]
    assert losses and abs(losses[0] - 0.6931) < 0.05  # DPO starts at log(2): policy == reference
    assert any("eval_loss" in e for e in outcome.log_history)


def _write_job(tmp_path: Path, records: list[dict[str, Any]], training: dict[str, Any]) -> Path:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = make_spec(
        dataset={
            "source": {"uri": f"file://{tmp_path / 'data.jsonl'}"},
            "split": {"validation": 0.1, "test": 0.1},
        },
        dataPolicy={"dedup": "none"},
        training=training,
        # A gate that cannot pass, and export skipped when it fails: this test is about training.
        evaluation={
            "metrics": ["perplexity"],
            "maxExamples": 4,
            "maxNewTokens": 4,
            "compareWithBase": False,
            "gate": {"maxPerplexity": 1.0001},
        },
        export={"onGateFailure": "skip"},
    )
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_wire()))
    return path


def _trainer(spec: Path, workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_TERMINATION_LOG": str(workdir.parent / "termination-log"),
        "KUBETUNE_ARTIFACTS_URI": "pvc://kubetune-artifacts/ml/job-1",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubetune_trainer",
                "run",
                "--spec",
                str(spec),
                "--workdir",
                str(workdir),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )


def test_killed_trainer_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    spec = _write_job(tmp_path, chat_records(60, 7), {"maxSteps": 14, "evalSteps": 2})
    workdir = tmp_path / "work"

    first = _trainer(spec, workdir, tmp_path / "first.log")
    deadline = time.monotonic() + 600
    while latest_checkpoint(workdir) is None:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # what a node failure or an eviction does
    first.wait()
    killed_at = latest_checkpoint(workdir)
    assert killed_at is not None
    step = int(killed_at.name.split("-")[-1])
    assert step < 14, "the first run finished before it could be killed"
    assert not (workdir / "adapter").exists()

    second = _trainer(spec, workdir, tmp_path / "second.log")
    assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert f"(step {step})" in log
    steps = [p.step for p in map(parse_progress_line, log.splitlines()) if p is not None]
    assert steps and min(steps) > step, "the second run started over"

    outcome = json.loads((workdir / "train_outcome.json").read_text())
    assert outcome["resumed_from_step"] == step
    state = json.loads((workdir / "adapter" / "trainer_state.json").read_text())
    assert state["global_step"] == 14
    logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged[0] <= step < logged[-1]  # history from before the kill was restored
    result = TrainerResult.model_validate_json((workdir / "result.json").read_text())
    assert result.phase == "Succeeded" and result.gate is not None and result.gate.passed is False
    assert {a.name for a in result.artifacts} >= {"adapter", "predictions.jsonl"}  # export skipped
    adapter = next(a for a in result.artifacts if a.name == "adapter")
    assert adapter.uri == "pvc://kubetune-artifacts/ml/job-1/adapter"
    message = (tmp_path / "termination-log").read_text()
    assert len(message.encode()) <= 4096
    assert TrainerResult.from_termination_message(message).phase == "Succeeded"


def test_the_model_visibly_learns_a_held_out_task(
    tmp_path: Path, base: ResolvedModel, tokenizer: Any
) -> None:
    from kubetune_trainer.evaluation.examples import to_eval_examples
    from kubetune_trainer.evaluation.generation import generate_answers, iter_models

    spec = make_spec(
        lora={"r": 16, "alpha": 32},
        training={
            "maxSteps": 50,
            "batchSize": 8,
            "evalSteps": 10,
            "learningRate": 2e-3,
            "warmupRatio": 0.05,
            "gradientCheckpointing": False,
        },
    )
    train, validation, test = chat_records(160, 10), chat_records(16, 11), chat_records(20, 12)
    outcome = train_model(
        spec, base, tokenizer, train, validation, tmp_path, data_format="chat", device="cpu"
    )
    examples, _ = to_eval_examples(test)
    exact = {}
    for role, model in iter_models(base.path, Path(outcome.output_dir), "cpu", want_base=True):
        answers = generate_answers(model, tokenizer, examples, max_new_tokens=6, device="cpu")
        exact[role] = sum(a == e.reference for a, e in zip(answers, examples, strict=True)) / len(
            examples
        )
    assert exact["base"] <= 0.1
    assert exact["fine_tuned"] >= 0.8, exact
    assert outcome.diagnosis_model().verdict == "healthy"
