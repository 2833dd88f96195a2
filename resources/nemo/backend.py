"""`NemoBackend`: what the flywheel's assets call when ``FLYWHEEL_BACKEND=nemo``.

- `upload_splits`: split files (`split_files`: in the formats Customizer and Evaluator
  read) -> a Data Store dataset repo registered in the Entity Store. The dataset name is content-addressed (workload key + hash of the files), so an
  unchanged split is a no-op and a changed one never overwrites files a running job reads.
- `customize`: a Customizer LoRA job on that dataset, polled to completion. The target
  (``namespace/name@version``) is checked against the cluster's targets first. Its name is a
  hash of everything that defines it (config, dataset, hyper-parameters, output model),
  so a retried or re-executed step finds and resumes the same job rather than starting a
  duplicate, even when the job id was never recorded; ``existing_job_id`` resumes a
  known job directly. ``on_job_id`` gets the id as soon as it exists. A failed remote
  job raises `NemoJobFailed` with the service's ``status_logs`` detail. Interrupted by
  KeyboardInterrupt or Dagster's run cancellation, the job is cancelled remotely; after
  an ordinary error (deadline, network) it keeps running for a retry to resume.
- `deployment`: ``with backend.deployment(model) as chat:`` deploys the NIM, waits until
  it (or ``served_model``, e.g. an adapter) is served and yields an
  `OpenAICompatibleBackend` on the NIM proxy; the deployment is deleted however the block
  ends.
- `evaluate`: an Evaluator job (the reference's metrics) on an uploaded eval file, for a
  model being served. The flywheel's eval assets instead replay prompts through
  `deployment` and score with ``flywheel_assets.core.metrics`` (per-record rows, latency,
  tokens: the same numbers as the local backend); `evaluate` is there to cross-check
  against NeMo's own scoring.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from resources.nemo.customizer import (
    CustomizationConfigRequest,
    CustomizationJobRequest,
    CustomizationTarget,
    DatasetRef,
    Hyperparameters,
    LoraParameters,
    TrainingOption,
)
from resources.nemo.datastore import DataStoreClient, check_repo_path
from resources.nemo.deployment import (
    DeploymentConfig,
    ModelDeploymentRequest,
    NimDeploymentConfig,
    deployment_name,
    nim_deployment,
)
from resources.nemo.evaluator import (
    JudgeEndpoint,
    chat_judge_config,
    model_target,
    tool_calling_config,
)
from resources.nemo.formats import customizer_jsonl, evaluator_jsonl
from resources.nemo.services import NemoServices
from resources.nemo.transport import JOB_FAILED_STATES, NemoError, Progress, ProgressCallback
from resources.openai_compatible import OpenAICompatibleBackend

if TYPE_CHECKING:
    from flywheel_assets.core.hyperparameters import LoraHyperparameters

TRAINING_FILE = "training/training.jsonl"
VALIDATION_FILE = "validation/validation.jsonl"
EVAL_FILE = "testing/testing.jsonl"

# LoraHyperparameters fields the Customizer job takes; the others are not sent
SENT_HYPERPARAMETERS = ("epochs", "batch_size", "learning_rate", "adapter_dim", "adapter_dropout", "max_seq_length")


def split_files(train: bytes, validation: bytes = b"", evaluation: bytes = b"") -> dict[str, bytes]:
    """The reference's repo layout for chat-format JSONL splits (empty splits left out):
    Customizer reads ``training/`` and ``validation/`` (in its own format), Evaluator one
    file of ``testing/`` (earlier tool calls with string arguments); see `formats`."""
    files = {
        TRAINING_FILE: customizer_jsonl(train),
        VALIDATION_FILE: customizer_jsonl(validation),
        EVAL_FILE: evaluator_jsonl(evaluation),
    }
    return {path: data for path, data in files.items() if data}


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-")


def _digest(value: Any, length: int = 12) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


class CustomizationResult(BaseModel):
    job_id: str
    output_model: str = Field(description="the adapter's model id, as the NIM proxy serves it")
    config: str
    job_name: str
    resumed: bool = Field(description="an existing job was resumed or reused instead of creating one")
    status: str
    hyperparameters: dict[str, Any] = Field(description="what was sent to the Customizer")
    ignored_hyperparameters: dict[str, Any] = Field(
        description="LoraHyperparameters set to non-default values that the Customizer job does not take"
    )
    epochs_completed: int | None = None
    steps_completed: int | None = None
    train_loss: list[tuple[int, float]] = Field(default_factory=list)
    val_loss: list[tuple[int, float]] = Field(default_factory=list)


class EvaluationScores(BaseModel):
    job_id: str
    resumed: bool
    scores: dict[str, float] = Field(
        description="function_name_accuracy, function_name_and_args_accuracy, similarity, correctness (those the config computes), in [0, 1]"
    )
    raw: dict[str, Any] = Field(description="the Evaluator's results document")


class NemoBackend(NemoServices):
    """The `nemo` backend of the flywheel; see the module docstring."""

    project: str = Field(default="flywheel", description="Entity Store project of registered datasets.")
    dataset_prefix: str = Field(default="flywheel", description="Prefix of dataset repo names.")
    # customization
    customization_num_gpus: int = 1
    customization_num_nodes: int = 1
    customization_tensor_parallel_size: int = 1
    customization_micro_batch_size: int = 1
    customization_training_precision: str = "bf16-mixed"
    customization_timeout_s: float = Field(default=8 * 3600, description="Deadline of one customization job.")
    # deployments
    nim_image_registry: str = Field(default="nvcr.io/nim", description="NIM images are {registry}/{model}.")
    nim_image_tag: str = "latest"
    nim_gpu: int = 1
    nim_pvc_size: str = "25Gi"
    nim_additional_envs: dict[str, str] = Field(default_factory=lambda: {"NIM_GUIDED_DECODING_BACKEND": "outlines"})
    deployment_timeout_s: float = Field(default=3600, description="Deadline for a deployment to be ready.")
    model_sync_timeout_s: float = Field(default=1800, description="Deadline for the NIM proxy to list a model.")
    # chat through the NIM proxy
    chat_max_concurrency: int = 8
    chat_max_tokens: int = 512
    chat_timeout_s: float = 120
    # evaluation
    evaluation_timeout_s: float = Field(default=6000, description="Deadline of one evaluation job.")
    evaluator_nim_url: str | None = Field(
        default=None,
        description=(
            "NIM proxy base URL as the Evaluator reaches it from inside the cluster (e.g. "
            "http://nemo-nim-proxy:8000). Unset: jobs name the model and the platform routes "
            "to it, as the reference does."
        ),
    )

    # ----------------------------------------------------------------------- datasets
    def dataset_name(self, workload_key: str, files: Mapping[str, bytes]) -> str:
        """``{prefix}-{workload}-{hash of the files}``: content-addressed, HF-safe."""
        digest = _digest(sorted((path, hashlib.sha256(data).hexdigest()) for path, data in files.items()), 10)
        return f"{_slug(self.dataset_prefix, 20) or 'flywheel'}-{_slug(workload_key, 48) or 'workload'}-{digest}"

    def upload_splits(self, workload_key: str, files: Mapping[str, bytes], *, description: str = "") -> str:
        """Upload ``files`` (path in repo -> bytes; see `split_files`) as one dataset,
        register it, and return its name. Repeatable: unchanged files are not re-sent."""
        if not files:
            raise ValueError(f"workload {workload_key}: no split files to upload")
        for path in files:
            check_repo_path(path)
        name = self.dataset_name(workload_key, files)
        with self.entity_store() as entities, self.datastore() as store:
            entities.create_namespace(self.namespace)
            store.create_namespace(self.namespace)
            store.create_repo(self.namespace, name)
            store.upload_files(self.namespace, name, files, message=f"flywheel splits of workload {workload_key}")
            entities.register_dataset(
                self.namespace,
                name,
                DataStoreClient.files_url(self.namespace, name),
                description=description or f"flywheel splits of workload {workload_key}",
                project=self.project,
            )
        return name

    # ------------------------------------------------------------------ customization
    @staticmethod
    def resolve_target(base_model: str, requested: str | None, targets: list[CustomizationTarget]) -> str:
        """The Customizer target (``namespace/name@version``) to fine-tune: ``requested``
        if the cluster has it enabled; else the one enabled target of ``base_model``.
        Anything else is an error naming the enabled targets."""
        enabled = sorted((t for t in targets if t.enabled), key=lambda t: t.ref)
        available = ", ".join(t.ref for t in enabled) or "none"
        if requested:
            if any(t.ref == requested for t in enabled):
                return requested
            state = "is disabled" if any(t.ref == requested for t in targets) else "does not exist"
            raise NemoError(
                f"Customizer: target {requested!r} {state}. Enabled targets: {available}. "
                "Set the candidate's customizer_target to one of them.",
                service="Customizer",
            )
        matches = [t for t in enabled if base_model in (t.base_model, t.ref.split("@")[0])]
        if len(matches) == 1:
            return matches[0].ref
        problem = (
            f"several targets fine-tune {base_model!r} ({', '.join(t.ref for t in matches)})"
            if matches
            else f"no enabled target fine-tunes {base_model!r}"
        )
        raise NemoError(
            f"Customizer: {problem}. Enabled targets: {available}. "
            "Set the candidate's customizer_target to one of them.",
            service="Customizer",
        )

    def customization_config(self, target: str, max_seq_length: int) -> CustomizationConfigRequest:
        options = TrainingOption(
            num_gpus=self.customization_num_gpus,
            num_nodes=self.customization_num_nodes,
            tensor_parallel_size=self.customization_tensor_parallel_size,
            micro_batch_size=self.customization_micro_batch_size,
        )
        spec = {
            "target": target,
            "options": options.model_dump(),
            "precision": self.customization_training_precision,
            "max_seq_length": max_seq_length,
        }
        model = re.sub(r"[^a-z0-9.]+", "-", target.split("/")[-1].split("@")[0].lower()).strip("-.")[:40]
        return CustomizationConfigRequest(
            name=f"{model or 'model'}@v1.0.0+dfw.{_digest(spec, 8)}",
            namespace=self.namespace,
            target=target,
            training_options=[options],
            training_precision=self.customization_training_precision,
            max_seq_length=max_seq_length,
        )

    def customize(
        self,
        candidate_base_model: str,
        dataset_name: str,
        hp: LoraHyperparameters,
        *,
        target: str | None = None,
        output_model_name: str | None = None,
        existing_job_id: str | None = None,
        on_job_id: Callable[[str], None] | None = None,
        on_progress: ProgressCallback | None = None,
        cancel_on_interrupt: bool = True,
    ) -> CustomizationResult:
        """LoRA-fine-tune ``candidate_base_model`` on the dataset and wait for it. The
        Customizer target is ``target`` (e.g. ``meta/llama-3.2-1b-instruct@2.0``) or the
        cluster's one enabled target of the base model (`resolve_target`); see the module
        docstring for resumption and cancellation."""
        hyper = Hyperparameters(
            epochs=hp.epochs,
            batch_size=hp.batch_size,
            learning_rate=hp.learning_rate,
            lora=LoraParameters(adapter_dim=hp.adapter_dim, adapter_dropout=hp.adapter_dropout),
        )
        defaults = type(hp)()
        ignored = {
            name: getattr(hp, name)
            for name in type(hp).model_fields
            if name not in SENT_HYPERPARAMETERS and getattr(hp, name) != getattr(defaults, name)
        }
        say = on_progress or (lambda progress: None)
        with self.customizer() as customizer:
            target = self.resolve_target(candidate_base_model, target, customizer.list_targets())
            config = self.customization_config(target, hp.max_seq_length)
            config_ref = customizer.ensure_config(config)
            identity = {
                "config": config_ref,
                "dataset": f"{self.namespace}/{dataset_name}",
                "hyperparameters": hyper.model_dump(),
                "output_model": output_model_name,
            }
            job_name = f"{_slug(dataset_name, 44) or 'dataset'}-{_digest(identity, 12)}"
            job, resumed = None, False
            if existing_job_id:
                job = customizer.get_job(existing_job_id)
                if job is None:
                    say(
                        Progress(
                            customizer.service, f"job {existing_job_id}", "not found", message="starting a new job"
                        )
                    )
                else:
                    state = customizer.get_status(job.id).state
                    if state in JOB_FAILED_STATES:
                        say(Progress(customizer.service, f"job {job.id}", state, message="starting a new job"))
                        job = None
                    else:
                        resumed = True
            if job is None:
                job = customizer.find_job(job_name)
                resumed = job is not None
            if job is None:
                job = customizer.create_job(
                    CustomizationJobRequest(
                        name=job_name,
                        output_model=f"{self.namespace}/{output_model_name or job_name}",
                        config=config_ref,
                        dataset=DatasetRef(name=dataset_name, namespace=self.namespace),
                        hyperparameters=hyper,
                    )
                )
            if on_job_id is not None:
                on_job_id(job.id)
            say(
                Progress(
                    customizer.service,
                    f"job {job.id}",
                    "resumed" if resumed else "submitted",
                    message=f"output model {job.output_model}",
                )
            )
            try:
                status = customizer.wait(
                    job.id,
                    timeout_s=self.customization_timeout_s,
                    interval_s=self.poll_interval_s,
                    on_progress=on_progress,
                )
            except BaseException as error:
                if cancel_on_interrupt and not isinstance(error, Exception):
                    try:
                        customizer.cancel(job.id)
                        error.add_note(f"cancelled customization job {job.id}")
                    except Exception as cleanup_error:
                        error.add_note(f"cleanup: could not cancel customization job {job.id}: {cleanup_error}")
                raise
        return CustomizationResult(
            job_id=job.id,
            output_model=job.output_model,
            config=config_ref,
            job_name=job_name,
            resumed=resumed,
            status=status.state,
            hyperparameters=hyper.model_dump(),
            ignored_hyperparameters=ignored,
            epochs_completed=status.epochs_completed,
            steps_completed=status.steps_completed,
            train_loss=status.loss_curve("train_loss"),
            val_loss=status.loss_curve("val_loss"),
        )

    # -------------------------------------------------------------------- deployments
    def deployment_request(self, model: str, name: str | None = None) -> ModelDeploymentRequest:
        return ModelDeploymentRequest(
            name=name or deployment_name(model),
            namespace=self.namespace,
            config=DeploymentConfig(
                model=model,
                nim_deployment=NimDeploymentConfig(
                    image_name=f"{self.nim_image_registry.rstrip('/')}/{model}",
                    image_tag=self.nim_image_tag,
                    pvc_size=self.nim_pvc_size,
                    gpu=self.nim_gpu,
                    additional_envs=dict(self.nim_additional_envs),
                ),
            ),
        )

    @contextmanager
    def deployment(
        self,
        model: str,
        *,
        served_model: str | None = None,
        name: str | None = None,
        on_progress: ProgressCallback | None = None,
        **chat_options: Any,
    ) -> Iterator[OpenAICompatibleBackend]:
        """Deploy the NIM of ``model`` and yield a chat backend for ``served_model``
        (default ``model``; pass `CustomizationResult.output_model` for the adapter). The
        deployment is named ``name`` (default: from the model id); two blocks using one
        name share it, and the first to end deletes it, so give concurrent users distinct
        names. ``chat_options`` go to `OpenAICompatibleBackend` (max_tokens, ...)."""
        request = self.deployment_request(model, name)
        options = {
            "max_concurrency": self.chat_max_concurrency,
            "max_tokens": self.chat_max_tokens,
            "timeout_s": self.chat_timeout_s,
            **chat_options,
        }
        with self.deployments() as deployments, self.nim() as nim:
            with nim_deployment(
                deployments,
                nim,
                request,
                served_model=served_model,
                ready_timeout_s=self.deployment_timeout_s,
                sync_timeout_s=self.model_sync_timeout_s,
                interval_s=self.poll_interval_s,
                on_progress=on_progress,
            ) as served:
                yield nim.chat_backend(served, **options)

    # --------------------------------------------------------------------- evaluation
    def evaluate(
        self,
        model: str,
        dataset_name: str,
        workload_type: Literal["tool_calling", "chat"],
        *,
        eval_file: str,
        judge: JudgeEndpoint | None = None,
        limit: int | None = None,
        existing_job_id: str | None = None,
        on_job_id: Callable[[str], None] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> EvaluationScores:
        """Score ``model`` (being served: call inside `deployment`) on ``eval_file`` of the
        dataset (e.g. `EVAL_FILE` of splits uploaded with an ``evaluation`` file: the
        flywheel's own uploads carry only training and validation) with an Evaluator job. Tool calling: the ``tool-calling`` metric (+ judge
        correctness when ``judge`` is given); chat: the LLM judge's similarity (needs
        ``judge``)."""
        files_url = DataStoreClient.files_url(self.namespace, dataset_name, check_repo_path(eval_file))
        if workload_type == "tool_calling":
            config = tool_calling_config(files_url, judge=judge, limit=limit)
        elif judge is None:
            raise ValueError(
                "a chat evaluation through the Evaluator needs a judge (JudgeEndpoint); "
                "or score locally through deployment() and flywheel_assets.core.metrics"
            )
        else:
            config = chat_judge_config(files_url, judge=judge, limit=limit)
        target = model_target(model, self.evaluator_nim_url)
        request_key = _digest({"config": config, "target": target}, 16)
        with self.evaluator() as evaluator:
            job = evaluator.find_job_by_id(existing_job_id) if existing_job_id else None
            resumed = job is not None and job.state not in JOB_FAILED_STATES
            if not resumed:
                job = evaluator.create_job(config, target, namespace=self.namespace, request_key=request_key)
            if on_job_id is not None:
                on_job_id(job.id)
            evaluator.wait(
                job.id, timeout_s=self.evaluation_timeout_s, interval_s=self.poll_interval_s, on_progress=on_progress
            )
            results = evaluator.results(job.id)
        return EvaluationScores(
            job_id=job.id, resumed=resumed, scores=results.flywheel_scores(), raw=results.model_dump()
        )
