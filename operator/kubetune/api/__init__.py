"""kubetune's API: pydantic models of FineTuneJob and ModelDeployment (the single source of
truth for the CRDs, the operator and the trainer), constants, and the CRD generator."""

from kubetune.api.common import Artifact, Condition, SecretKeyRef
from kubetune.api.constants import API_VERSION, GROUP, VERSION, ConditionType, Phase, Reason
from kubetune.api.finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from kubetune.api.trainer_result import (
    DataReportSummary,
    Diagnosis,
    EvaluationSummary,
    GateResult,
    ModelScores,
    Progress,
    TrainerResult,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Artifact",
    "Condition",
    "ConditionType",
    "DataReportSummary",
    "Diagnosis",
    "EvaluationSummary",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "GateResult",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelScores",
    "Phase",
    "Progress",
    "Reason",
    "SecretKeyRef",
    "TrainerResult",
]
