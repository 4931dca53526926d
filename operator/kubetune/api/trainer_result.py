"""What the trainer reports back: live progress and the final result (the termination message).

The trainer -> operator half of the contract (DESIGN.md): the trainer writes a
:class:`TrainerResult` to its workdir and, cut to the 4 KiB budget, to the pod's termination
message; the operator reads it into ``FineTuneJob.status``. :class:`Progress` is what the
operator scrapes from the trainer's metrics endpoint while it runs.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field

from kubetune.api.common import ApiModel, Artifact, LongText, Ratio, ShortText
from kubetune.api.constants import TERMINATION_MESSAGE_MAX_BYTES


class Progress(ApiModel):
    """Live training progress, scraped from the trainer's metrics endpoint."""

    step: int = 0
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps planned."""
    percent: Annotated[int, Field(ge=0, le=100)] = 0
    """step / totalSteps in percent."""
    epoch: float | None = None
    """Epochs done (fractional)."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest validation loss."""
    learning_rate: float | None = None
    """Current learning rate."""
    tokens_per_second: float | None = None
    """Training throughput."""
    eta_seconds: int | None = None
    """Estimated seconds until training ends."""


class TrainingSummary(ApiModel):
    """How training went, reported by the trainer when it ends."""

    steps: int = 0
    """Optimizer steps done in total."""
    resumed_from_step: int | None = None
    """Checkpoint step the last attempt resumed from (absent: started from scratch)."""
    final_train_loss: float | None = None
    """Training loss at the end."""
    best_eval_loss: float | None = None
    """Lowest validation loss; its checkpoint is the one exported."""
    stopped_early: bool = False
    """Early stopping ended training before the planned steps."""
    tokens_per_second: float | None = None
    """Training throughput of the last attempt."""
    seconds: float | None = None
    """Wall time of the last attempt's training."""
    trained_tokens: int | None = None
    """Tokens the provider trained on (backend openai; what it bills)."""


class DataReportSummary(ApiModel):
    """Counts from the data preparation stage (the full report is an artifact)."""

    format: ShortText = ""
    """Detected or given record format."""
    total: int = 0
    """Records read."""
    invalid: int = 0
    """Records rejected by validation (file:line in the report)."""
    duplicates_removed: int = 0
    """Exact and near duplicates removed."""
    flagged: int = 0
    """Records caught by the poisoning / secret / PII scans."""
    dropped: int = 0
    """Records removed by the data policy."""
    train: int = 0
    """Training examples (after mixing)."""
    validation: int = 0
    """Validation examples."""
    test: int = 0
    """Test examples."""
    general_mixed: int = 0
    """General examples mixed into training."""
    truncated: int = 0
    """Examples longer than training.maxLength (they are truncated)."""
    leakage: int = 0
    """Examples appearing in more than one split (removed from validation/test)."""
    class_balance: ClassBalance | None = None
    """Label distribution, when the answers are labels (absent otherwise)."""
    synthetic: int = 0
    """Examples of the final splits written by the teacher (`dataset.augment`), flagged
    `synthetic: true` in the data report and the split files."""
    teacher: TeacherUsage | None = None
    """What the teacher was asked (objective distill, dataset.augment)."""


class TeacherUsage(ApiModel):
    """The teacher's requests, answers and tokens for this job (the cache included)."""

    model: ShortText = ""
    """The teacher model."""
    answered: int = 0
    """Prompts the teacher answered (from the cache or a request)."""
    cached: int = 0
    """Answers taken from the cache on the artifact volume (no request sent)."""
    requests: int = 0
    """Requests sent in this run, retries included."""
    failed: int = 0
    """Prompts left without an answer after the retries (their records are invalid)."""
    rejected: int = 0
    """Records written with the teacher's answers that validation rejected (empty answer, …)."""
    prompt_tokens: int = 0
    """Prompt tokens of the answers used, as the teacher reported them (a cached answer
    counts what it cost when it was asked): the teacher data's cost, whichever pod paid it."""
    completion_tokens: int = 0
    """Completion tokens of the answers used, counted like promptTokens."""


class ClassBalance(ApiModel):
    """How the labels are spread when the answers are labels (at most 20 distinct answers of
    at most 64 characters, at least two records per label on average); the full distribution,
    per split too, is in the data report."""

    classes: int = 0
    """Distinct labels."""
    majority: ShortText = ""
    """The most common label."""
    majority_count: int = 0
    """Records with the most common label."""
    minority: ShortText = ""
    """The rarest label."""
    minority_count: int = 0
    """Records with the rarest label."""
    ratio: float = 1.0
    """majorityCount / minorityCount."""
    max_ratio: float = 10.0
    """The bound it is held to (`dataPolicy.maxClassImbalance`)."""
    imbalanced: bool = False
    """ratio > maxRatio: the data report warns (training still runs)."""


class ModelScores(ApiModel):
    """Scores of one model on the test split."""

    exact_match: float | None = None
    """Share of answers equal to the reference (normalised)."""
    rouge_l: float | None = None
    """Mean ROUGE-L F1."""
    bleu: float | None = None
    """Corpus BLEU (0–100)."""
    perplexity: float | None = None
    """exp(mean token loss) on the test answers."""
    judge_score: float | None = None
    """Mean judge score (1–5)."""
    general_score: float | None = None
    """Score on the general (forgetting) set."""


