"""backend openai: fine-tuning through a provider's API instead of a local GPU.

`run_provider_pipeline` (openai_backend.py) is what the trainer runs for a FineTuneJob with
`spec.backend: openai`: the same data preparation and scans as a local job, then the prepared
splits uploaded in OpenAI's chat format (openai_format.py), the provider's job created and
followed into the same progress and result contract, failures mapped to the FineTuneJob's
reasons with the API key never shown (openai_errors.py).
"""

from kubetune_trainer.provider.openai_backend import run_provider_pipeline

__all__ = ["run_provider_pipeline"]
