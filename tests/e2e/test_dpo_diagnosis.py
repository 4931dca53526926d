"""The diagnosis reads a real DPO run: trl's DPOTrainer logs, on a tiny Llama on CPU."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import BaseModelSpec, FineTuneJobSpec
from kubetune_trainer.models import load_tokenizer, resolve_base_model
from kubetune_trainer.train.run import train_model

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LABELS = {"damaged": "refund", "late": "delay", "password": "account", "invoice": "billing"}


def pairs(n: int, seed: int) -> list[dict[str, Any]]:
    """Routing tickets: chosen is the right category, rejected a wrong one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        key = rng.choice(list(LABELS))
        wrong = rng.choice([v for v in LABELS.values() if v != LABELS[key]])
        prompt = f"Ticket {rng.randint(1000, 9999)}: my {key} issue needs help. Category?"
        out.append({"prompt": prompt, "chosen": LABELS[key], "rejected": wrong})
    return out


def test_a_learning_dpo_run_is_healthy_on_its_reward_metrics(tmp_path: Path) -> None:
    base = resolve_base_model(
        BaseModelSpec(uri="builtin://tiny-llama"), corpus=[json.dumps(p) for p in pairs(64, 0)]
    )
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama"},
            "method": "lora",
            "objective": "dpo",
            "dataset": {"source": {"uri": "file://p.jsonl"}, "format": "preference"},
            "lora": {"r": 8, "alpha": 16},
            "training": {
                "maxSteps": 20,
                "batchSize": 8,
                "gradientAccumulationSteps": 1,
                "evalSteps": 5,
                # A random 2-layer model needs far more than the 5e-6 LoRA-DPO default.
                "learningRate": 5e-3,
                "maxLength": 64,
                "earlyStopping": {"enabled": False},
            },
            "resources": {"gpus": 0},
        }
    )
    outcome = train_model(
        spec,
        base,
        load_tokenizer(base),
        pairs(96, 5),
        pairs(24, 6),
        tmp_path,
        data_format="preference",
        device="cpu",
    )
    keys = {k for entry in outcome.log_history for k in entry}
    assert {"rewards/margins", "rewards/accuracies", "eval_rewards/margins"} <= keys
    diagnosis = outcome.diagnosis_model()
    assert diagnosis.verdict == "healthy", diagnosis
    assert diagnosis.message.startswith("DPO rewards separate chosen from rejected: eval reward")
