"""The few-shot baseline's prompts: shots drawn from the training split only (never a test
prompt), and placed as earlier user/assistant turns that each family's REAL chat template
renders as turns the assistant answered (the real tokenizers and stock templates of
kubetune_trainer.tiny_families, probed into per-role pieces by export.chat_format)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.families import FAMILIES
from kubetune_trainer import tiny_families
from kubetune_trainer.evaluation.examples import EvalExample, to_eval_example
from kubetune_trainer.evaluation.few_shot import select_shots, with_shots
from kubetune_trainer.evaluation.generation import encode, render_prompt
from kubetune_trainer.export.chat_format import chat_format_from_tokenizer


def _chat(question: str, answer: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


TRAIN = [_chat(f"Ticket {i}: where is my parcel {i}?", f"shipping-{i}") for i in range(8)]
TEST = [_chat("Ticket 99: I was charged twice.", "billing")]


def test_shots_come_from_the_training_records_with_the_seed_and_in_their_order() -> None:
    shots = select_shots(TRAIN, 3, seed=7)
    train_examples = [to_eval_example(r) for r in TRAIN]
    assert len(shots) == 3 and all(s in train_examples for s in shots)
    assert [train_examples.index(s) for s in shots] == sorted(
        train_examples.index(s) for s in shots
    )
    assert select_shots(TRAIN, 3, seed=7) == shots
    assert {tuple(s.reference for s in select_shots(TRAIN, 3, seed=s)) for s in range(10)} != {
        tuple(s.reference for s in shots)
    }
    # Fewer training records than k: every usable one, never a made-up one.
    assert [s.reference for s in select_shots(TRAIN[:2], 5, seed=0)] == ["shipping-0", "shipping-1"]
    assert select_shots([], 3, seed=0) == []


def test_shots_cover_as_many_labels_as_k_allows() -> None:
    # 9 billing tickets for 1 of each other label: a plain draw of 3 would mostly be billing.
    labels = ["billing"] * 9 + ["shipping", "refund", "account"]
    train = [_chat(f"Ticket {i}: case {i}", label) for i, label in enumerate(labels)]
    for seed in range(10):
        answers = [s.reference for s in select_shots(train, 3, seed)]
        assert len(set(answers)) == 3, (seed, answers)
        # More shots than labels: every label, then the rest from what is left.
        answers = [s.reference for s in select_shots(train, 6, seed)]
        assert set(answers) == set(labels) and answers.count("billing") == 3


def test_a_training_record_with_a_test_prompt_is_never_a_shot() -> None:
    # The same question as the test example, differently spaced and cased: were it drawn, the
    # few-shot prompt would hand the base model the test answer.
    leaked = _chat("ticket 99:  I WAS charged twice.", "billing")
    train = [*TRAIN[:3], leaked, {"text": "no usable shape"}]
    held_out = [to_eval_example(r) for r in TEST]
    for seed in range(20):
        shots = select_shots(train, 4, seed, held_out=held_out)
        assert [s.reference for s in shots] == ["shipping-0", "shipping-1", "shipping-2"]


@pytest.fixture(scope="module", params=[f.name for f in FAMILIES])
def family_tokenizer(request: pytest.FixtureRequest) -> tuple[str, Any]:
    name: str = request.param
    return name, tiny_families.load_family_tokenizer(tiny_families.family(name))


def test_shots_render_as_answered_turns_before_the_question_in_the_real_template(
    family_tokenizer: tuple[str, Any],
) -> None:
    name, tokenizer = family_tokenizer
    fmt = chat_format_from_tokenizer(tokenizer)
    (user_open, user_close), (bot_open, bot_close) = fmt.turns["user"], fmt.turns["assistant"]
    shots = select_shots(TRAIN, 3, seed=1)
    test = to_eval_example(TEST[0])

    prompt, special = render_prompt(tokenizer, with_shots(test, shots))
    zero_shot, _ = render_prompt(tokenizer, test)

    # Each shot is a user turn answered by an assistant turn, in order, then the question and
    # the template's own generation prompt, exactly as the zero-shot prompt ends.
    at = 0
    for shot in shots:
        turn = f"{user_open}{shot.messages[0]['content']}{user_close}"  # type: ignore[index]
        turn += f"{bot_open}{shot.reference}{bot_close}"
        found = prompt.find(turn, at)
        assert found >= at, (name, turn, prompt)
        at = found + len(turn)
    ending = f"{user_open}{test.messages[0]['content']}{user_close}{fmt.generation_prompt}"  # type: ignore[index]
    assert prompt.endswith(ending) and zero_shot.endswith(ending)
    assert prompt.index(ending) >= at
    assert test.reference not in prompt
    # The rendered shots are real chat-template tokens: each answer closes with the template's
    # end-of-turn special token (one id), once per shot (twice where user turns close with it).
    close_id = encode(tokenizer, bot_close.strip(), False)
    assert len(close_id) == 1, (name, bot_close)
    per_shot = 2 if user_close.strip() == bot_close.strip() else 1
    ids = encode(tokenizer, prompt, special)
    added = ids.count(close_id[0]) - encode(tokenizer, zero_shot, special).count(close_id[0])
    assert added == 3 * per_shot


def test_the_test_prompts_system_message_stays_and_the_shots_own_are_dropped(
    family_tokenizer: tuple[str, Any],
) -> None:
    _, tokenizer = family_tokenizer
    shots = [to_eval_example(_chat("Where is my parcel?", "shipping", system="SHOT-SYSTEM"))]
    test = to_eval_example(_chat("Charged twice.", "billing", system="You route tickets."))
    few_shot = with_shots(test, shots)
    assert few_shot.messages is not None
    assert [m["role"] for m in few_shot.messages] == ["system", "user", "assistant", "user"]
    prompt, _ = render_prompt(tokenizer, few_shot)
    assert prompt.count("You route tickets.") == 1 and "SHOT-SYSTEM" not in prompt
    if chat_format_from_tokenizer(tokenizer).system_separator is None:
        assert prompt.index("You route tickets.") < prompt.index("Where is my parcel?")
    else:  # Mistral folds the system message into the last user message: the question's
        assert prompt.index("Where is my parcel?") < prompt.index("You route tickets.")


def test_raw_text_prompts_get_prompt_answer_blocks() -> None:
    shots = [EvalExample(None, "2+2=", "4"), EvalExample(None, "3+3=", "6")]
    few_shot = with_shots(EvalExample(None, "4+4=", "8"), shots)
    assert few_shot == EvalExample(None, "2+2=4\n\n3+3=6\n\n4+4=", "8")
    assert with_shots(EvalExample(None, "4+4=", "8"), []) == EvalExample(None, "4+4=", "8")
