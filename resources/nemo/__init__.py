"""The `nemo` backend: typed clients of the NVIDIA NeMo microservices (Data Store, Entity
Store, Customizer, Evaluator, Deployment Management, NIM proxy), the `NemoServices`
resource that configures them, and the `NemoBackend` facade the assets call.

The clients (``datastore``, ``entity_store``, ``customizer``, ``evaluator``,
``deployment``, ``nim``) are plain classes with no Dagster in them; ``transport`` holds
what they share (retries, polling, parsing, errors).
"""

from resources.nemo.backend import (
    EVAL_FILE,
    TRAINING_FILE,
    VALIDATION_FILE,
    CustomizationResult,
    EvaluationScores,
    NemoBackend,
    split_files,
)
from resources.nemo.deployment import nim_deployment
from resources.nemo.evaluator import JudgeEndpoint
from resources.nemo.services import NemoServices
from resources.nemo.transport import (
    NemoError,
    NemoHTTPError,
    NemoJobFailed,
    NemoSchemaError,
    NemoTimeoutError,
    Progress,
    RetryPolicy,
)

__all__ = [
    "EVAL_FILE",
    "TRAINING_FILE",
    "VALIDATION_FILE",
    "CustomizationResult",
    "EvaluationScores",
    "JudgeEndpoint",
    "NemoBackend",
    "NemoError",
    "NemoHTTPError",
    "NemoJobFailed",
    "NemoSchemaError",
    "NemoServices",
    "NemoTimeoutError",
    "Progress",
    "RetryPolicy",
    "nim_deployment",
    "split_files",
]
