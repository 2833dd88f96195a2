"""NeMo Customizer client (on ``nemo_base_url``): LoRA fine-tuning jobs.

- ``GET /v1/customization/targets?page=&page_size=``: the targets the cluster can
  fine-tune, ``{namespace, name: "llama-3.2-1b-instruct@2.0", base_model, enabled}``; a
  config names one as ``{namespace}/{name}`` (with its version).
- ``POST /v1/customization/configs`` (409 "exists" is fine): the training config for a
  target, its GPUs and sequence length.
- ``POST /v1/customization/jobs`` -> ``{id, output_model, ...}``.
- ``GET /v1/customization/jobs?page=&page_size=&sort=-created_at``: find a job by its
  name (how a creation whose answer was lost, or a re-run step, finds its job).
- ``GET /v1/customization/jobs/{id}`` (the job) and ``.../status`` (``status``,
  ``percentage_done``, ``epochs_completed``, ``steps_completed``, ``status_logs``).
- ``POST /v1/customization/jobs/{id}/cancel`` (the documented path; the reference
  blueprint calls ``/v1/customizations/{id}/cancel``, which the docs do not list).

A failed job raises `NemoJobFailed` carrying ``status_logs[].detail`` (the last one that
has text), as the service reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import Field

from resources.nemo.transport import (
    ProgressCallback,
    Recovered,
    ServiceClient,
    Wire,
    first_text,
    says_exists,
    status_is,
    wait_for_job,
)

ACTIVE_STATES = frozenset({"created", "pending", "running", "completed"})


# ------------------------------------------------------------------------------ requests


class TrainingOption(Wire):
    training_type: Literal["sft"] | str = "sft"
    finetuning_type: Literal["lora"] | str = "lora"
    num_gpus: int = 1
    num_nodes: int = 1
    tensor_parallel_size: int = 1
    data_parallel_size: int | None = None
    use_sequence_parallel: bool = False
    micro_batch_size: int = 1


class CustomizationConfigRequest(Wire):
    name: str
    namespace: str
    target: str = Field(description="customization target, e.g. meta/llama-3.2-1b-instruct@2.0")
    training_options: list[TrainingOption] = Field(default_factory=lambda: [TrainingOption()])
    training_precision: str = "bf16-mixed"
    max_seq_length: int = 4096


class LoraParameters(Wire):
    adapter_dim: int
    adapter_dropout: float


class Hyperparameters(Wire):
    training_type: str = "sft"
    finetuning_type: str = "lora"
    epochs: int
    batch_size: int
    learning_rate: float
    lora: LoraParameters


class DatasetRef(Wire):
    name: str
    namespace: str


class CustomizationJobRequest(Wire):
    name: str
    output_model: str = Field(description="'{ns}/{model}'")
    config: str = Field(description="'{ns}/{config name}'")
    dataset: DatasetRef
    hyperparameters: Hyperparameters


# ----------------------------------------------------------------------------- responses


class CustomizationJob(Wire):
    id: str
    output_model: str
    name: str | None = None
    status: str | None = None
    created_at: str | None = None


class StatusLog(Wire):
    message: str | None = None
    detail: str | None = None
    updated_at: str | None = None


class CustomizationStatus(Wire):
    status: str
    percentage_done: float | None = None
    epochs_completed: int | None = None
    steps_completed: int | None = None
    status_logs: list[StatusLog] = Field(default_factory=list)
    metrics: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        return self.status.strip().lower()

    def failure_detail(self) -> str:
        """The service's explanation of a failure: the last ``status_logs[].detail``."""
        return (
            first_text(log.detail for log in reversed(self.status_logs))
            or first_text(log.message for log in reversed(self.status_logs))
            or "no detail given"
        )

    def loss_curve(self, key: str = "train_loss") -> list[tuple[int, float]]:
        """(step, value) points of a loss the service reports under ``metrics``, if any."""
        metrics = (self.metrics or {}).get("metrics", self.metrics or {})
        points = metrics.get(key) if isinstance(metrics, dict) else None
        curve = []
        for point in points or []:
            if isinstance(point, dict) and "value" in point:
                try:
                    curve.append((int(point.get("step", len(curve))), float(point["value"])))
                except (TypeError, ValueError):
                    continue
        return curve


class Pagination(Wire):
    page: int | None = None
    total_pages: int | None = None


class CustomizationTarget(Wire):
    name: str
    namespace: str
    base_model: str | None = None
    enabled: bool = True
    status: str | None = None

    @property
    def ref(self) -> str:
        """How a config names it: ``meta/llama-3.2-1b-instruct@2.0``."""
        return f"{self.namespace}/{self.name}"


