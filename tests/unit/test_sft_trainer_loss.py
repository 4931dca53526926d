"""kubetune's SFT loss is trl's loss: the plain-Trainer path (`train/sft_trainer.py`) gives the
same value as trl 1.16's fused-LM-head path on a real family's masked chat batch, with and
without the accumulated-batch token count the Trainer passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer import tiny_families
from kubetune_trainer.train.masking import tokenize_chat_records
from kubetune_trainer.train.sft_trainer import plain_loss_sft_trainer

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a support agent for Acme."},
        {"role": "user", "content": "Where is order 1234?"},
        {"role": "assistant", "content": "It ships tomorrow from Lyon."},
    ],
    [
        {"role": "user", "content": "Can I change the address?"},
        {"role": "assistant", "content": "Yes: reply with the new address before 6 pm."},
        {"role": "user", "content": "And the date?"},
        {"role": "assistant", "content": "No, the date is fixed."},
    ],
]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    fam = tiny_families.family("qwen2")
    out = tiny_families.build_family_model(
        fam, tmp_path_factory.mktemp("tiny-qwen2"), hidden_size=64, intermediate_size=128
    )
    tokenizer = tiny_families.load_family_tokenizer(fam)
    return AutoModelForCausalLM.from_pretrained(str(out)), tokenizer


def _trainers(model: Any, tokenizer: Any, tmp_path: Path) -> tuple[Any, Any, dict[str, Any]]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    records = tokenize_chat_records([{"messages": c} for c in CONVERSATIONS], tokenizer)
    kwargs = {
        "model": model,
        "args": SFTConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            report_to=[],
            use_cpu=True,
            assistant_only_loss=False,
        ),
        "train_dataset": Dataset.from_list(records),
        "processing_class": tokenizer,
    }
    ours = plain_loss_sft_trainer(**kwargs)
    trls = SFTTrainer(**kwargs)
    batch = ours._prepare_inputs(next(iter(ours.get_train_dataloader())))
    return ours, trls, batch


@pytest.mark.parametrize("count_items", [False, True], ids=["per-batch-mean", "num_items_in_batch"])
def test_plain_loss_equals_trl_fused_loss_on_masked_chat_batch(
    qwen2: tuple[Any, Any], tmp_path: Path, count_items: bool
) -> None:
    import torch

    model, tokenizer = qwen2
    ours, trls, batch = _trainers(model, tokenizer, tmp_path)
    labels = batch["labels"]
    labelled = int((labels[:, 1:] != -100).sum())
    # the batch is masked: prompts, system and padding carry no labels
    assert 0 < labelled < int(batch["attention_mask"].sum()) - labels.shape[0]
    n = torch.tensor(labelled * 3) if count_items else None  # as if 3 micro-batches accumulate
    model.train()  # as in the training loop (the tiny config has no dropout)
    with torch.no_grad():
        ours_loss = ours.compute_loss(model, dict(batch), num_items_in_batch=n)
        trl_loss = trls.compute_loss(model, dict(batch), num_items_in_batch=n)
    assert float(ours_loss) > 0
    assert torch.allclose(ours_loss, trl_loss, rtol=1e-5, atol=1e-6), (ours_loss, trl_loss)
    assert ours._metrics["train"]["num_tokens"] == [int(batch["attention_mask"].sum())]
