"""The training-memory estimate (kubetune.planning.memory) against published peaks.

    .venv/bin/python bench/memory_estimate.py

Prints, for each reference in kubetune.planning.references (torchtune's Llama 3.1 8B QLoRA and
LoRA on one RTX 4090, batch 2 x 2048 packed tokens, activation checkpointing), the estimate with
its breakdown, the published peak and the error. Pure arithmetic: no GPU, no noise. With a GPU,
bench/train_throughput.py measures kubetune's own trainer.
"""

from __future__ import annotations

from kubetune.planning.memory import GIB, estimate_memory
from kubetune.planning.references import PUBLISHED_PEAKS, TOLERANCE


def main() -> None:
    print(f"{'reference':<22} {'estimate':>10} {'published':>10} {'error':>8}   breakdown")
    for ref in PUBLISHED_PEAKS:
        memory = estimate_memory(ref.setup, ref.geometry)
        estimate = memory.total / GIB
        error = (estimate - ref.peak_gib) / ref.peak_gib * 100
        print(f"{ref.name:<22} {estimate:>7.2f} GiB {ref.peak_gib:>6.1f} GiB {error:>+7.1f}%   "
              f"{memory.describe()}")
    print(f"tolerance asserted by tests/unit/test_memory.py: ±{TOLERANCE:.0%}; source: "
          f"{PUBLISHED_PEAKS[0].source}")


if __name__ == "__main__":
    main()
