"""NeMo Evaluator client (on ``nemo_base_url``): evaluation jobs with a ``custom`` config.

- ``POST /v1/evaluation/jobs`` ``{namespace, config, target, custom_fields}`` -> ``{id}``;
  the target names the model (`model_target`), or its NIM at the address the Evaluator
  reaches inside the cluster
- ``GET /v1/evaluation/jobs?page=&page_size=`` (find a job whose creation answer was lost,
  by the ``custom_fields.flywheel_request`` key we give every job)
- ``GET /v1/evaluation/jobs/{id}`` -> ``{status, status_details: {progress, message}}``
- ``GET /v1/evaluation/jobs/{id}/results`` -> ``{tasks: {T: {metrics: {M: {scores: {S: {value}}}}}}}``
- ``DELETE /v1/evaluation/jobs/{id}``

The configs replay our chat-format split files (`flywheel_assets.core.splitting.to_jsonl`:
``messages`` ending with the expected assistant turn, plus ``tools``; earlier tool calls
with JSON-string arguments, see `resources.nemo.formats.evaluator_jsonl`), so the Jinja
templates read ``item.messages[:-1]`` and ``item.messages[-1]``, not the reference's
``item.request`` / ``item.response`` (its files are raw traces). Metrics are the
reference's: ``tool-calling`` (scores ``function_name_accuracy``,
``function_name_and_args_accuracy``) and ``llm-judge`` (``similarity`` 0-10, reported here
scaled to [0, 1]; for tool calling an optional judge ``rating`` 0/1 as ``correctness``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from resources.nemo.transport import (
    JOB_FAILED_STATES,
    NemoSchemaError,
    ProgressCallback,
    Recovered,
    ServiceClient,
    Wire,
    first_text,
    status_is,
    wait_for_job,
)

TOOL_TASK = "custom-tool-calling"
CHAT_TASK = "llm-as-judge"

JUDGE_SYSTEM_PROMPT = """You are an expert evaluator.
Read the task, reference answer, and candidate answer.
Score similarity on a scale of 1 to 10 using this rubric:

10 - Nearly identical meaning; wording differences only.
8-9 - Same key info, maybe one minor detail off.
6-7 - Rough overlap but missing or altering several points.
4-5 - Some relation but wrong on most core content.
2-3 - Largely irrelevant or incorrect.
1 - Completely irrelevant or empty.

Return ONLY the integer (1-10). No other text."""

# the prompt asks for the integer alone: a reply that is anything else (reasoning, "8/10",
# a range) is no score, rather than whichever number it happens to start with
JUDGE_SCORE_PATTERN = r"^\s*(10|[1-9])\s*$"

JUDGE_USER_PROMPT = """TASK / QUESTION
<<<
{{ item.messages[:-1] | tojson }}
>>>

REFERENCE ANSWER
<<<
{{ item.messages[-1].content }}
>>>

CANDIDATE ANSWER
<<<
{{ sample.output_text }}
>>>"""

TOOL_JUDGE_SYSTEM_PROMPT = """You are an expert evaluator. Compare a predicted tool call with the ground truth.
Return RATING: 1 only if the function name matches exactly and every ground-truth argument
is present and correct (identifiers exactly, free text semantically); otherwise RATING: 0.

