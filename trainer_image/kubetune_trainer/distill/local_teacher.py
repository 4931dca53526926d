"""A teacher the trainer loads itself (`teacher.uri`): a Hugging Face model in the pod.

The same interface as the endpoint client (:class:`kubetune_trainer.distill.teacher.Teacher`):
:meth:`LocalTeacher.ask_all` answers conversations in order, identical ones once, from the
cache first. The model is loaded only when an answer is missing from the cache (a retried pod
whose answers are all cached never loads it), on the training device, answers greedily
(`temperature` is not used: the evaluation's generation is greedy), `concurrency` prompts per
batch, and stays loaded until :meth:`LocalTeacher.close` (the data stage asks for answers,
then for augmentation's requests and their answers: one load) frees it, before the student
loads. `requests` counts generated answers; the token counts are the rendered prompts' and the
generated answers'.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import BaseModelSpec
from kubetune.api.teacher import TeacherSpec
from kubetune_trainer.distill.cache import AnswerCache, CachedAnswer, prompt_key
from kubetune_trainer.distill.teacher import Messages, TeacherAnswer

log = logging.getLogger(__name__)


class LocalTeacher:
    """Answers with the model at `spec.uri`, loaded in this process when needed."""

    def __init__(
        self,
        spec: TeacherSpec,
        cache: AnswerCache | None = None,
        *,
        base_dir: Path | None = None,
        device: str | None = None,
    ) -> None:
        assert spec.uri is not None
        self.spec = spec
        self.cache = cache
        self._base_dir = base_dir
        self._device = device
        self.requests = 0
        """Answers generated in this process."""
        self.prompt_tokens = 0
        """Prompt tokens of the answers given (cached ones as counted when generated)."""
        self.completion_tokens = 0
        """Generated tokens of the answers given, counted like `prompt_tokens`."""
        self.cached = 0
        """Answers taken from the cache."""
        self._loaded: tuple[Any, Any, str] | None = None  # (model, tokenizer, device)

    def model_path(self) -> Path:
        """The teacher's local folder (downloaded or built on first use)."""
        from kubetune_trainer.models import resolve_base_model

        model = BaseModelSpec.model_construct(
            uri=self.spec.uri or "",
            accept_license=self.spec.accept_license,
            revision=None,
            trust_remote_code=False,
            token_secret_ref=None,
        )
        return resolve_base_model(model, base_dir=self._base_dir).path

    def size_bytes(self) -> int:
        """Bytes of the teacher's weights on disk."""
        path = self.model_path()
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))

    def ask_all(self, conversations: list[Messages]) -> list[TeacherAnswer]:
        """Answers to `conversations` in their order (see the module's docstring)."""
        keys = [prompt_key(m) for m in conversations]
        unique: dict[str, Messages] = {}
        for key, messages in zip(keys, conversations, strict=True):
            unique.setdefault(key, messages)
        answers: dict[str, TeacherAnswer] = {}
        missing: list[tuple[str, Messages]] = []
        for key, messages in unique.items():
            hit = self.cache.get(messages) if self.cache is not None else None
            if hit is None:
                missing.append((key, messages))
                continue
            self.cached += 1
            self.prompt_tokens += hit.prompt_tokens
            self.completion_tokens += hit.completion_tokens
            answers[key] = TeacherAnswer(hit.text, cached=True, seconds=hit.seconds)
        if missing:
            answers.update(self._generate(missing))
        return [answers[key] for key in keys]

    def close(self) -> None:
        """Free the model, if it was loaded."""
        if self._loaded is None:
            return
        self._loaded = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def _load(self) -> tuple[Any, Any, str]:
        if self._loaded is None:
            from kubetune_trainer.evaluation.generation import iter_models, load_tokenizer
            from kubetune_trainer.models import training_device

            device = self._device or training_device()
            path = self.model_path()
            log.info("teacher %s: loading on %s", self.spec.uri, device)
            tokenizer = load_tokenizer(path, None)
            _, model = next(iter_models(path, None, device, want_base=False))
            self._loaded = (model, tokenizer, device)
        return self._loaded

    def _generate(self, missing: list[tuple[str, Messages]]) -> dict[str, TeacherAnswer]:
        from kubetune_trainer.evaluation.examples import EvalExample
        from kubetune_trainer.evaluation.generation import encode, generate_answers, render_prompt

        model, tokenizer, device = self._load()
        log.info("teacher %s: generating %d answers", self.spec.uri, len(missing))
        out: dict[str, TeacherAnswer] = {}
        step = self.spec.concurrency
        for start in range(0, len(missing), step):
            batch = missing[start : start + step]
            examples = [EvalExample(messages=m, text=None, reference="") for _, m in batch]
            counts: list[int] = []
            began = time.monotonic()
            texts = generate_answers(
                model,
                tokenizer,
                examples,
                max_new_tokens=self.spec.max_tokens,
                device=device,
                batch_size=step,
                token_counts=counts,
            )
            seconds = (time.monotonic() - began) / len(batch)
            for (key, messages), example, text, count in zip(
                batch, examples, texts, counts, strict=True
            ):
                prompt = len(encode(tokenizer, *render_prompt(tokenizer, example)))
                self.requests += 1
                self.prompt_tokens += prompt
                self.completion_tokens += count
                if self.cache is not None:
                    self.cache.put(messages, CachedAnswer(text, prompt, count, seconds))
                out[key] = TeacherAnswer(text, seconds=seconds)
        return out
