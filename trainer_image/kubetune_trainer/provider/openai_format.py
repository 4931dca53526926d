"""Prepared records (kubetune_trainer.data's normalised shapes) as OpenAI fine-tuning JSONL.

Pure functions. Supervised jobs take chat examples (`{"messages": [...]}`); DPO jobs take
`{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`
(OpenAI's "Preference fine-tuning" format).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

Method = Literal["supervised", "dpo"]


def supervised_example(record: dict[str, Any]) -> dict[str, Any]:
    """A chat or completion record as `{"messages": [...]}`."""
    if "messages" in record:
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}
    if "completion" in record:
        return {
            "messages": [
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["completion"]},
            ]
        }
    raise ValueError(
        "a preference record (prompt/chosen/rejected) trains with objective dpo and "
        "provider.method dpo, not supervised"
    )


def preference_example(record: dict[str, Any]) -> dict[str, Any]:
    """A preference record in OpenAI's DPO format."""
    if "chosen" not in record:
        raise ValueError("provider.method dpo needs preference records (prompt/chosen/rejected)")
    prompt = record.get("prompt_messages") or [{"role": "user", "content": record["prompt"]}]
    return {
        "input": {"messages": [{"role": m["role"], "content": m["content"]} for m in prompt]},
        "preferred_output": [{"role": "assistant", "content": record["chosen"]}],
        "non_preferred_output": [{"role": "assistant", "content": record["rejected"]}],
    }


def to_openai_lines(records: Iterable[dict[str, Any]], method: Method) -> list[str]:
    """One JSON line per record, in the format `method` trains on."""
    convert = preference_example if method == "dpo" else supervised_example
    return [json.dumps(convert(r), ensure_ascii=False) for r in records]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    """`lines` to `path` (created with its folder), newline-terminated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