Return your result in the following format:
RATING: 0 or 1
EXPLANATION: one sentence."""

TOOL_JUDGE_USER_PROMPT = """*Ground Truth*: {{ item.messages[-1].tool_calls | tojson }}
*Prediction*: {{ sample.response.choices[0].message.tool_calls | tojson }}"""


# ------------------------------------------------------------------------------ configs


class JudgeEndpoint(Wire):
    """An OpenAI-compatible model the Evaluator calls as the LLM judge."""

    url: str = Field(description="chat-completions URL, e.g. https://nim/v1/chat/completions")
    model_id: str
    api_key: str | None = None

    def as_model(self) -> dict[str, Any]:
        return {"api_endpoint": self.model_dump(exclude_none=True)}


def _dataset(files_url: str, limit: int | None) -> dict[str, Any]:
    return {"files_url": files_url, **({"limit": limit} if limit is not None else {})}


def _judge_metric(judge: JudgeEndpoint, system: str, user: str, score: str, pattern: str) -> dict[str, Any]:
    """An ``llm-judge`` metric: the judge model, its prompt, and the regex reading one integer score."""
    return {
        "type": "llm-judge",
        "params": {
            "model": judge.as_model(),
            "template": {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]},
            "scores": {score: {"type": "int", "parser": {"type": "regex", "pattern": pattern}}},
        },
    }


def _replay_config(
    task: str, files_url: str, limit: int | None, template: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, Any]:
    """A custom evaluation: one chat-completion task replaying the dataset's records."""
    return {
        "type": "custom",
        "tasks": {
            task: {
                "type": "chat-completion",
                "dataset": _dataset(files_url, limit),
                "params": {"template": template},
                "metrics": metrics,
            }
        },
    }


