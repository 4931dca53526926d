"""Class balance: when the answers are labels, the data report gives their distribution and warns
(before training, without failing) above dataPolicy.maxClassImbalance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.data import prepare_dataset
from kubetune_trainer.data.classes import MAX_LABELS, class_distribution


def _chat(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def _routing(counts: dict[str, int]) -> list[dict[str, Any]]:
    return [
        _chat(f"Ticket {label} {i}: please help with case {i} of {label}", label)
        for label, n in counts.items()
        for i in range(n)
    ]


def test_labels_are_counted_case_and_space_insensitively_most_common_first() -> None:
    records = [
        *_routing({"billing": 6, "shipping": 3}),
        _chat("q", "  Shipping "),
        _chat("r", "REFUND"),
        _chat("s", "refund"),
    ]
    dist = class_distribution(records, 10.0)
    assert dist is not None
    assert dist.counts == [("billing", 6), ("shipping", 4), ("REFUND", 2)]
    assert dist.ratio == 3.0 and not dist.imbalanced and dist.warning() is None


def test_a_ratio_above_the_bound_is_flagged_with_the_figures() -> None:
    dist = class_distribution(_routing({"billing": 33, "refund": 3}), 10.0)
    assert dist is not None and dist.imbalanced
    summary = dist.summary()
    assert (summary.classes, summary.majority, summary.majority_count) == (2, "billing", 33)
    assert (summary.minority, summary.minority_count, summary.ratio) == ("refund", 3, 11.0)
    warning = dist.warning()
    assert warning is not None and warning.startswith(
        "class imbalance: the answers are 2 labels and 'billing' has 33 records for 3 of 'refund' "
        "(11.0:1 > dataPolicy.maxClassImbalance 10)"
    )
    # The bound is the user's: 20:1 allowed, the same data passes.
    relaxed = class_distribution(_routing({"billing": 33, "refund": 3}), 20.0)
    assert relaxed is not None and not relaxed.imbalanced


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(_routing({f"label-{i}": 2 for i in range(MAX_LABELS + 1)}), id="21-labels"),
        pytest.param(_routing({"x" * 65: 4, "billing": 4}), id="long-answer"),
        pytest.param([_chat(f"q{i}", f"answer {i}") for i in range(10)], id="no-repeats"),
        pytest.param(
            [{"prompt": "p", "chosen": "billing", "rejected": "refund"}] * 4, id="preference"
        ),
        pytest.param([], id="empty"),
    ],
)
def test_answers_that_are_not_labels_get_no_distribution(records: list[dict[str, Any]]) -> None:
    assert class_distribution(records, 10.0) is None


def test_twenty_labels_still_are_labels_and_completions_count() -> None:
    records = _routing({f"label-{i}": 2 for i in range(MAX_LABELS)})
    assert class_distribution(records, 10.0) is not None
    completions = [{"prompt": f"Route {i}:", "completion": " billing"} for i in range(4)]
    dist = class_distribution(completions, 10.0)
    assert dist is not None and dist.counts == [("billing", 4)]


def test_prepare_warns_in_the_report_and_status_and_still_trains(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _routing({"billing": 60, "refund": 4})))
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama"},
            "dataset": {"source": {"uri": f"file://{data}"}, "split": {"test": 0.25}},
            "dataPolicy": {"dedup": "exact"},
        }
    )
    prepared = prepare_dataset(spec, tmp_path / "work")
    assert len(prepared.train) > 0  # a warning, not a failure
    balance = prepared.report.summary().class_balance
    assert balance is not None and balance.imbalanced and balance.ratio == 15.0
    report = json.loads((tmp_path / "work" / "data" / "report.json").read_text())
    assert report["summary"]["classBalance"]["majority"] == "billing"
    assert report["classes"]["counts"] == {"billing": 60, "refund": 4}
    splits = report["classes"]["splits"]
    assert sum(splits["train"].values()) == report["split"]["train"]
    assert sum(splits["test"].values()) == report["split"]["test"]
    assert any(w.startswith("class imbalance: ") for w in report["warnings"])
    text = (tmp_path / "work" / "data" / "report.txt").read_text()
    assert "classes     2 labels (billing 60, refund 4); majority:minority 15.0:1" in text
    assert "warning: class imbalance" in text
    # The few-shot baseline's candidates: the task's training records, no test record.
    assert prepared.task_train == prepared.train
    assert not {json.dumps(r) for r in prepared.task_train} & {json.dumps(r) for r in prepared.test}
