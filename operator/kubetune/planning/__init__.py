"""Planning a FineTuneJob before any GPU time: the memory it needs (`memory`), the base models'
geometry (`models`), the GPUs it may run on (`gpus`), and what it should cost (`cost`).

Shared by the operator (before the trainer Job is created), `kubetune validate` and the
trainer (its out-of-memory advice); it imports nothing from the trainer package.
"""