def tool_calling_config(
    files_url: str, *, judge: JudgeEndpoint | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Replay each record with its tools (``tool_choice: required``) and score the calls."""
    metrics: dict[str, Any] = {
        "tool-calling-accuracy": {
            "type": "tool-calling",
            "params": {"tool_calls_ground_truth": "{{ item.messages[-1].tool_calls | tojson }}"},
        }
    }
    if judge is not None:
        metrics["correctness"] = _judge_metric(
            judge, TOOL_JUDGE_SYSTEM_PROMPT, TOOL_JUDGE_USER_PROMPT, "rating", r"RATING:\s*(\d+)"
        )
    template = {
        "messages": "{{ item.messages[:-1] | tojson }}",
        "tools": "{{ item.tools | tojson }}",
        "tool_choice": "required",
    }
    return _replay_config(TOOL_TASK, files_url, limit, template, metrics)


def chat_judge_config(files_url: str, *, judge: JudgeEndpoint, limit: int | None = None) -> dict[str, Any]:
    """Replay each record and have the judge rate similarity to the expected answer."""
    metric = _judge_metric(judge, JUDGE_SYSTEM_PROMPT, JUDGE_USER_PROMPT, "similarity", JUDGE_SCORE_PATTERN)
    template = {"messages": "{{ item.messages[:-1] | tojson }}"}
    return _replay_config(CHAT_TASK, files_url, limit, template, {"llm-judge": metric})


def model_target(model_id: str, nim_url: str | None = None) -> dict[str, Any]:
    """The evaluated model. With ``nim_url`` (the NIM proxy as the Evaluator reaches it
    inside the cluster): its chat-completions endpoint; without: the model's name, which
    the platform routes to the serving NIM (the reference's form)."""
    if nim_url is None:
        return {"type": "model", "model": model_id}
    return {
        "type": "model",
        "model": {
            "api_endpoint": {
                "url": f"{nim_url.rstrip('/')}/v1/chat/completions",
                "model_id": model_id,
            }
        },
    }


# ----------------------------------------------------------------------------- responses


class StatusDetails(Wire):
    progress: float | None = None
    message: str | None = None
    error: str | None = None


class EvaluationJob(Wire):
    id: str
    status: str | None = None
    status_details: StatusDetails | None = None
    custom_fields: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        return (self.status or "").strip().lower()

    def failure_detail(self) -> str:
        """The service's explanation of a failure: its error, else its message."""
        details = self.status_details or StatusDetails()
        return first_text([details.error, details.message]) or "no detail given"


class EvaluationJobList(Wire):
    data: list[EvaluationJob] = Field(default_factory=list)


class Score(Wire):
    value: float | None


class MetricResult(Wire):
    scores: dict[str, Score]


class TaskResult(Wire):
    metrics: dict[str, MetricResult]


class EvaluationResults(Wire):
    tasks: dict[str, TaskResult]

    def score(self, metric: str, score: str) -> float | None:
        for task in self.tasks.values():
            found = task.metrics.get(metric)
            if found is not None and score in found.scores:
                return found.scores[score].value
        return None

    def flywheel_scores(self) -> dict[str, float]:
        """Our score names, in [0, 1]: function_name_accuracy,
        function_name_and_args_accuracy, similarity (judge 0-10 / 10), correctness."""
        scores: dict[str, float] = {}
        for ours, (metric, name, scale) in {
            "function_name_accuracy": ("tool-calling-accuracy", "function_name_accuracy", 1.0),
            "function_name_and_args_accuracy": ("tool-calling-accuracy", "function_name_and_args_accuracy", 1.0),
            "similarity": ("llm-judge", "similarity", 10.0),
            "correctness": ("correctness", "rating", 1.0),
        }.items():
            value = self.score(metric, name)
            if value is not None:
                scores[ours] = min(1.0, max(0.0, float(value) / scale))
        return scores


# -------------------------------------------------------------------------------- client


class EvaluatorClient(ServiceClient):
    service = "Evaluator"

    def create_job(
        self, config: dict[str, Any], target: dict[str, Any], *, namespace: str, request_key: str
    ) -> EvaluationJob:
        """Start a job tagged ``custom_fields.flywheel_request = request_key``; a creation
        whose answer was lost is found by that tag instead of being repeated."""
        body = {
            "namespace": namespace,
            "config": config,
            "target": target,
            "custom_fields": {"flywheel_request": request_key},
        }
        response = self.request("POST", "/v1/evaluation/jobs", json=body, recover=lambda: self.find_job(request_key))
        if isinstance(response, Recovered):
            return response.value
        return self.parse(EvaluationJob, self.json_of(response, "POST /v1/evaluation/jobs"), "POST /v1/evaluation/jobs")

    def find_job(self, request_key: str, *, max_pages: int = 10, page_size: int = 100) -> EvaluationJob | None:
        """The newest job tagged ``request_key`` that has not failed, else None."""
        for page in range(1, max_pages + 1):
            payload = self.request_json(
                "GET", "/v1/evaluation/jobs", params={"page": page, "page_size": page_size, "sort": "-created_at"}
            )
            listing = self.parse(EvaluationJobList, payload, "GET /v1/evaluation/jobs")
            for job in listing.data:
                if (job.custom_fields or {}).get(
                    "flywheel_request"
                ) == request_key and job.state not in JOB_FAILED_STATES:
                    return job
            if len(listing.data) < page_size:
                return None
        return None

    def get_job(self, job_id: str) -> EvaluationJob:
        path = f"/v1/evaluation/jobs/{job_id}"
        return self.parse(EvaluationJob, self.request_json("GET", path), f"GET {path}")

    def find_job_by_id(self, job_id: str) -> EvaluationJob | None:
        path = f"/v1/evaluation/jobs/{job_id}"
        response = self.request("GET", path, accept=status_is(404))
        if response.status_code == 404:
            return None
        return self.parse(EvaluationJob, self.json_of(response, f"GET {path}"), f"GET {path}")

    def results(self, job_id: str) -> EvaluationResults:
        path = f"/v1/evaluation/jobs/{job_id}/results"
        return self.parse(EvaluationResults, self.request_json("GET", path), f"GET {path}")

    def delete_job(self, job_id: str) -> bool:
        response = self.request("DELETE", f"/v1/evaluation/jobs/{job_id}", accept=status_is(404))
        return response.status_code < 400

    def wait(
        self, job_id: str, *, timeout_s: float, interval_s: float, on_progress: ProgressCallback | None = None
    ) -> EvaluationJob:
        def observe(job: EvaluationJob) -> tuple[str, float | None, str | None]:
            details = job.status_details or StatusDetails()
            return job.state or "unknown", details.progress, details.message

        def check(job: EvaluationJob) -> None:
            if not job.status:
                raise NemoSchemaError(
                    f"{self.service}: unexpected response to GET /v1/evaluation/jobs/{job_id}: "
                    "required field 'status' is missing",
                    service=self.service,
                )

        return wait_for_job(
            lambda: self.get_job(job_id),
            service=self.service,
            job_id=job_id,
            observe=observe,
            timeout_s=timeout_s,
            interval_s=interval_s,
            on_progress=on_progress,
            check=check,
        )
