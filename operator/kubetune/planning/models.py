"""The geometry of the base models kubetune supports, for estimates made before training.

The operator never has a model's ``config.json`` (the trainer downloads it), so the shapes of
the supported families' published models are kept here, copied from each repository's
``config.json`` (hidden_size, num_hidden_layers, intermediate_size, num_attention_heads,
num_key_value_heads, head_dim where given, vocab_size, tie_word_embeddings). A model named by
``hf://<repo>`` is found by its repository id (case-insensitive; the base and ``-Instruct``
repositories share their shapes). Any other model (a ``pvc://``/``file://``/``s3://`` folder, a
private fine-tune, a repository not listed) is not estimated: the status says so, and nothing
is guessed from its name.

| Repository (and its -Instruct)     | parameters | layers | hidden | intermediate | heads/kv | vocab   |
|------------------------------------|-----------:|-------:|-------:|-------------:|---------:|--------:|
| meta-llama/Llama-3.2-1B            | 1.24 B     | 16     | 2048   | 8192         | 32/8     | 128256  |
| meta-llama/Llama-3.2-3B            | 3.21 B     | 28     | 3072   | 8192         | 24/8     | 128256  |
| meta-llama/Llama-3.1-8B, Meta-Llama-3-8B | 8.03 B | 32   | 4096   | 14336        | 32/8     | 128256  |
| meta-llama/Llama-3.1-70B, Meta-Llama-3-70B | 70.6 B | 80 | 8192   | 28672        | 64/8     | 128256  |
| Qwen/Qwen2.5-0.5B                  | 0.49 B     | 24     | 896    | 4864         | 14/2     | 151936  |
| Qwen/Qwen2.5-1.5B                  | 1.54 B     | 28     | 1536   | 8960         | 12/2     | 151936  |
| Qwen/Qwen2.5-3B                    | 3.09 B     | 36     | 2048   | 11008        | 16/2     | 151936  |
| Qwen/Qwen2.5-7B                    | 7.61 B     | 28     | 3584   | 18944        | 28/4     | 152064  |
| Qwen/Qwen2.5-14B                   | 14.8 B     | 48     | 5120   | 13824        | 40/8     | 152064  |
| microsoft/Phi-3-mini-4k-instruct, Phi-3.5-mini-instruct | 3.82 B | 32 | 3072 | 8192  | 32/32    | 32064   |
| mistralai/Mistral-7B-v0.3          | 7.25 B     | 32     | 4096   | 14336        | 32/8     | 32768   |
| mistralai/Mistral-Nemo-Instruct-2407 | 12.2 B   | 40     | 5120   | 14336        | 32/8 (head_dim 128) | 131072 |

Llama 3.2 and Qwen2.5 up to 3B tie the output head to the embeddings. Parameter counts leave
out Qwen's q/k/v biases (under 0.1 %).
"""

from __future__ import annotations

from typing import Final

from kubetune.planning.memory import LLAMA_3_1_8B, ModelGeometry


def _g(hidden: int, layers: int, intermediate: int, heads: int, kv: int, vocab: int,
       tied: bool = False, head_dim: int | None = None) -> ModelGeometry:
    return ModelGeometry(
        hidden_size=hidden, num_layers=layers, intermediate_size=intermediate, vocab_size=vocab,
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim or hidden // heads,
        tie_word_embeddings=tied,
    )


_LLAMA_3_2_1B = _g(2048, 16, 8192, 32, 8, 128256, tied=True, head_dim=64)
_LLAMA_3_2_3B = _g(3072, 28, 8192, 24, 8, 128256, tied=True, head_dim=128)
_LLAMA_3_70B = _g(8192, 80, 28672, 64, 8, 128256)
_QWEN2_5_0_5B = _g(896, 24, 4864, 14, 2, 151936, tied=True)
_QWEN2_5_1_5B = _g(1536, 28, 8960, 12, 2, 151936, tied=True)
_QWEN2_5_3B = _g(2048, 36, 11008, 16, 2, 151936, tied=True)
_QWEN2_5_7B = _g(3584, 28, 18944, 28, 4, 152064)
_QWEN2_5_14B = _g(5120, 48, 13824, 40, 8, 152064)
_PHI_3_MINI = _g(3072, 32, 8192, 32, 32, 32064)
_MISTRAL_7B = _g(4096, 32, 14336, 32, 8, 32768)
_MISTRAL_NEMO = _g(5120, 40, 14336, 32, 8, 131072, head_dim=128)


def _with_instruct(repos: dict[str, ModelGeometry]) -> dict[str, ModelGeometry]:
    out = {}
    for repo, geometry in repos.items():
        out[repo.lower()] = geometry
        if not repo.lower().endswith("instruct") and "-instruct-" not in repo.lower():
            out[f"{repo}-Instruct".lower()] = geometry
    return out


KNOWN_MODELS: Final[dict[str, ModelGeometry]] = _with_instruct({
    "meta-llama/Llama-3.2-1B": _LLAMA_3_2_1B,
    "meta-llama/Llama-3.2-3B": _LLAMA_3_2_3B,
    "meta-llama/Llama-3.1-8B": LLAMA_3_1_8B,
    "meta-llama/Meta-Llama-3.1-8B": LLAMA_3_1_8B,
    "meta-llama/Meta-Llama-3-8B": LLAMA_3_1_8B,
    "meta-llama/Llama-3.1-70B": _LLAMA_3_70B,
    "meta-llama/Meta-Llama-3.1-70B": _LLAMA_3_70B,
    "meta-llama/Meta-Llama-3-70B": _LLAMA_3_70B,
    "meta-llama/Llama-3.3-70B-Instruct": _LLAMA_3_70B,
    "Qwen/Qwen2.5-0.5B": _QWEN2_5_0_5B,
    "Qwen/Qwen2.5-1.5B": _QWEN2_5_1_5B,
    "Qwen/Qwen2.5-3B": _QWEN2_5_3B,
    "Qwen/Qwen2.5-7B": _QWEN2_5_7B,
    "Qwen/Qwen2.5-14B": _QWEN2_5_14B,
    "microsoft/Phi-3-mini-4k-instruct": _PHI_3_MINI,
    "microsoft/Phi-3.5-mini-instruct": _PHI_3_MINI,
    "mistralai/Mistral-7B-v0.3": _MISTRAL_7B,
    "mistralai/Mistral-7B-Instruct-v0.3": _MISTRAL_7B,
    "mistralai/Mistral-Nemo-Instruct-2407": _MISTRAL_NEMO,
})
"""Lower-case Hugging Face repository id -> geometry (module doc)."""


def known_geometry(uri: str) -> tuple[ModelGeometry | None, str]:
    """(geometry, where it came from) of the model at `uri`, or (None, why it is not known)."""
    scheme, _, rest = uri.partition("://")
    repo = rest.split("?", 1)[0].strip("/")
    if scheme == "hf":
        geometry = KNOWN_MODELS.get(repo.lower())
        if geometry is not None:
            return geometry, f"{repo} (kubetune.planning.models)"
        return None, (
            f"{repo!r} is not in kubetune's table of model shapes (kubetune.planning.models; "
            "docs/preflight.md lists them), and the operator does not read config.json"
        )
    if scheme == "builtin":
        return None, "builtin:// models are tiny test models, built in the trainer"
    return None, (
        f"the operator cannot read the config.json of a {scheme}:// model before training"
    )
