"""Sequence-level distillation and synthetic augmentation: a teacher model writes data.

- :mod:`.teacher`: the client of the teacher's OpenAI-compatible chat API (bounded concurrency,
  retries honouring Retry-After, tokens counted, the API key scrubbed from every error);
- :mod:`.local_teacher`: a teacher model loaded in the trainer (`teacher.uri`);
- :mod:`.cache`: its answers on the artifact volume, keyed by the teacher's settings and the
  prompt, so a retried pod never pays for the same prompt twice;
- :mod:`.generate`: the dataset's prompts answered by the teacher (`objective: distill`) and
  new examples in the style of each seed (`dataset.augment`), as raw rows that the data stage
  validates, dedups and scans like the user's own.

docs/distillation.md is the user's guide.
"""

from kubetune_trainer.distill.cache import AnswerCache, cache_root
from kubetune_trainer.distill.generate import augment_rows, distill_rows
from kubetune_trainer.distill.teacher import (
    Teacher,
    TeacherAnswer,
    TeacherClient,
    TeacherUnavailableError,
    make_teacher,
)

__all__ = [
    "AnswerCache",
    "Teacher",
    "TeacherAnswer",
    "TeacherClient",
    "TeacherUnavailableError",
    "augment_rows",
    "cache_root",
    "distill_rows",
    "make_teacher",
]
