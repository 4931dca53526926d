"""Hand-written Ollama TEMPLATE/SYSTEM (``export.ollama``), checked by Ollama's own template engine.

For a chat template that does not reduce to fixed text per role, a user writes the Go template
themselves. It is never trusted: :func:`check_ollama_override` has Ollama v0.11.4's template
package (the ``ollama-template`` program, ``hack/ollama-template/main.go``, shipped in the
trainer image) render a set of conversations, and the token ids must equal what the model's
Jinja template renders, before any training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from kubetune_trainer.export.chat_format import (
    ChatFormat,
    Message,
    UnsupportedChatTemplate,
    ollama_template,
)

OLLAMA_TEMPLATE_ENV = "KUBETUNE_OLLAMA_TEMPLATE"
OLLAMA_TEMPLATE_HINT = (
    "build it with `bash hack/build-ollama-template.sh` (the trainer image ships it), or point "
    f"${OLLAMA_TEMPLATE_ENV} at it"
)
OVERRIDE_CONVERSATIONS: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "Where is my parcel?"},),
    (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Track order 1234, please."},
    ),
    (
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "What is a LoRA adapter?"},
    ),
    (
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo."},
        {"role": "user", "content": "Again, in French: où est la gare ?"},
    ),
)


def find_ollama_template_renderer() -> str:
    """``ollama-template`` (hack/build-ollama-template.sh): $KUBETUNE_OLLAMA_TEMPLATE, PATH, cache."""
    import glob
    import os
    import shutil

    configured = os.environ.get(OLLAMA_TEMPLATE_ENV)
    if configured:
        return configured
    found = shutil.which("ollama-template")
    if found:
        return found
    cache = os.environ.get("KUBETUNE_CACHE") or os.path.expanduser("~/.cache/kubetune")
    built = sorted(glob.glob(os.path.join(cache, "bin", "ollama-template-*", "ollama-template")))
    if built:
        return built[-1]
    raise UnsupportedChatTemplate(
        f"export.ollama: checking a hand-written template needs Ollama's template engine: "
        f"{OLLAMA_TEMPLATE_HINT}"
    )


def render_with_ollama(
    template: str, system: str, conversations: Sequence[Sequence[Message]]
) -> list[str]:
    """Each conversation rendered by Ollama's template engine (and its SYSTEM rule)."""
    import json
    import subprocess

    payload = {
        "template": template,
        "system": system,
        "conversations": [[dict(m) for m in c] for c in conversations],
    }
    proc = subprocess.run(
        [find_ollama_template_renderer()],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[0][:300]
        raise UnsupportedChatTemplate(f"export.ollama.template: Ollama cannot render it: {detail}")
    rendered: list[str] = json.loads(proc.stdout)
    return rendered


def check_ollama_override(
    tokenizer: Any, derived: ChatFormat | None, *, template: str | None, system: str | None
) -> ChatFormat:
    """The format with ``export.ollama`` overrides, once Ollama reproduces training with them.

    Ollama's engine renders :data:`OVERRIDE_CONVERSATIONS` with the TEMPLATE (the override, or
    the derived one) and SYSTEM; each must tokenize, with the BOS the runtime adds, into the ids
    the model's Jinja chat template gives (for a chat without system message and a SYSTEM
    override: the ids of the same chat with that system prompt). Conversations the Jinja template refuses (a system
    message for Gemma) are skipped. Raises :class:`UnsupportedChatTemplate` naming the first
    conversation that differs and both renderings.
    """
    if template is None and derived is None:
        raise UnsupportedChatTemplate(
            "export.ollama.system alone cannot fix this chat template; give export.ollama.template too"
        )
    go_template = template if template is not None else ollama_template(derived)  # type: ignore[arg-type]
    default_system = system if system is not None else (derived.default_system if derived else None)
    from kubetune_trainer.train.masking import runtime_bos

    expected: list[tuple[Sequence[Message], str]] = []
    for conversation in OVERRIDE_CONVERSATIONS:
        # Ollama sends SYSTEM when a request has none: what training rendered with that prompt.
        trained_as = list(conversation)
        if system is not None and conversation[0]["role"] != "system":
            trained_as = [{"role": "system", "content": system}, *trained_as]
        try:
            text = tokenizer.apply_chat_template(
                [dict(m) for m in trained_as], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # the template refuses this conversation (e.g. no system role)
            continue
        expected.append((conversation, str(text)))
    if not expected:
        raise UnsupportedChatTemplate("the chat template renders none of the check conversations")
    served = render_with_ollama(go_template, default_system or "", [c for c, _ in expected])
    for (chat, trained_text), served_text in zip(expected, served, strict=True):
        trained = runtime_bos(tokenizer, trained_text) + list(
            tokenizer(trained_text, add_special_tokens=False)["input_ids"]
        )
        ours = runtime_bos(tokenizer, "") + list(
            tokenizer(served_text, add_special_tokens=False)["input_ids"]
        )
        if ours != trained:
            roles = [m["role"] for m in chat]
            raise UnsupportedChatTemplate(
                f"export.ollama: for roles {roles} Ollama renders {served_text!r} but the model "
                f"was trained on {trained_text!r}; fix export.ollama.template/system"
            )
    if derived is not None:
        return replace(derived, template_override=template, default_system=default_system)
    # No derived format: stop on EOS and on every special token the hand-written template writes.
    specials = [*tokenizer.all_special_tokens]
    specials += [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    skip = {tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token}
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    stops += [
        t for t in dict.fromkeys(specials) if t in go_template and t not in skip and t not in stops
    ]
    return ChatFormat(
        turns={},
        generation_prompt="",
        stops=tuple(stops),
        default_system=default_system,
        template_override=go_template,
    )