class CustomizationTargetList(Wire):
    data: list[CustomizationTarget] = Field(default_factory=list)
    pagination: Pagination | None = None


class CustomizationJobList(Wire):
    data: list[CustomizationJob] = Field(default_factory=list)
    pagination: Pagination | None = None


# -------------------------------------------------------------------------------- client


class CustomizerClient(ServiceClient):
    service = "Customizer"

    def ensure_config(self, config: CustomizationConfigRequest) -> str:
        """Create the config unless it exists; its reference ``{ns}/{name}``."""
        self.request("POST", "/v1/customization/configs", json=config.model_dump(exclude_none=True), accept=says_exists)
        return f"{config.namespace}/{config.name}"

    def create_job(self, job: CustomizationJobRequest) -> CustomizationJob:
        """Start a job. If the answer is lost after the request was sent, the job is
        looked up by its name before any retry, so one call creates at most one job
        (as long as names are unique per intended job)."""
        what = "POST /v1/customization/jobs"
        response = self.request(
            "POST",
            "/v1/customization/jobs",
            json=job.model_dump(exclude_none=True),
            recover=lambda: self.find_job(job.name),
        )
        if isinstance(response, Recovered):
            return response.value
        return self.parse(CustomizationJob, self.json_of(response, what), what)

    def get_job(self, job_id: str) -> CustomizationJob | None:
        path = f"/v1/customization/jobs/{job_id}"
        response = self.request("GET", path, accept=status_is(404))
        if response.status_code == 404:
            return None
        return self.parse(CustomizationJob, self.json_of(response, f"GET {path}"), f"GET {path}")

    def get_status(self, job_id: str) -> CustomizationStatus:
        path = f"/v1/customization/jobs/{job_id}/status"
        return self.parse(CustomizationStatus, self.request_json("GET", path), f"GET {path}")

    def list_jobs(self, *, page_size: int = 100, max_pages: int = 20) -> Iterator[CustomizationJob]:
        """Jobs, newest first (pages fetched lazily)."""
        yield from self._pages(
            "/v1/customization/jobs", CustomizationJobList, page_size=page_size, max_pages=max_pages, sort="-created_at"
        )

    def list_targets(self, *, page_size: int = 100, max_pages: int = 20) -> list[CustomizationTarget]:
        """Every customization target the cluster has (enabled or not)."""
        return list(
            self._pages("/v1/customization/targets", CustomizationTargetList, page_size=page_size, max_pages=max_pages)
        )

    def _pages(
        self,
        path: str,
        listing_type: type[CustomizationJobList] | type[CustomizationTargetList],
        *,
        page_size: int,
        max_pages: int,
        **params: str,
    ) -> Iterator[Any]:
        for page in range(1, max_pages + 1):
            payload = self.request_json("GET", path, params={"page": page, "page_size": page_size, **params})
            listing = self.parse(listing_type, payload, f"GET {path}")
            yield from listing.data
            total = listing.pagination.total_pages if listing.pagination else None
            if not listing.data or total is None or page >= total:
                return

    def find_job(
        self, name: str, *, usable: Callable[[str], bool] = lambda s: s in ACTIVE_STATES
    ) -> CustomizationJob | None:
        """The newest job called ``name`` whose state passes ``usable`` (by default:
        not failed or cancelled), else None."""
        for job in self.list_jobs():
            if job.name != name:
                continue
            state = (job.status or self.get_status(job.id).status).strip().lower()
            if usable(state):
                return job
        return None

    def cancel(self, job_id: str) -> bool:
        """Ask the service to stop the job; False when it was already over or unknown."""
        response = self.request("POST", f"/v1/customization/jobs/{job_id}/cancel", accept=status_is(404, 409, 422))
        return response.status_code < 400

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float,
        interval_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> CustomizationStatus:
        """Poll until completed; `NemoJobFailed` (with the remote detail) if it fails or
        is cancelled; `NemoTimeoutError` at the deadline (the job keeps running)."""

        def observe(status: CustomizationStatus) -> tuple[str, float | None, str | None]:
            parts = []
            if status.epochs_completed is not None:
                parts.append(f"epochs {status.epochs_completed}")
            if status.steps_completed is not None:
                parts.append(f"steps {status.steps_completed}")
            latest = status.status_logs[-1] if status.status_logs else None
            note = (latest.detail or latest.message) if latest is not None else None
            if note and note.strip().lower() != status.state:
                parts.append(note.strip()[:120])
            return status.state, status.percentage_done, ", ".join(parts) or None

        return wait_for_job(
            lambda: self.get_status(job_id),
            service=self.service,
            job_id=job_id,
            observe=observe,
            timeout_s=timeout_s,
            interval_s=interval_s,
            on_progress=on_progress,
        )