class EvaluationSummary(ApiModel):
    """Base vs fine-tuned on the held-out test split."""

    examples: int = 0
    """Test examples evaluated."""
    fine_tuned: ModelScores = Field(default_factory=ModelScores)
    """Scores of the fine-tuned model."""
    base: ModelScores | None = None
    """Scores of the base model (when compareWithBase)."""
    win_rate: Ratio | None = None
    """Share of examples where the fine-tuned answer scored higher than the base's."""
    few_shot: ModelScores | None = None
    """Scores of the few-shot baseline: the base model with training examples before each test
    prompt (`evaluation.baselines: [fewShot]`). `base` is the zero-shot baseline."""
    few_shot_examples: int | None = None
    """Training examples placed before each test prompt for `fewShot` (fewer than
    `evaluation.fewShotExamples` only when the training split holds fewer)."""
    few_shot_win_rate: Ratio | None = None
    """Share of examples where the fine-tuned answer scored higher than the few-shot one's."""
    forgetting_drop: float | None = None
    """Relative drop of the general-set score (positive = worse after fine-tuning)."""
    judge_tokens: int | None = None
    """Tokens the judge used (prompt + completion)."""
    teacher: TeacherComparison | None = None
    """The teacher scored on the same test split (objective distill)."""


class TeacherComparison(ApiModel):
    """Teacher vs student on the held-out split: quality kept, latency and size saved."""

    model: ShortText = ""
    """The teacher model."""
    scores: ModelScores = Field(default_factory=ModelScores)
    """The teacher's answers scored with the same metrics (and judge) as the student's."""
    seconds_per_answer: float | None = None
    """Mean wall time of one teacher answer (a request to its endpoint)."""
    student_seconds_per_answer: float | None = None
    """Mean wall time of one answer of the fine-tuned student, in the evaluation."""
    student_size_bytes: int | None = None
    """Size of the student's smallest exported GGUF file (else its weights)."""
    teacher_size: ShortText = "remote"
    """"remote" (a teacher behind an endpoint: its weights are not seen) or "local" (a
    `teacher.uri` model: teacherSizeBytes)."""
    teacher_size_bytes: int | None = None
    """Bytes of a local teacher's weights (safetensors / bin files)."""


class Diagnosis(ApiModel):
    """Verdict from the loss curves, with the suggested fix."""

    verdict: Literal["healthy", "overfitting", "underfitting", "unstable", "unknown"] = "unknown"
    """What the loss curves show."""
    message: ShortText = ""
    """Why."""
    suggestion: ShortText = ""
    """What to change."""


class GateResult(ApiModel):
    """Quality gate verdict."""

    passed: bool
    """Whether the fine-tuned model met every threshold."""
    reason: ShortText = ""
    """Which threshold decided it, with the measured value."""
    judge_score: float | None = None
    """Mean judge score, when a judge ran (shown as a printer column)."""


# What a ModelDeployment resolves a version to: kept in the termination message longest.
SERVING_ARTIFACT_KINDS = ("gguf", "modelfile", "drift-reference")


class TrainerResult(ApiModel):
    """What a finished trainer pod reports: written in full to `result.json` in the artifacts
    and, shortened to at most 4 KiB, to the container's termination message."""

    phase: Literal["Succeeded", "Failed"]
    """Outcome of the pipeline."""
    reason: ShortText = ""
    """CamelCase reason on failure (e.g. DataPolicyFailed)."""
    message: LongText = ""
    """Actionable message on failure."""
    stage: Literal["data", "train", "evaluate", "export", "done"] = "done"
    """Last stage reached."""
    data: DataReportSummary | None = None
    """Data preparation counts."""
    training: TrainingSummary | None = None
    """How training went."""
    evaluation: EvaluationSummary | None = None
    """Evaluation scores."""
    diagnosis: Diagnosis | None = None
    """Loss-curve diagnosis."""
    gate: GateResult | None = None
    """Quality gate."""
    artifacts: list[Artifact] = Field(default_factory=list)
    """Artifacts with sha256 (in the termination message the GGUFs and Modelfiles are kept
    longest; the others go first when it is too long)."""
    manifest_uri: Annotated[str, Field(max_length=2048)] | None = None
    """Where the full sha256 manifest is."""

    def to_termination_message(self, limit: int = TERMINATION_MESSAGE_MAX_BYTES) -> str:
        """Compact JSON of at most `limit` bytes. What a ModelDeployment needs to serve the job
        (the GGUF and Modelfile artifacts with their sha256) goes last: first the other
        artifacts, then the message is shortened, then evaluation and diagnosis go, and only
        then the serving artifacts (the manifest in the artifact store keeps everything)."""
        data = self.to_wire()

        def fits() -> str | None:
            text = json.dumps(data, separators=(",", ":"))
            return text if len(text.encode()) <= limit else None

        if (text := fits()) is not None:
            return text
        serving = [a for a in data.get("artifacts", []) if a.get("kind") in SERVING_ARTIFACT_KINDS]
        data["artifacts"] = serving
        if (text := fits()) is not None:
            return text
        message = data.get("message", "")
        overflow = len(json.dumps(data, separators=(",", ":")).encode()) - limit + 16
        if message:
            data["message"] = message[: max(0, len(message) - overflow)] + "…"
        for key in ("evaluation", "diagnosis", "artifacts"):
            if (text := fits()) is not None:
                return text
            data.pop(key, None)
        return json.dumps(data, separators=(",", ":"))[:limit]

    @classmethod
    def from_termination_message(cls, text: str) -> TrainerResult:
        """Parse a termination message written by `to_termination_message`."""
        return cls.model_validate(json.loads(text))
