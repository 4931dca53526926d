"""Specs that break one rule each, with the exact message and a fix, shared by the unit tests
of the API models and the tests of the generated CRD on a real kube-apiserver (the same words
must come from both)."""

from __future__ import annotations

from typing import Any

MINIMAL: dict[str, Any] = {
    "baseModel": {"uri": "pvc://models/qwen2.5-7b"},
    "dataset": {"source": {"uri": "pvc://data/train.jsonl"}},
}

JUDGE: dict[str, Any] = {"endpoint": "https://judge.example/v1", "model": "judge-model"}
GENERAL: dict[str, Any] = {"uri": "pvc://data/general.jsonl"}


# (patch of MINIMAL that breaks one rule, pydantic's error location, exact message, patch of
# MINIMAL that fixes it as the message tells)
RULES: list[tuple[dict[str, Any], str, str, dict[str, Any]]] = [
    (
        {"export": {"merge": False, "gguf": []}},
        "export",
        "export.gguf: list at least one GGUF type (f16, q8_0, q5_k_m or q4_k_m), e.g. gguf: [q4_k_m]: "
        "every job exports its merged model as GGUF",
        {"export": {"gguf": ["q4_k_m"]}},
    ),
    (
        {"export": {"merge": False, "gguf": ["f16"]}},
        "export",
        "export.merge: gguf export needs merge: true (llama.cpp converts the merged model)",
        {"export": {"merge": True, "gguf": ["f16"]}},
    ),
    (
        {"export": {"output": {"path": "team-a/../team-b"}}},
        "export",
        "export.output.path: '..' may not appear in it: artifacts stay inside the claim "
        "export.output.pvcName; give a folder such as team-a/run-1",
        {"export": {"output": {"path": "team-a/run-1"}}},
    ),
    (
        {"evaluation": {"gate": {"maxForgettingDrop": 0.1}}},
        "",
        "evaluation.gate.maxForgettingDrop needs evaluation.forgettingSet: add a general set that "
        "is scored before and after fine-tuning, or remove maxForgettingDrop",
        {"evaluation": {"gate": {"maxForgettingDrop": 0.1}, "forgettingSet": GENERAL}},
    ),
    (
        {"evaluation": {"gate": {"minJudgeScore": 4}}},
        "",
        "evaluation.gate.minJudgeScore needs evaluation.judge: configure a judge (endpoint and "
        "model) or remove minJudgeScore",
        {"evaluation": {"gate": {"minJudgeScore": 4}, "judge": JUDGE}},
    ),
    (
        {"evaluation": {"compareWithBase": False}},
        "",
        "evaluation.compareWithBase: the gate compares the fine-tuned model with the base model "
        "(gate.requireImprovementOverBase, on by default when no threshold and no judge is set), "
        "so the base must be evaluated; set compareWithBase: true, or set "
        "gate.requireImprovementOverBase: false and give a threshold such as gate.minRougeL",
        {"evaluation": {"compareWithBase": False, "gate": {"requireImprovementOverBase": False, "minRougeL": 0.3}}},
    ),
    (
        {"evaluation": {"compareWithBase": False, "gate": {"requireImprovementOverBase": True, "minRougeL": 0.3}}},
        "",
        "evaluation.compareWithBase: the gate compares the fine-tuned model with the base model "
        "(gate.requireImprovementOverBase, on by default when no threshold and no judge is set), "
        "so the base must be evaluated; set compareWithBase: true, or set "
        "gate.requireImprovementOverBase: false and give a threshold such as gate.minRougeL",
        {"evaluation": {"compareWithBase": True, "gate": {"requireImprovementOverBase": True, "minRougeL": 0.3}}},
    ),
    (
        {"evaluation": {"metrics": []}},
        "",
        "evaluation.metrics: the gate compares the fine-tuned model with the base model, but no "
        "metric is computed (the list is empty and there is no judge); list one, e.g. "
        "metrics: [rouge_l]",
        {"evaluation": {"metrics": ["rouge_l"]}},
    ),
    (
        {"evaluation": {"gate": {"requireImprovementOverBase": False}}, "export": {"onGateFailure": "skip"}},
        "",
        "export.onGateFailure: skip, but evaluation.gate checks nothing (requireImprovementOverBase: "
        "false, no threshold, no judge, no maxForgettingDrop), so the gate always fails and nothing "
        "would be exported; give a threshold such as gate.minRougeL, or set onGateFailure: export",
        {"evaluation": {"gate": {"requireImprovementOverBase": False}}, "export": {"onGateFailure": "export"}},
    ),
    (
        {"evaluation": {"gate": {"requireImprovementOverFewShot": True}}},
        "",
        "evaluation.gate.requireImprovementOverFewShot needs evaluation.baselines to list fewShot "
        "(the base model prompted with evaluation.fewShotExamples training examples is the "
        "baseline to beat); add baselines: [fewShot], or remove requireImprovementOverFewShot",
        {"evaluation": {"gate": {"requireImprovementOverFewShot": True}, "baselines": ["fewShot"]}},
    ),
    (
        {"evaluation": {"compareWithBase": False, "baselines": ["zeroShot", "fewShot"], "gate": {"requireImprovementOverFewShot": True}}},
        "",
        "evaluation.baselines: zeroShot is the base model asked the test prompts as they are, "
        "which compareWithBase: false turns off; remove zeroShot from baselines, or set "
        "compareWithBase: true",
        {"evaluation": {"compareWithBase": False, "baselines": ["fewShot"], "gate": {"requireImprovementOverFewShot": True}}},
    ),
    (
        {"evaluation": {"metrics": [], "baselines": ["fewShot"], "gate": {"requireImprovementOverFewShot": True}}},
        "",
        "evaluation.metrics: the gate compares the fine-tuned model with the few-shot baseline "
        "(gate.requireImprovementOverFewShot), but no metric is computed (the list is empty and "
        "there is no judge); list one, e.g. metrics: [rouge_l]",
        {"evaluation": {"metrics": ["rouge_l"], "baselines": ["fewShot"], "gate": {"requireImprovementOverFewShot": True}}},
    ),
    (
        {"dataset": {"source": {"uri": "pvc://data/train.jsonl"}, "split": {"test": 0}}},
        "",
        "dataset.split.test: 0 holds no examples out, so evaluation has nothing to score and the "
        "quality gate cannot pass; set it above 0, e.g. 0.1",
        {"dataset": {"source": {"uri": "pvc://data/train.jsonl"}, "split": {"test": 0.1}}},
    ),
    (
        {"baseModel": {"uri": "s3://models/qwen2.5-7b"}},
        "",
        "baseModel.uri: the trainer does not read s3:// models yet; copy the model folder to a "
        "PersistentVolumeClaim and use pvc://<claim>/<path>",
        {"baseModel": {"uri": "pvc://models/qwen2.5-7b"}},
    ),
    (
        {"dataset": {"source": {"uri": "pvc://data/prefs.jsonl"}, "format": "preference"}},
        "",
        "dataset.format: preference records (prompt/chosen/rejected) train with objective: dpo; "
        "set objective: dpo, or give chat, instruction or completion data",
        {"dataset": {"source": {"uri": "pvc://data/prefs.jsonl"}, "format": "preference"}, "objective": "dpo"},
    ),
    (
        {"evaluation": {"judge": {**JUDGE, "endpoint": "https://judge.example/v1/chat/completions"}}},
        "",
        "evaluation.judge.endpoint: give the API's base URL (e.g. https://api.openai.com/v1), not "
        "the /chat/completions route: the client appends it",
        {"evaluation": {"judge": JUDGE}},
    ),
    (
        {"method": "full", "export": {"adapterGguf": True}},
        "",
        "export.adapterGguf: method full trains every weight and leaves no adapter to export; set "
        "adapterGguf: false, or use method lora or qlora",
        {"method": "lora", "export": {"adapterGguf": True}},
    ),
]
