"""The teacher's answers, cached on the artifact volume.

One folder per teacher setting (`<root>/<key>/`, key = sha256 of endpoint, model, maxTokens and
temperature: changing any of them asks the teacher again) and one JSON file per prompt in it,
named by the sha256 of the conversation sent. Files are written to a temporary name and renamed,
so a pod killed mid-write leaves no half answer; threads write distinct files. The API key is no
part of the key and is never written: `teacher.json` in each folder names the settings (the
endpoint without credentials or query string) for people.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.teacher import TeacherSpec
from kubetune_trainer.data.sources import safe_uri


def cache_root(workdir: Path) -> Path:
    """Where a job's teacher answers are cached: ``<workdir>/teacher/cache`` (the workdir is on
    the artifact volume, so a retried pod finds them)."""
    return Path(workdir) / "teacher" / "cache"


@dataclass(frozen=True)
class CachedAnswer:
    """One answer as the teacher gave it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def teacher_key(spec: TeacherSpec) -> str:
    """The cache key of a teacher's settings (what changes its answers)."""
    material = {
        "endpoint": str(spec.endpoint).rstrip("/"),
        "model": spec.model,
        **({"uri": spec.uri} if spec.uri is not None else {}),
        "maxTokens": spec.max_tokens,
        "temperature": spec.temperature,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def prompt_key(messages: list[dict[str, str]]) -> str:
    """sha256 of the conversation sent to the teacher."""
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AnswerCache:
    """Answers of one teacher setting under `root`."""

    def __init__(self, root: Path, spec: TeacherSpec) -> None:
        self.folder = Path(root) / teacher_key(spec)
        self.folder.mkdir(parents=True, exist_ok=True)
        about = self.folder / "teacher.json"
        if not about.exists():
            about.write_text(
                json.dumps(
                    {
                        "endpoint": None if spec.endpoint is None else safe_uri(str(spec.endpoint)),
                        "model": spec.model,
                        "uri": None if spec.uri is None else safe_uri(spec.uri),
                        "maxTokens": spec.max_tokens,
                        "temperature": spec.temperature,
                    },
                    indent=2,
                )
                + "\n"
            )

    def get(self, messages: list[dict[str, str]]) -> CachedAnswer | None:
        """The cached answer to `messages`, or None."""
        path = self.folder / f"{prompt_key(messages)}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return CachedAnswer(
                text=str(data["answer"]),
                prompt_tokens=int(data.get("promptTokens", 0)),
                completion_tokens=int(data.get("completionTokens", 0)),
                seconds=float(data.get("seconds", 0.0)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or unreadable: ask again

    def put(self, messages: list[dict[str, str]], answer: CachedAnswer) -> None:
        """Store the answer to `messages`."""
        path = self.folder / f"{prompt_key(messages)}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "answer": answer.text,
                    "promptTokens": answer.prompt_tokens,
                    "completionTokens": answer.completion_tokens,
                    "seconds": round(answer.seconds, 4),
                },
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
        tmp.replace(path)

    def __len__(self) -> int:
        return sum(1 for p in self.folder.glob("*.json") if p.name != "teacher.json")
