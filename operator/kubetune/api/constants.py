"""Names shared by the operator, the trainer, the CRDs and the docs.

Condition types and reasons are CamelCase constants, kept beside the types that use them.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "kubetune.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

FINETUNEJOB_KIND: Final = "FineTuneJob"
FINETUNEJOB_PLURAL: Final = "finetunejobs"
FINETUNEJOB_SHORT_NAMES: Final = ("ftj", "ftjob")

MODELDEPLOYMENT_KIND: Final = "ModelDeployment"
MODELDEPLOYMENT_PLURAL: Final = "modeldeployments"
MODELDEPLOYMENT_SHORT_NAMES: Final = ("mdep",)

CATEGORIES: Final = ("kubetune",)

DEFAULT_TRAINER_IMAGE: Final = "ghcr.io/kubetune/trainer:0.1.0"
DEFAULT_ARTIFACTS_PVC: Final = "kubetune-artifacts"
# The Ollama the serving tests run (hack/versions.env OLLAMA_VERSION, built from its Go module).
DEFAULT_OLLAMA_IMAGE: Final = "ollama/ollama:0.11.4"
DEFAULT_SERVING_IMAGE: Final = "ghcr.io/kubetune/operator:0.1.0"  # the serve-agent container

# Labels and annotations put on children.
LABEL_PREFIX: Final = "kubetune.dev"
LABEL_FINETUNEJOB: Final = f"{LABEL_PREFIX}/finetunejob"
LABEL_COMPONENT: Final = f"{LABEL_PREFIX}/component"
LABEL_MODELDEPLOYMENT: Final = f"{LABEL_PREFIX}/modeldeployment"
# On trainer pods writing to a ReadWriteOnce artifacts claim: the claim's name. Their required
# pod affinity on it puts every trainer sharing that claim on the one node it can attach to.
LABEL_ARTIFACTS_CLAIM: Final = f"{LABEL_PREFIX}/artifacts-claim"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
# The owning FineTuneJob's full name, on its children: the label value is shortened with a
# hash when the name is over 63 characters (label values allow no more).
ANNOTATION_FINETUNEJOB: Final = f"{LABEL_PREFIX}/finetunejob-name"

# Where the trainer pod finds the resolved spec and writes its results.
SPEC_MOUNT_DIR: Final = "/etc/kubetune"
SPEC_FILE_NAME: Final = "spec.json"
ARTIFACTS_MOUNT_DIR: Final = "/artifacts"
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES: Final = 4096
METRICS_PORT: Final = 9400

GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"


class Phase:
    """Values of `status.phase` of a FineTuneJob."""

    PENDING: Final = "Pending"
    RUNNING: Final = "Running"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"
    SUSPENDED: Final = "Suspended"

    ALL: Final = (PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED)
    FINAL: Final = (SUCCEEDED, FAILED)


class ConditionType:
    """Condition types of a FineTuneJob (Kubernetes conventions: positive polarity)."""

    ACCEPTED: Final = "Accepted"  # the spec was validated and the children were created
    SCHEDULED: Final = "Scheduled"  # the trainer pod has a node
    RUNNING: Final = "Running"
    SUSPENDED: Final = "Suspended"
    GATE_PASSED: Final = "GatePassed"
    COMPLETE: Final = "Complete"
    FAILED: Final = "Failed"
    # kstatus (sigs.k8s.io/cli-utils), what Flux, kpt and other GitOps tools read: Reconciling
    # while the job works towards its end, Ready once it succeeded, Stalled once it failed.
    READY: Final = "Ready"
    RECONCILING: Final = "Reconciling"
    STALLED: Final = "Stalled"


class Reason:
    """CamelCase reasons used in conditions, status.reason and Events."""

    CREATED: Final = "JobCreated"
    INVALID_SPEC: Final = "InvalidSpec"
    PENDING: Final = "Pending"
    UNSCHEDULABLE: Final = "Unschedulable"
    SCHEDULED: Final = "Scheduled"
    STARTED: Final = "Started"
    TRAINING: Final = "Training"
    SUSPENDED: Final = "Suspended"
    RESUMED: Final = "Resumed"
    SUCCEEDED: Final = "Succeeded"
    OOM_KILLED: Final = "OOMKilled"
    IMAGE_PULL: Final = "ImagePullFailed"
    DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
    BACKOFF_LIMIT: Final = "BackoffLimitExceeded"
    TRAINER_FAILED: Final = "TrainerFailed"
    DATA_POLICY: Final = "DataPolicyFailed"
    JOB_DELETED: Final = "JobDeleted"
    # The trainer Job was removed (ttlSecondsAfterFinished) before the operator read its result,
    # and result.json could not be read from the artifact volume; the message says where it is.
    RESULT_LOST: Final = "ResultLost"
    GATE_PASSED: Final = "GatePassed"
    GATE_FAILED: Final = "GateFailed"
    NO_GATE: Final = "NoGate"
    # Set by the operator before the trainer Job is created: a Secret (or key) the spec
    # references is missing; the message names the field, the Secret and the key.
    SECRET_NOT_FOUND: Final = "SecretNotFound"
    # The apiserver refused a child (the spec ConfigMap or the trainer Job): invalid, or
    # forbidden by RBAC, a quota or an admission policy; the message quotes it. Retried.
    CHILD_CREATE_FAILED: Final = "ChildCreateFailed"
    # The kubelet cannot create the trainer container: a Secret or ConfigMap (or a key of one)
    # its environment reads is missing. The kubelet's own reason.
    CONTAINER_CONFIG_ERROR: Final = "CreateContainerConfigError"
    # The kubelet cannot attach or mount a volume of the trainer pod (its FailedAttachVolume /
    # FailedMount events: a ReadWriteOnce claim attached to another node, a ConfigMap deleted
    # after the Job was created, a storage error); the message quotes the latest event.
    VOLUME_NOT_READY: Final = "VolumeNotReady"
    # Before the trainer Job is created: a ConfigMap (or key) or a PersistentVolumeClaim the
    # spec references does not exist; the message names the field and the object.
    CONFIGMAP_NOT_FOUND: Final = "ConfigMapNotFound"
    PVC_NOT_FOUND: Final = "PersistentVolumeClaimNotFound"
    # Before the trainer Job is created: the estimated training peak per GPU does not fit the
    # memory of resources.gpuProduct (kubetune.planning.preflight); the message names the
    # estimate, the GPU's memory and the settings that would fit.
    WONT_FIT: Final = "WontFit"
    # Reported by the trainer in its result.
    INVALID_DATA: Final = "InvalidData"
    DATA_UNAVAILABLE: Final = "DataUnavailable"
    LICENSE_NOT_ACCEPTED: Final = "LicenseNotAccepted"
    MODEL_UNAVAILABLE: Final = "ModelUnavailable"
    OUT_OF_MEMORY: Final = "OutOfMemory"
    TRAINING_FAILED: Final = "TrainingFailed"
    EVALUATION_FAILED: Final = "EvaluationFailed"
    EXPORT_FAILED: Final = "ExportFailed"
    # The judge endpoint did not answer, or refused the key, when the trainer started
    # (kubetune_trainer.preflight); not permanent: the endpoint may come back.
    JUDGE_UNREACHABLE: Final = "JudgeUnreachable"
    # A quantized GGUF file agrees with the merged model on fewer tokens than
    # evaluation.gate.minQuantizedAgreement (kubetune_trainer.evaluation.gate.quantization_verdicts).
    QUANTIZATION_DISAGREES: Final = "QuantizationDisagrees"
    # The base model's chat template cannot become an Ollama TEMPLATE (export.chat_format).
    UNSUPPORTED_CHAT_TEMPLATE: Final = "UnsupportedChatTemplate"
    # An exported GGUF does not reproduce the model it was made from (export.verify).
    EXPORT_VERIFICATION_FAILED: Final = "ExportVerificationFailed"
    # The base model's architecture is not a supported family (kubetune.api.families),
    # found from its config.json when the trainer starts, before any weight is loaded.
    UNSUPPORTED_MODEL: Final = "UnsupportedModel"
    # backend openai (kubetune_trainer.provider): the provider refused the API key or its
    # permissions, the account is out of quota, the base model cannot be fine-tuned, the request
    # was rejected, or the provider's job failed (the message carries its error.code) or was
    # cancelled: all permanent. ProviderUnavailable (5xx, timeouts, rate limits after the
    # client's retries) may be retried.
    PROVIDER_AUTH_FAILED: Final = "ProviderAuthFailed"
    PROVIDER_QUOTA_EXCEEDED: Final = "ProviderQuotaExceeded"
    PROVIDER_MODEL_UNSUPPORTED: Final = "ProviderModelUnsupported"
    PROVIDER_REQUEST_REJECTED: Final = "ProviderRequestRejected"
    PROVIDER_JOB_FAILED: Final = "ProviderJobFailed"
    PROVIDER_JOB_CANCELLED: Final = "ProviderJobCancelled"
    PROVIDER_UNAVAILABLE: Final = "ProviderUnavailable"

    # Failures a retry of the same spec cannot fix: the trainer exits with
    # PERMANENT_FAILURE_EXIT_CODE and the Job's podFailurePolicy fails the Job at once.
    # Out-of-memory is one: the same settings on the same GPU need the same memory. So is a
    # quantized GGUF below minQuantizedAgreement: a retry quantizes the same trained weights
    # the same way.
    PERMANENT: Final = (
        INVALID_SPEC,
        DATA_POLICY,
        INVALID_DATA,
        LICENSE_NOT_ACCEPTED,
        OUT_OF_MEMORY,
        UNSUPPORTED_CHAT_TEMPLATE,
        EXPORT_VERIFICATION_FAILED,
        UNSUPPORTED_MODEL,
        QUANTIZATION_DISAGREES,
        PROVIDER_AUTH_FAILED,
        PROVIDER_QUOTA_EXCEEDED,
        PROVIDER_MODEL_UNSUPPORTED,
        PROVIDER_REQUEST_REJECTED,
        PROVIDER_JOB_FAILED,
        PROVIDER_JOB_CANCELLED,
    )


# Exit code of a trainer that failed permanently (see Reason.PERMANENT).
PERMANENT_FAILURE_EXIT_CODE: Final = 3

# Where the operator mounts what a spec references, and how the trainer finds it.
PVC_MOUNT_ROOT: Final = "/mnt/pvc"  # pvc://<claim>/<path> -> /mnt/pvc/<claim>/<path>
CONFIGMAP_MOUNT_ROOT: Final = "/mnt/configmap"  # configMap {name, key} -> /mnt/configmap/<name>/<key>

# Environment of the trainer container.
ENV_JUDGE_API_KEY: Final = "KUBETUNE_JUDGE_API_KEY"
ENV_HF_TOKEN: Final = "HF_TOKEN"
ENV_PROVIDER_API_KEY: Final = "KUBETUNE_PROVIDER_API_KEY"  # backend openai: provider.apiKeySecretRef
ENV_TEACHER_API_KEY: Final = "KUBETUNE_TEACHER_API_KEY"  # teacher.apiKeySecretRef (distill, augment)
ENV_ARTIFACTS_URI: Final = "KUBETUNE_ARTIFACTS_URI"  # URI of the workdir, e.g. pvc://claim/ns/job
ENV_METRICS_PORT: Final = "KUBETUNE_METRICS_PORT"
ENV_TERMINATION_LOG: Final = "KUBETUNE_TERMINATION_LOG"
ENV_PVC_ROOT: Final = "KUBETUNE_PVC_ROOT"  # override PVC_MOUNT_ROOT (local runs)
ENV_CONFIGMAP_ROOT: Final = "KUBETUNE_CONFIGMAP_ROOT"
ENV_LLAMA_CPP_DIR: Final = "KUBETUNE_LLAMA_CPP_DIR"
