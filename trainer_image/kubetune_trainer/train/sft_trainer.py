"""trl's SFTTrainer with the loss a plain ``transformers.Trainer`` computes.

trl 1.16's ``SFTTrainer.compute_loss`` runs the model with ``fused_lm_head=True``: besides each
position's log-probability it computes the entropy of the whole next-token distribution and
whether the top-1 token is right, at every position, on every step, to log ``entropy`` and
``mean_token_accuracy``. No SFTConfig setting turns that off, and on the small models and CPUs
where training is cheap it is what made kubetune slower than plain Trainer + peft on the same
model and data (``bench/train_throughput.py``, issue #8). kubetune reports neither metric (the
diagnosis reads the loss curves), so the subclass asks the model for its own loss, as
``Trainer.compute_loss`` does: the same cross-entropy over the labelled positions, summed and
divided by ``num_items_in_batch`` (the labelled tokens of the whole accumulated batch) when the
Trainer passes it, exactly trl's reduction. ``num_tokens`` is still counted for the logs.

Everything else is trl's: the dataset preparation, the collator that turns ``assistant_masks``
into labels, padding-free/packing, checkpoints and evaluation.
"""

from __future__ import annotations

from typing import Any


def plain_loss_sft_trainer(**kwargs: Any) -> Any:
    """Build the trainer; trl and transformers are imported here, not at module import."""
    from transformers import Trainer
    from trl import SFTTrainer  # type: ignore[attr-defined]

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if self.aux_loss_enabled or self.compute_loss_func is not None:
                # MoE router loss and user loss functions: trl's own path handles them
                return super().compute_loss(  # type: ignore[no-untyped-call]
                    model, inputs, return_outputs, num_items_in_batch
                )
            inputs["use_cache"] = False
            mode = "train" if model.training else "eval"
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum().item())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainLossSFTTrainer(**kwargs)
