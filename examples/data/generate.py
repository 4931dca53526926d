"""Regenerate the example datasets in this folder (deterministic; a test checks they match).

    python examples/data/generate.py

support-chat.jsonl: support-ticket routing. The user sends "Ticket: <text>", the assistant
answers with one word: billing, technical, account or shipping. The label follows from a key
phrase ("charged twice", "app crashes", "forgot my password", "parcel was damaged"), wrapped in
one of several greeting/closing templates. A tiny model (2 layers, 256 hidden) learns it on CPU
in minutes: the answer is one or two tokens from a set of four, and held-out tickets reuse known
phrases in other templates, so the rule generalises while a random model scores ~0.

general.jsonl: short general questions (capitals, sums, opposites, colours) for mixing and the
forgetting check. preference.jsonl: the routing task as DPO pairs (the right label is chosen,
a wrong one rejected).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

PHRASES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice this month",
        "my invoice shows the wrong amount",
        "I want a refund for my last order",
        "my credit card was declined at checkout",
        "there is an unknown charge on my statement",
        "I need to update my payment method",
        "I was billed after I cancelled",
        "the discount code was not applied to my bill",
        "please send me a copy of my receipt",
        "why did my subscription price go up",
    ],
    "technical": [
        "the app crashes every time I open it",
        "the page shows error 500",
        "the screen stays blank after loading",
        "file uploads keep failing halfway",
        "the app is extremely slow today",
        "push notifications stopped working",
        "the sync between my devices is broken",
        "videos will not play in the browser",
        "the export button does nothing",
        "the website freezes when I scroll",
    ],
    "account": [
        "I forgot my password",
        "I cannot sign in to my account",
        "please delete my account",
        "my account has been locked",
        "how do I turn on two-factor authentication",
        "I want to change my username",
        "the password reset link has expired",
        "I need to merge two accounts",
        "how do I verify my identity",
        "someone else may be using my login",
    ],
    "shipping": [
        "my package has not arrived yet",
        "where is my order",
        "the parcel was damaged in transit",
        "I need to change my delivery address",
        "the tracking number does not work",
        "the courier lost my parcel",
        "my delivery is a week late",
        "do you ship to Canada",
        "the box arrived empty",
        "can I pick up my order at the depot",
    ],
}

TEMPLATES = [
    "{P}.",
    "Hi, {p}.",
    "Hello team, {p}. Can you help?",
    "{P}, what should I do?",
    "Urgent: {p}!",
    "Good morning. {P} and I need this sorted.",
    "{P}. Thanks in advance.",
    "Sorry to bother you, but {p}.",
]

GENERAL: list[tuple[str, str]] = [
    *[
        (f"What is the capital of {c}?", a)
        for c, a in [
            ("France", "Paris"),
            ("Germany", "Berlin"),
            ("Italy", "Rome"),
            ("Spain", "Madrid"),
            ("Japan", "Tokyo"),
            ("Canada", "Ottawa"),
            ("Egypt", "Cairo"),
            ("Kenya", "Nairobi"),
            ("Peru", "Lima"),
            ("Norway", "Oslo"),
            ("Greece", "Athens"),
            ("Poland", "Warsaw"),
        ]
    ],
    *[
        (f"What is {a} plus {b}?", str(a + b))
        for a, b in [
            (2, 3),
            (4, 5),
            (7, 1),
            (6, 6),
            (9, 8),
            (3, 4),
            (10, 5),
            (12, 7),
            (8, 2),
            (11, 9),
            (5, 5),
            (14, 3),
        ]
    ],
    *[
        (f"What is the opposite of {w}?", o)
        for w, o in [
            ("hot", "cold"),
            ("up", "down"),
            ("big", "small"),
            ("early", "late"),
            ("light", "dark"),
            ("open", "closed"),
            ("fast", "slow"),
            ("happy", "sad"),
            ("full", "empty"),
            ("old", "new"),
        ]
    ],
    *[
        (f"What colour is {t}?", c)
        for t, c in [
            ("the sky on a clear day", "Blue"),
            ("fresh grass", "Green"),
            ("snow", "White"),
            ("a ripe banana", "Yellow"),
            ("coal", "Black"),
            ("a ripe tomato", "Red"),
            ("an orange", "Orange"),
            ("a flamingo", "Pink"),
        ]
    ],
    ("How many days are in a week?", "Seven"),
    ("How many legs does a spider have?", "Eight"),
    ("Which planet do we live on?", "Earth"),
    ("What do bees make?", "Honey"),
    ("What is frozen water called?", "Ice"),
    ("Which animal says moo?", "A cow"),
    ("How many hours are in a day?", "24"),
    ("What is the largest ocean?", "The Pacific"),
]


def _ticket(template: str, phrase: str) -> str:
    return template.format(p=phrase, P=phrase[0].upper() + phrase[1:])


def _chat(user: str, answer: str) -> dict[str, object]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def support_chat(per_label: int = 60, seed: int = 0) -> list[dict[str, object]]:
    """``per_label`` distinct tickets per label, shuffled."""
    rng = random.Random(seed)
    records = []
    for label, phrases in PHRASES.items():
        combos = [(t, p) for t in TEMPLATES for p in phrases]
        for template, phrase in rng.sample(combos, per_label):
            records.append(_chat("Ticket: " + _ticket(template, phrase), label))
    rng.shuffle(records)
    return records


def general() -> list[dict[str, object]]:
    """The general questions as chat records."""
    return [_chat(q, a) for q, a in GENERAL]


def preference(per_label: int = 15, seed: int = 1) -> list[dict[str, object]]:
    """Routing as preference pairs: the right label chosen, another rejected."""
    rng = random.Random(seed)
    labels = list(PHRASES)
    records = []
    for label, phrases in PHRASES.items():
        combos = [(t, p) for t in TEMPLATES for p in phrases]
        for template, phrase in rng.sample(combos, per_label):
            wrong = rng.choice([other for other in labels if other != label])
            records.append(
                {
                    "prompt": "Ticket: " + _ticket(template, phrase),
                    "chosen": label,
                    "rejected": wrong,
                }
            )
    rng.shuffle(records)
    return records


def render(records: list[dict[str, object]]) -> str:
    """JSONL text."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


FILES = {
    "support-chat.jsonl": support_chat,
    "general.jsonl": general,
    "preference.jsonl": preference,
}


def main() -> None:
    for name, make in FILES.items():
        (HERE / name).write_text(render(make()), encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
