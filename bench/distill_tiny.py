"""Distillation on the demo task with a stronger local teacher: figures, no asserts.

    .venv/bin/python bench/distill_tiny.py [--teacher-steps 120] [--student-steps 60]

1. The teacher: builtin://tiny-llama fine-tuned with LoRA on examples/data/support-chat.jsonl
   (the demo's settings), merged to 16-bit (`export/merged`).
2. The student: a fresh builtin://tiny-llama with `objective: distill` and `teacher.uri`
   pointing at the teacher's merged folder: the teacher answers every ticket of the same file
   (its answers replace the dataset's for training; the test split keeps the dataset's labels),
   the student trains on them with fewer steps.
3. Prints exact match of base, student and teacher on the same 24 held-out tickets, seconds per
   answer of each (CPU, transformers generation), the student's q4_k_m GGUF size next to the
   teacher's weights, and the teacher's requests and tokens.

Teacher and student share the split (same records, same seed), so the teacher never trained on
a test ticket. Both run on CPU: about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.pipeline import run_pipeline

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "support-chat.jsonl"


def _spec(steps: int, **extra: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama"},
            "method": "lora",
            "dataset": {
                "source": {"uri": f"file://{DATA}"},
                "format": "chat",
                "split": {"validation": 0.1, "test": 0.1, "seed": 42},
            },
            "dataPolicy": {"dedup": "exact"},
            "training": {
                "maxSteps": steps,
                "learningRate": 3e-3,
                "batchSize": 8,
                "gradientAccumulationSteps": 1,
                "maxLength": 128,
                "evalSteps": 30,
                "gradientCheckpointing": False,
            },
            "evaluation": {
                "metrics": ["exact_match", "rouge_l"],
                "maxNewTokens": 8,
                "gate": {"minExactMatch": 0.0, "minQuantizedAgreement": 0.0},
            },
            "export": {"gguf": ["q4_k_m"]},
            **extra,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=120)
    parser.add_argument("--student-steps", type=int, default=60)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="distill-bench-"))

    began = time.monotonic()
    teacher = run_pipeline(_spec(args.teacher_steps), root / "teacher")
    print(f"teacher trained in {time.monotonic() - began:.0f}s: {teacher.phase} {teacher.reason}")
    merged = root / "teacher" / "export" / "merged"
    if teacher.phase != "Succeeded" or not (merged / "config.json").is_file():
        raise SystemExit(f"no teacher: {teacher.message}")

    began = time.monotonic()
    student = run_pipeline(
        _spec(
            args.student_steps,
            objective="distill",
            teacher={"uri": f"file://{merged}", "maxTokens": 8, "concurrency": 8},
        ),
        root / "student",
    )
    print(f"student distilled in {time.monotonic() - began:.0f}s: {student.phase} {student.reason}")
    ev, data = student.evaluation, student.data
    if ev is None or ev.teacher is None or data is None or data.teacher is None:
        raise SystemExit(f"no comparison: {student.message}")
    t = ev.teacher
    base = ev.base.exact_match if ev.base else None
    print(f"held-out tickets           {ev.examples}")
    print(f"exact match  base          {base}")
    print(f"             student       {ev.fine_tuned.exact_match}")
    print(f"             teacher       {t.scores.exact_match}")
    print(f"s/answer     student       {t.student_seconds_per_answer}")
    print(f"             teacher       {t.seconds_per_answer}")
    print(f"size         student GGUF  {t.student_size_bytes} bytes (q4_k_m)")
    print(f"             teacher       {t.teacher_size_bytes} bytes ({t.teacher_size}, 16-bit)")
    print(f"teacher data {json.dumps(data.teacher.to_wire())}")
    print(f"workdirs     {root}")


if __name__ == "__main__":
    main()
