"""An in-process emulator of the NeMo microservices APIs the flywheel uses, on loopback.

Three loopback servers (`loopback.LoopbackServer`) sharing one state, one per base URL the
clients are configured with, so a call sent to the wrong service gets a 404:

- ``nemo_base_url``: Entity Store (``/v1/namespaces``, ``/v1/datasets``, ``/v1/models``),
  Customizer (``/v1/customization/targets|configs|jobs``), Evaluator
  (``/v1/evaluation/jobs``), Deployment Management (``/v1/deployment/model-deployments``).
- ``datastore_base_url``: ``/v1/datastore/namespaces`` and the Hugging Face Hub API under
  ``/v1/hf`` (repo create/delete, preupload, git-lfs batch + upload + verify, NDJSON
  commit, resolve).
- ``nim_base_url``: ``GET /v1/models`` and an OpenAI-compatible ``POST
  /v1/chat/completions`` that answers deterministically: with ``tools`` it calls the first
  tool whose name appears in the last user message (else the first tool) with arguments
  ``{"text": <last user message>}``; without tools it answers ``"echo: <last user message>"``.
  A model is served only while a deployment of it is ready (adapters: while their base
  model is deployed and their customization has completed), and appears in
  ``/v1/models`` only ``sync_polls`` listings after that (the NIM proxy's sync delay).
  Like any OpenAI-compatible server it answers 400 to a tool call whose ``arguments`` is
  not a JSON string.

What the services reject, as documented:
- a customization config whose ``target`` is not one of ``targets`` (``GET
  /v1/customization/targets``: versioned names such as
  ``meta/llama-3.2-1b-instruct@2.0``; one disabled) or is disabled;
- training and validation files not in the Customizer's chat format: the job fails with
  ``Dataset validation failed: <file> line <n>: <why>`` (fields other than ``messages``
  and ``tools``, a content that is not a string, e.g. null or missing on an assistant
  turn that calls tools, a last turn that is not the assistant's);
- an evaluation whose target is an ``api_endpoint`` URL outside ``cluster_nim_url``: the
  Evaluator runs inside the cluster and cannot reach the flywheel's own NIM address;
  ``{type: model, model: "ns/name"}`` (a served model by name) works.

Jobs advance on polls, so tests are fast and deterministic: a customization job goes
created -> pending -> running (``customization_polls`` polls, percentage rising) ->
completed, one step per ``GET .../status`` or ``GET .../jobs/{id}``; a deployment is
``pending`` for ``deployment_polls`` polls, then ``ready``; an evaluation job is running
for ``evaluation_polls`` polls, then completed with results computed for real: it reads
the dataset file from the emulated Data Store, renders the config's Jinja templates,
asks the emulated NIM and scores ``tool-calling`` / ``llm-judge`` metrics.

Fault injection (`loopback.Fault`, `loopback.FaultScript`):
- scripted, in arrival order: ``add_fault(Fault.status(503), method="POST", path=r"/v1/customization/jobs$", times=1)``;
- random: ``set_fault_rate(0.2, seed=1)`` gives each request that chance of one of
  ``Fault.status(500|502|503)``, ``Fault.status(429, retry_after=0)``, ``Fault.drop()``
  (connection closed before the request is processed), ``Fault.drop_after()`` (processed,
  then closed without an answer: the case that makes naive retries create duplicates) and
  ``Fault.hang(0.05)`` (a slow answer);
- remote failures: ``fail_next_customization(detail)`` (failed with a ``status_logs``
  detail), ``fail_next_evaluation(detail)``, ``fail_next_deployment(detail, status)``
  (ends ``failed``, ``cancelled`` or ``unknown``);
- ``Fault.body(payload)``: a 200 with any JSON (e.g. a missing field).

Inspectable state for assertions: ``customization_jobs``, ``evaluation_jobs``,
``deployments_alive``, ``deployment_events``, ``repos``, ``datasets``, ``models``,
``configs``, ``targets``, ``requests`` (method, path, query, headers, body, service,
outcome). With ``api_key``
set, every request must carry ``Authorization: Bearer <api_key>``, except the LFS upload
``PUT``, which goes to the presigned URL the batch answer handed out (signature in the query,
as with S3; no headers) and is refused with an ``Authorization`` header. The LFS protocol
is what ``huggingface_hub`` speaks (the client NVIDIA documents for the Data Store):
``tests/test_nemo_datastore_protocol.py`` drives it against this emulator.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jinja2
from loopback import Answer, Fault, FaultScript, LoopbackFake, LoopbackHandler, LoopbackServer, RecordedRequest

SERVICES = ("nemo", "datastore", "nim")
CLUSTER_NIM_URL = "http://nemo-nim-proxy:8000"

# customization targets as a cluster lists them (``GET /v1/customization/targets``): the
# name carries the version; configs name a target as ``{namespace}/{name}``
DEFAULT_TARGETS = [
    {
        "namespace": "meta",
        "name": "llama-3.2-1b-instruct@2.0",
        "base_model": "meta/llama-3.2-1b-instruct",
        "enabled": True,
        "status": "ready",
        "num_parameters": 1_000_000_000,
        "precision": "bf16-mixed",
    },
    {
        "namespace": "meta",
        "name": "llama-3.1-8b-instruct@2.0",
        "base_model": "meta/llama-3.1-8b-instruct",
        "enabled": True,
        "status": "ready",
        "num_parameters": 8_000_000_000,
        "precision": "bf16-mixed",
    },
    {
        "namespace": "meta",
        "name": "llama-3.3-70b-instruct@2.0",
        "base_model": "meta/llama-3.3-70b-instruct",
        "enabled": False,
        "status": "created",
        "num_parameters": 70_000_000_000,
        "precision": "bf16-mixed",
    },
]

# the Customizer's chat format: these fields per line, these per message
TRAINING_LINE_FIELDS = {"messages", "tools"}
MESSAGE_FIELDS = {"role", "content", "tool_calls", "tool_call_id", "name"}
ROLES = {"system", "user", "assistant", "tool"}


class HTTPError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: Any
    groups: tuple[str, ...] = ()

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise HTTPError(400, "body is not JSON") from None

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


# -------------------------------------------------------------------------------- state


@dataclass
class CustomizationJob:
    id: str
    name: str
    output_model: str
    config: str
    dataset: dict
    hyperparameters: dict
    created_seq: int
    base_model: str
    script: list[str]
    step: int = 0
    status_logs: list[dict] = field(default_factory=list)
    cancelled: bool = False
    failure: str | None = None
    polls: int = 0

    @property
    def status(self) -> str:
        return "cancelled" if self.cancelled else self.script[self.step]

    def advance(self) -> None:
        self.polls += 1
        if not self.cancelled and self.step < len(self.script) - 1:
            self.step += 1

    def progress(self) -> float:
        if self.status == "completed":
            return 100.0
        running = [i for i, s in enumerate(self.script) if s == "running"]
        done = sum(1 for i in running if i <= self.step)
        return round(100.0 * done / (len(running) + 1), 1)

    def as_job(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "output_model": self.output_model,
            "config": self.config,
            "dataset": self.dataset,
            "hyperparameters": self.hyperparameters,
            "status": self.status,
            "created_at": f"2025-01-01T00:00:{self.created_seq:02d}",
            "ownership": {"created_by": "emulator"},
        }

    def as_status(self) -> dict:
        epochs = int(self.hyperparameters.get("epochs", 1))
        fraction = self.progress() / 100.0
        steps = int(round(fraction * 10 * epochs))
        return {
            "id": self.id,
            "status": self.status,
            "percentage_done": self.progress(),
            "epochs_completed": int(fraction * epochs),
            "steps_completed": steps,
            "status_logs": self.status_logs,
            "created_at": "2025-01-01T00:00:00",
            "metrics": {
                "keys": ["train_loss", "val_loss"],
                "metrics": {
                    "train_loss": [{"step": s, "value": round(2.0 / (1 + s), 4)} for s in range(1, steps + 1)],
                    "val_loss": [{"step": s, "value": round(2.2 / (1 + s), 4)} for s in range(1, steps + 1, 5)],
                },
            },
        }


@dataclass
class EvaluationJob:
    id: str
    config: dict
    target: dict
    custom_fields: dict
    namespace: str
    created_seq: int
    script: list[str]
    step: int = 0
    failure: str | None = None
    results: dict | None = None

    @property
    def status(self) -> str:
        return self.script[self.step]

    def as_job(self) -> dict:
        progress = 100.0 if self.status == "completed" else (50.0 if self.status == "running" else 0.0)
        details = {"progress": progress, "message": self.failure if self.status == "failed" else None}
        return {
            "id": self.id,
            "namespace": self.namespace,
            "status": self.status,
            "status_details": details,
            "config": self.config,
            "target": self.target,
            "custom_fields": self.custom_fields,
            "created_at": f"2025-01-01T00:01:{self.created_seq:02d}",
        }


@dataclass
class Deployment:
    namespace: str
    name: str
    model: str
    script: list[str]
    failure: str | None = None
    step: int = 0
    listings_since_ready: int = 0

    @property
    def status(self) -> str:
        return self.script[self.step]

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "config": {"model": self.model},
            "deployed": self.status == "ready",
            "status_details": {"status": self.status, "description": self.failure or f"deployment {self.status}"},
        }


# ----------------------------------------------------------------------------- emulator


class NemoEmulator(LoopbackFake):
    def __init__(
        self,
        *,
        api_key: str | None = None,
        customization_polls: int = 3,
        deployment_polls: int = 2,
        evaluation_polls: int = 2,
        sync_polls: int = 1,
        lfs_threshold: int = 10 * 1024 * 1024,
        exists_status: int = 409,
        deployment_exists_status: int = 500,
        cluster_nim_url: str = CLUSTER_NIM_URL,
    ) -> None:
        self.api_key = api_key
        self.customization_polls = customization_polls
        self.deployment_polls = deployment_polls
        self.evaluation_polls = evaluation_polls
        self.sync_polls = sync_polls
        self.lfs_threshold = lfs_threshold
        self.exists_status = exists_status
        self.deployment_exists_status = deployment_exists_status  # the reference saw 500 "already exists"
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        # state
        self.entity_namespaces: set[str] = set()
        self.datastore_namespaces: set[str] = set()
        self.repos: dict[str, dict[str, bytes]] = {}  # "ns/name" -> path -> bytes
        self.lfs_paths: dict[str, set[str]] = {}  # "ns/name" -> paths stored as LFS
        self.commits: dict[str, int] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.datasets: dict[str, dict] = {}  # "ns/name" -> entity
        self.models: dict[str, dict] = {}  # "ns/name" -> entity
        self.configs: dict[str, dict] = {}
        self.targets: dict[str, dict] = {f"{t['namespace']}/{t['name']}": dict(t) for t in DEFAULT_TARGETS}
        # where the Evaluator (inside the cluster) reaches the NIM proxy; the URL the
        # flywheel uses (this emulator's loopback address) is not reachable from there
        self.cluster_nim_url = cluster_nim_url
        self.customization_jobs: list[CustomizationJob] = []
        self.evaluation_jobs: list[EvaluationJob] = []
        self.deployments: dict[str, Deployment] = {}
        self.deployment_events: list[tuple[str, str]] = []  # ("created"|"deleted", "ns/name")
        self.requests: list[RecordedRequest] = []
        self.chat_requests: list[dict] = []
        self._faults = FaultScript()
        self._fail_customization: list[str] = []
        self._fail_evaluation: list[str] = []
        self._fail_deployment: list[tuple[str, str]] = []
        self._servers = {service: LoopbackServer(_Handler, emulator=self, service=service) for service in SERVICES}
        self.loopback_servers = list(self._servers.values())
        self._routes = self._build_routes()

    # ------------------------------------------------------------------ lifecycle
    def url(self, service: str) -> str:
        return self._servers[service].base_url

    @property
    def nemo_base_url(self) -> str:
        return self.url("nemo")

    @property
    def datastore_base_url(self) -> str:
        return self.url("datastore")

    @property
    def nim_base_url(self) -> str:
        return self.url("nim")

    # ---------------------------------------------------------------- fault control
    def add_fault(
        self, fault: Fault, *, method: str | None = None, path: str = ".*", service: str | None = None, times: int = 1
    ) -> None:
        self._faults.add(fault, method=method, path=path, service=service, times=times)

    def set_fault_rate(
        self, rate: float, *, seed: int = 0, kinds: list[Fault] | None = None, services: tuple[str, ...] = SERVICES
    ) -> None:
        self._faults.set_rate(rate, seed=seed, kinds=kinds, services=services)

    def fail_next_customization(self, detail: str) -> None:
        with self._lock:
            self._fail_customization.append(detail)

    def fail_next_evaluation(self, detail: str) -> None:
        with self._lock:
            self._fail_evaluation.append(detail)

    def fail_next_deployment(self, detail: str, status: str = "failed") -> None:
        """The next deployment goes pending -> ``status`` (``failed``, ``cancelled`` or
        ``unknown``: the states Deployment Management ends in without getting ready)."""
        with self._lock:
            self._fail_deployment.append((detail, status))

    # ------------------------------------------------------------------ inspection
    @property
    def deployments_alive(self) -> list[str]:
        with self._lock:
            return sorted(self.deployments)

    def customization_jobs_named(self, name: str) -> list[CustomizationJob]:
        with self._lock:
            return [job for job in self.customization_jobs if job.name == name]

    def served_models(self) -> list[str]:
        """Models the NIM proxy serves now (without the listing delay)."""
        with self._lock:
            return sorted(self._served(count_listing=False, require_sync=False))

    # --------------------------------------------------------------------- routing
    def _build_routes(self) -> dict[str, list[tuple[str, re.Pattern, Callable[[Request], Any]]]]:
        r: dict[str, list] = {service: [] for service in SERVICES}

        def add(service: str, method: str, pattern: str, handler: Callable[[Request], Any]) -> None:
            r[service].append((method, re.compile(f"^{pattern}$"), handler))

        seg = r"([^/]+)"
        # Entity Store
        add("nemo", "POST", "/v1/namespaces", self._entity_namespace)
        add("nemo", "POST", "/v1/datasets", self._dataset_create)
        add("nemo", "GET", f"/v1/datasets/{seg}/{seg}", self._dataset_get)
        add("nemo", "PATCH", f"/v1/datasets/{seg}/{seg}", self._dataset_patch)
        add("nemo", "DELETE", f"/v1/datasets/{seg}/{seg}", self._dataset_delete)
        add("nemo", "GET", "/v1/models", self._models_list)
        add("nemo", "GET", f"/v1/models/{seg}/{seg}", self._model_get)
        add("nemo", "DELETE", f"/v1/models/{seg}/{seg}", self._model_delete)
        # Customizer
        add("nemo", "GET", "/v1/customization/targets", self._targets_list)
        add("nemo", "GET", f"/v1/customization/targets/{seg}/{seg}", self._target_get)
        add("nemo", "POST", "/v1/customization/configs", self._config_create)
        add("nemo", "GET", f"/v1/customization/configs/{seg}/{seg}", self._config_get)
        add("nemo", "POST", "/v1/customization/jobs", self._customization_create)
        add("nemo", "GET", "/v1/customization/jobs", self._customization_list)
        add("nemo", "GET", f"/v1/customization/jobs/{seg}", self._customization_get)
        add("nemo", "GET", f"/v1/customization/jobs/{seg}/status", self._customization_status)
        add("nemo", "POST", f"/v1/customization/jobs/{seg}/cancel", self._customization_cancel)
        # Evaluator
        add("nemo", "POST", "/v1/evaluation/jobs", self._evaluation_create)
        add("nemo", "GET", "/v1/evaluation/jobs", self._evaluation_list)
        add("nemo", "GET", f"/v1/evaluation/jobs/{seg}", self._evaluation_get)
        add("nemo", "GET", f"/v1/evaluation/jobs/{seg}/results", self._evaluation_results)
        add("nemo", "DELETE", f"/v1/evaluation/jobs/{seg}", self._evaluation_delete)
        # Deployment Management
        add("nemo", "POST", "/v1/deployment/model-deployments", self._deployment_create)
        add("nemo", "GET", f"/v1/deployment/model-deployments/{seg}/{seg}", self._deployment_get)
        add("nemo", "DELETE", f"/v1/deployment/model-deployments/{seg}/{seg}", self._deployment_delete)
        # Data Store
        add("datastore", "POST", "/v1/datastore/namespaces", self._datastore_namespace)
        add("datastore", "POST", "/v1/hf/api/repos/create", self._repo_create)
        add("datastore", "DELETE", "/v1/hf/api/repos/delete", self._repo_delete)
        add("datastore", "POST", f"/v1/hf/api/datasets/{seg}/{seg}/preupload/{seg}", self._preupload)
        add("datastore", "POST", f"/v1/hf/datasets/{seg}/([^/]+)\\.git/info/lfs/objects/batch", self._lfs_batch)
        add("datastore", "PUT", f"/v1/hf/_lfs/{seg}", self._lfs_put)
        add("datastore", "POST", f"/v1/hf/_lfs/{seg}/verify", self._lfs_verify)
        add("datastore", "POST", f"/v1/hf/api/datasets/{seg}/{seg}/commit/{seg}", self._commit)
        add("datastore", "GET", f"/v1/hf/datasets/{seg}/{seg}/resolve/{seg}/(.+)", self._resolve)
        # NIM proxy
        add("nim", "GET", "/v1/models", self._nim_models)
        add("nim", "POST", "/v1/chat/completions", self._chat)
        return r

    def handle(self, service: str, method: str, raw_path: str, body: bytes, headers: Any) -> tuple[int, Any, dict]:
        """(status, payload, headers) for one request; payload bytes are sent as is."""
        split = urlsplit(raw_path)
        path = split.path
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        presigned = method == "PUT" and path.startswith("/v1/hf/_lfs/")
        if self.api_key and not presigned:
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                return 401, {"detail": "missing or wrong bearer token"}, {}
        for route_method, pattern, handler in self._routes[service]:
            match = pattern.match(path)
            if match and route_method == method:
                request = Request(method, path, query, body, headers, tuple(unquote(g) for g in match.groups()))
                try:
                    with self._lock:
                        result = handler(request)
                except HTTPError as error:
                    return error.status, {"detail": error.detail}, {}
                if isinstance(result, tuple):
                    return result[0], result[1], (result[2] if len(result) > 2 else {})
                return 200, result, {}
        return 404, {"detail": f"Not Found: {method} {path} on {service}"}, {}

    # ---------------------------------------------------------------- entity store
    def _exists(self, what: str) -> tuple[int, dict]:
        return self.exists_status, {"detail": f"{what} already exists"}

    def _entity_namespace(self, req: Request):
        ns = (req.json() or {}).get("id")
        if not ns:
            raise HTTPError(422, [{"loc": ["body", "id"], "msg": "field required"}])
        if ns in self.entity_namespaces:
            return self._exists(f"namespace {ns}")
        self.entity_namespaces.add(ns)
        return 201, {"id": ns, "created_at": "2025-01-01T00:00:00"}

    def _dataset_create(self, req: Request):
        body = req.json() or {}
        missing = [k for k in ("name", "namespace", "files_url") if not body.get(k)]
        if missing:
            raise HTTPError(422, [{"loc": ["body", k], "msg": "field required"} for k in missing])
        if body["namespace"] not in self.entity_namespaces:
            raise HTTPError(404, f"namespace {body['namespace']} not found")
        key = f"{body['namespace']}/{body['name']}"
        if key in self.datasets:
            return self._exists(f"dataset {key}")
        self.datasets[key] = {**body, "id": f"dataset-{next(self._seq)}"}
        return 201, self.datasets[key]

    def _dataset_get(self, req: Request):
        key = "/".join(req.groups)
        if key not in self.datasets:
            raise HTTPError(404, f"dataset {key} not found")
        return self.datasets[key]

    def _dataset_patch(self, req: Request):
        key = "/".join(req.groups)
        if key not in self.datasets:
            raise HTTPError(404, f"dataset {key} not found")
        self.datasets[key].update({k: v for k, v in (req.json() or {}).items() if k not in ("name", "namespace")})
        return self.datasets[key]

    def _dataset_delete(self, req: Request):
        key = "/".join(req.groups)
        if self.datasets.pop(key, None) is None:
            raise HTTPError(404, f"dataset {key} not found")
        return {"message": "deleted"}

    def _models_list(self, req: Request):
        return {"object": "list", "data": list(self.models.values())}

    def _model_get(self, req: Request):
        key = "/".join(req.groups)
        if key not in self.models:
            raise HTTPError(404, f"model {key} not found")
        return self.models[key]

    def _model_delete(self, req: Request):
        key = "/".join(req.groups)
        if self.models.pop(key, None) is None:
            raise HTTPError(404, f"model {key} not found")
        return {"message": "deleted"}

    # ------------------------------------------------------------------- customizer
    def _config_create(self, req: Request):
        body = req.json() or {}
        missing = [k for k in ("name", "namespace", "target", "training_options") if not body.get(k)]
        if missing:
            raise HTTPError(422, [{"loc": ["body", k], "msg": "field required"} for k in missing])
        target = self.targets.get(body["target"])
        if target is None:
            raise HTTPError(404, f"customization target {body['target']} not found")
        if not target["enabled"]:
            raise HTTPError(422, f"customization target {body['target']} is disabled")
        key = f"{body['namespace']}/{body['name']}"
        if key in self.configs:
            return self._exists(f"customization config {key}")
        self.configs[key] = body
        return 200, {**body, "id": f"customization_config-{next(self._seq)}"}

    def _targets_list(self, req: Request):
        page, size = int(req.query.get("page", 1)), int(req.query.get("page_size", 10))
        targets = sorted(self.targets.values(), key=lambda t: (t["namespace"], t["name"]))
        chunk = targets[(page - 1) * size : page * size]
        return {
            "object": "list",
            "data": chunk,
            "pagination": {
                "page": page,
                "page_size": size,
                "current_page_size": len(chunk),
                "total_pages": max(1, -(-len(targets) // size)),
                "total_results": len(targets),
            },
        }

    def _target_get(self, req: Request):
        key = "/".join(req.groups)
        if key not in self.targets:
            raise HTTPError(404, f"customization target {key} not found")
        return self.targets[key]

    def _config_get(self, req: Request):
        key = "/".join(req.groups)
        if key not in self.configs:
            raise HTTPError(404, f"config {key} not found")
        return self.configs[key]

    def _customization_create(self, req: Request):
        body = req.json() or {}
        problems = [k for k in ("name", "output_model", "config", "dataset", "hyperparameters") if not body.get(k)]
        hp = body.get("hyperparameters") or {}
        problems += [
            f"hyperparameters.{k}"
            for k in ("training_type", "finetuning_type", "epochs", "batch_size", "learning_rate", "lora")
            if k not in hp
        ]
        problems += [
            f"hyperparameters.lora.{k}" for k in ("adapter_dim", "adapter_dropout") if k not in (hp.get("lora") or {})
        ]
        if problems:
            raise HTTPError(422, [{"loc": ["body", *p.split(".")], "msg": "field required"} for p in problems])
        if body["config"] not in self.configs:
            raise HTTPError(404, f"customization config {body['config']} not found")
        dataset = body["dataset"]
        dataset_key = f"{dataset.get('namespace')}/{dataset.get('name')}"
        if dataset_key not in self.datasets:
            raise HTTPError(404, f"dataset {dataset_key} not found in the Entity Store")
        files = self.repos.get(dataset_key, {})
        if not any(path.startswith("training/") for path in files):
            raise HTTPError(422, f"dataset {dataset_key} has no training/ files")
        job_id = f"cust-{next(self._seq):06d}"
        output = body["output_model"] if "@" in body["output_model"] else f"{body['output_model']}@{job_id}"
        failure = self._fail_customization.pop(0) if self._fail_customization else None
        failure = failure or _invalid_training_files(files)
        script = ["created", "pending"] + (
            ["running", "failed"] if failure else ["running"] * self.customization_polls + ["completed"]
        )
        base = self.targets[self.configs[body["config"]]["target"]]["base_model"]
        job = CustomizationJob(
            job_id, body["name"], output, body["config"], dataset, hp, next(self._seq), base, script, failure=failure
        )
        self.customization_jobs.append(job)
        return 200, job.as_job()

    def _job(self, job_id: str) -> CustomizationJob:
        for job in self.customization_jobs:
            if job.id == job_id:
                return job
        raise HTTPError(404, f"customization job {job_id} not found")

    def _customization_advance(self, job: CustomizationJob) -> None:
        before = job.status
        job.advance()
        if job.status != before:
            if job.status == "failed":
                job.status_logs.append(
                    {"message": "failed", "detail": job.failure, "updated_at": "2025-01-01T00:05:00"}
                )
            elif job.status == "completed":
                job.status_logs.append({"message": "completed", "detail": None})
                ns, _, name = job.output_model.partition("/")
                self.models[job.output_model] = {
                    "name": name,
                    "namespace": ns,
                    "base_model": job.base_model,
                    "adapter": {"finetuning_type": "lora"},
                    "job": job.id,
                }
            else:
                job.status_logs.append({"message": job.status, "detail": None})

    def _customization_list(self, req: Request):
        page, size = int(req.query.get("page", 1)), int(req.query.get("page_size", 10))
        jobs = sorted(self.customization_jobs, key=lambda j: -j.created_seq)
        chunk = jobs[(page - 1) * size : page * size]
        return {
            "object": "list",
            "data": [job.as_job() for job in chunk],
            "pagination": {
                "page": page,
                "page_size": size,
                "current_page_size": len(chunk),
                "total_pages": max(1, -(-len(jobs) // size)),
                "total_results": len(jobs),
            },
        }

    def _customization_get(self, req: Request):
        job = self._job(req.groups[0])
        self._customization_advance(job)
        return job.as_job()

    def _customization_status(self, req: Request):
        job = self._job(req.groups[0])
        self._customization_advance(job)
        return job.as_status()

    def _customization_cancel(self, req: Request):
        job = self._job(req.groups[0])
        if job.status in ("completed", "failed", "cancelled"):
            raise HTTPError(409, f"job {job.id} is already {job.status}")
        job.cancelled = True
        job.status_logs.append({"message": "cancelled", "detail": "cancelled by user"})
        return job.as_job()

    # -------------------------------------------------------------------- evaluator
    def _evaluation_create(self, req: Request):
        body = req.json() or {}
        config, target = body.get("config"), body.get("target")
        if not isinstance(config, dict) or not config.get("tasks"):
            raise HTTPError(422, [{"loc": ["body", "config", "tasks"], "msg": "field required"}])
        if not _target_model(target):
            raise HTTPError(
                422, [{"loc": ["body", "target", "model", "api_endpoint", "model_id"], "msg": "field required"}]
            )
        failure = self._fail_evaluation.pop(0) if self._fail_evaluation else None
        script = ["created"] + ["running"] * self.evaluation_polls + (["failed"] if failure else ["completed"])
        job = EvaluationJob(
            f"eval-{next(self._seq):06d}",
            config,
            target,
            body.get("custom_fields") or {},
            body.get("namespace", "default"),
            next(self._seq),
            script,
            failure=failure,
        )
        self.evaluation_jobs.append(job)
        return 200, job.as_job()

    def _eval_job(self, job_id: str) -> EvaluationJob:
        for job in self.evaluation_jobs:
            if job.id == job_id:
                return job
        raise HTTPError(404, f"evaluation job {job_id} not found")

    def _evaluation_list(self, req: Request):
        page, size = int(req.query.get("page", 1)), int(req.query.get("page_size", 10))
        jobs = sorted(self.evaluation_jobs, key=lambda j: -j.created_seq)
        chunk = jobs[(page - 1) * size : page * size]
        return {
            "object": "list",
            "data": [job.as_job() for job in chunk],
            "pagination": {"page": page, "page_size": size, "total_results": len(jobs)},
        }

    def _evaluation_get(self, req: Request):
        job = self._eval_job(req.groups[0])
        if job.step < len(job.script) - 1:
            job.step += 1
            if job.status == "completed":
                try:
                    job.results = self._run_evaluation(job)
                except HTTPError as error:
                    job.script[job.step] = "failed"
                    job.failure = str(error.detail)
        return job.as_job()

    def _evaluation_results(self, req: Request):
        job = self._eval_job(req.groups[0])
        if job.status != "completed" or job.results is None:
            raise HTTPError(409, f"job {job.id} is {job.status}: no results yet")
        return job.results

    def _evaluation_delete(self, req: Request):
        job = self._eval_job(req.groups[0])
        self.evaluation_jobs.remove(job)
        return {"message": "deleted"}

    def _run_evaluation(self, job: EvaluationJob) -> dict:
        model = _target_model(job.target)
        endpoint = job.target["model"].get("api_endpoint") if isinstance(job.target["model"], dict) else None
        if endpoint is not None and not endpoint["url"].startswith(f"{self.cluster_nim_url}/"):
            raise HTTPError(502, f"cannot reach {endpoint['url']} from inside the cluster: connection refused")
        if model not in self._served(count_listing=False, require_sync=False):
            raise HTTPError(404, f"model {model} is not served by the NIM proxy")
        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        tasks = {}
        for task_name, task in job.config["tasks"].items():
            items = self._read_hf(task["dataset"]["files_url"])[: task["dataset"].get("limit")]
            template = (task.get("params") or {}).get("template") or {}
            scores: dict[str, dict[str, list[float]]] = {}
            for item in items:
                request = {}
                for key, value in template.items():
                    rendered = env.from_string(value).render(item=item) if isinstance(value, str) else value
                    request[key] = json.loads(rendered) if key in ("messages", "tools") else rendered
                problem = _chat_request_problem(request.get("messages"))
                if problem:
                    raise HTTPError(400, f"the model answered HTTP 400 to a replayed record: {problem}")
                answer = self._answer(request.get("messages") or [], request.get("tools"))
                sample = {"output_text": answer.get("content") or "", "response": {"choices": [{"message": answer}]}}
                for metric_name, metric in task["metrics"].items():
                    got = scores.setdefault(metric_name, {})
                    for score, value in self._metric(env, metric, item, sample).items():
                        got.setdefault(score, []).append(value)
            tasks[task_name] = {
                "metrics": {
                    metric: {
                        "scores": {
                            score: {
                                "value": sum(v) / len(v),
                                "stats": {"count": len(v), "sum": sum(v), "mean": sum(v) / len(v)},
                            }
                            for score, v in metric_scores.items()
                        }
                    }
                    for metric, metric_scores in scores.items()
                }
            }
        return {"job": job.id, "tasks": tasks, "groups": {}}

    def _metric(self, env: jinja2.Environment, metric: dict, item: dict, sample: dict) -> dict[str, float]:
        params = metric.get("params") or {}
        if metric["type"] == "tool-calling":
            truth = (
                json.loads(env.from_string(params["tool_calls_ground_truth"]).render(item=item, sample=sample)) or []
            )
            got = sample["response"]["choices"][0]["message"].get("tool_calls") or []
            names = [c["function"]["name"] for c in truth] == [c["function"]["name"] for c in got]
            args = names and [_args(c) for c in truth] == [_args(c) for c in got]
            return {"function_name_accuracy": float(names), "function_name_and_args_accuracy": float(args)}
        if metric["type"] == "llm-judge":
            prompt = "\n".join(
                env.from_string(m["content"]).render(item=item, sample=sample) for m in params["template"]["messages"]
            )
            results = {}
            for score in params.get("scores", {}):
                if score == "similarity":
                    reference = str(item["messages"][-1].get("content") or "")
                    results[score] = float(round(10 * _overlap(reference, sample["output_text"])))
                else:  # a 0/1 tool-call rating
                    results[score] = 1.0 if "*Prediction*: null" not in prompt else 0.0
            return results
        raise HTTPError(422, f"unknown metric type {metric['type']!r}")

    def _read_hf(self, files_url: str) -> list[dict]:
        match = re.match(r"^hf://datasets/([^/]+)/([^/]+)/(.+)$", files_url)
        if not match:
            raise HTTPError(422, f"files_url {files_url} is not hf://datasets/ns/name/path")
        repo, path = f"{match[1]}/{match[2]}", match[3]
        data = self.repos.get(repo, {}).get(path)
        if data is None:
            raise HTTPError(404, f"{files_url} not found in the Data Store")
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

    # ----------------------------------------------------------------- deployments
    def _deployment_create(self, req: Request):
        body = req.json() or {}
        config = body.get("config") or {}
        problems = [k for k in ("name", "namespace") if not body.get(k)] + [
            f"config.{k}" for k in ("model", "nim_deployment") if not config.get(k)
        ]
        if problems:
            raise HTTPError(422, [{"loc": ["body", *p.split(".")], "msg": "field required"} for p in problems])
        key = f"{body['namespace']}/{body['name']}"
        if key in self.deployments:
            return self.deployment_exists_status, {"detail": "model deployment already exists"}
        failure, end = self._fail_deployment.pop(0) if self._fail_deployment else (None, "ready")
        script = ["pending", end] if failure else ["pending"] * self.deployment_polls + ["ready"]
        self.deployments[key] = Deployment(body["namespace"], body["name"], config["model"], script, failure)
        self.deployment_events.append(("created", key))
        return 200, self.deployments[key].as_json()

    def _deployment_get(self, req: Request):
        key = "/".join(req.groups)
        deployment = self.deployments.get(key)
        if deployment is None:
            raise HTTPError(404, f"model deployment {key} not found")
        if deployment.step < len(deployment.script) - 1:
            deployment.step += 1
        return deployment.as_json()

    def _deployment_delete(self, req: Request):
        key = "/".join(req.groups)
        if self.deployments.pop(key, None) is None:
            raise HTTPError(404, f"model deployment {key} not found")
        self.deployment_events.append(("deleted", key))
        return {"message": f"deployment {key} deleted"}

    # ------------------------------------------------------------------ data store
    def _datastore_namespace(self, req: Request):
        ns = req.form().get("namespace")
        if not ns:
            raise HTTPError(422, "form field namespace is required")
        if ns in self.datastore_namespaces:
            return self._exists(f"namespace {ns}")
        self.datastore_namespaces.add(ns)
        return 201, {"namespace": ns}

    def _repo_create(self, req: Request):
        body = req.json() or {}
        if body.get("type") != "dataset" or not body.get("name") or not body.get("organization"):
            raise HTTPError(422, "name, organization and type=dataset are required")
        if body["organization"] not in self.datastore_namespaces:
            raise HTTPError(404, f"namespace {body['organization']} not found")
        key = f"{body['organization']}/{body['name']}"
        if key in self.repos:
            return 409, {"error": "You already created this dataset repo", "url": f"/datasets/{key}"}
        self.repos[key] = {}
        self.lfs_paths[key] = set()
        self.commits[key] = 0
        return 200, {"url": f"{self.datastore_base_url}/v1/hf/datasets/{key}", "name": key}

    def _repo_delete(self, req: Request):
        body = req.json() or {}
        key = f"{body.get('organization')}/{body.get('name')}"
        if self.repos.pop(key, None) is None:
            raise HTTPError(404, f"repo {key} not found")
        return {"deleted": key}

    def _repo(self, ns: str, name: str) -> dict[str, bytes]:
        key = f"{ns}/{name}"
        if key not in self.repos:
            raise HTTPError(404, f"Repository {key} not found")
        return self.repos[key]

    def _preupload(self, req: Request):
        ns, name, _revision = req.groups
        files = self._repo(ns, name)
        lfs = self.lfs_paths[f"{ns}/{name}"]
        answer = []
        for entry in (req.json() or {}).get("files", []):
            path, size = entry["path"], int(entry["size"])
            existing = files.get(path)
            oid = None
            if existing is not None:
                oid = hashlib.sha256(existing).hexdigest() if path in lfs else _git_oid(existing)
            answer.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if size >= self.lfs_threshold else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return {"files": answer}

    def _lfs_batch(self, req: Request):
        ns, name = req.groups
        self._repo(ns, name)
        body = req.json() or {}
        if body.get("operation") != "upload":
            raise HTTPError(422, "only upload is supported")
        if "basic" not in (body.get("transfers") or ["basic"]):
            raise HTTPError(422, "no supported transfer adapter offered (this store speaks 'basic')")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:
                # a presigned upload URL (the signature is in the query, as with S3) and a
                # verify URL on the store's API, which wants the usual token
                href = f"{self.datastore_base_url}/v1/hf/_lfs/{oid}"
                entry["actions"] = {
                    "upload": {"href": f"{href}?X-Signature={_token(oid)}", "expires_in": 3600},
                    "verify": {"href": f"{href}/verify"},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_put(self, req: Request):
        oid = req.groups[0]
        if req.query.get("X-Signature") != _token(oid):
            raise HTTPError(403, "bad or missing upload signature")
        if req.headers.get("Authorization"):
            # as S3: a presigned request carries its signature only in the URL
            raise HTTPError(400, "Only one auth mechanism allowed: the URL signature or the Authorization header")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HTTPError(422, "content does not match oid")
        self.lfs_objects[oid] = req.body
        return {}

    def _lfs_verify(self, req: Request):
        oid = req.groups[0]
        body = req.json() or {}
        if body.get("oid") != oid or not isinstance(body.get("size"), int):
            raise HTTPError(422, "verify body must be {oid, size} of the uploaded object")
        if oid not in self.lfs_objects or len(self.lfs_objects[oid]) != body["size"]:
            raise HTTPError(404, f"object {oid} not uploaded")
        return {}

    def _commit(self, req: Request):
        ns, name, _revision = req.groups
        files = self._repo(ns, name)
        lfs = self.lfs_paths[f"{ns}/{name}"]
        if req.headers.get("Content-Type") != "application/x-ndjson":
            raise HTTPError(415, "commit body must be application/x-ndjson")
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HTTPError(422, "the first line of a commit must be its header")
        staged: dict[str, tuple[bytes, bool]] = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                staged[value["path"]] = (base64.b64decode(value["content"]), False)
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HTTPError(422, f"LFS object {value['oid']} was never uploaded")
                staged[value["path"]] = (self.lfs_objects[value["oid"]], True)
            else:
                raise HTTPError(422, f"unsupported commit operation {line['key']}")
        for path, (data, is_lfs) in staged.items():
            files[path] = data
            (lfs.add if is_lfs else lfs.discard)(path)
        self.commits[f"{ns}/{name}"] += 1
        oid = hashlib.sha1(f"{ns}/{name}/{self.commits[f'{ns}/{name}']}".encode()).hexdigest()
        return {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.datastore_base_url}/v1/hf/datasets/{ns}/{name}/commit/{oid}",
        }

    def _resolve(self, req: Request):
        ns, name, _revision, path = req.groups
        files = self._repo(ns, name)
        if path not in files:
            raise HTTPError(404, f"{path} not found in {ns}/{name}")
        return 200, files[path], {"Content-Type": "application/octet-stream"}

    # ------------------------------------------------------------------------- NIM
    def _served(self, *, count_listing: bool, require_sync: bool = True) -> set[str]:
        served = set()
        for deployment in self.deployments.values():
            if deployment.status != "ready":
                continue
            if count_listing:
                deployment.listings_since_ready += 1
            if require_sync and deployment.listings_since_ready <= self.sync_polls:
                continue
            served.add(deployment.model)
            for job in self.customization_jobs:
                if job.status == "completed" and job.base_model == deployment.model:
                    served.add(job.output_model)
        return served

    def _nim_models(self, req: Request):
        models = sorted(self._served(count_listing=True))
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "system"} for m in models]}

    def _chat(self, req: Request):
        body = req.json() or {}
        if not body.get("model") or not isinstance(body.get("messages"), list):
            raise HTTPError(422, [{"loc": ["body", "model"], "msg": "field required"}])
        problem = _chat_request_problem(body["messages"])
        if problem:
            return 400, {"error": {"message": problem, "type": "BadRequestError"}}
        if body["model"] not in self._served(count_listing=False, require_sync=False):
            return 404, {"error": {"message": f"The model `{body['model']}` does not exist.", "type": "NotFoundError"}}
        self.chat_requests.append(body)
        message = self._answer(body["messages"], body.get("tools"))
        text = json.dumps(body["messages"])
        return {
            "id": f"chatcmpl-{next(self._seq)}",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}
            ],
            "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": 8, "total_tokens": len(text) // 4 + 8},
        }

    @staticmethod
    def _answer(messages: list[dict], tools: list[dict] | None) -> dict:
        last = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        if tools:
            names = [t["function"]["name"] for t in tools]
            name = next((n for n in names if n in last), names[0])
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps({"text": last})},
                    }
                ],
            }
        return {"role": "assistant", "content": f"echo: {last}"}


def _training_line_problem(line: Any) -> str | None:
    """What the Customizer's chat format rejects in one training line, or None."""
    if not isinstance(line, dict):
        return "not a JSON object"
    extra = sorted(set(line) - TRAINING_LINE_FIELDS)
    if extra:
        return f"unexpected field(s) {extra}: a line has only {sorted(TRAINING_LINE_FIELDS)}"
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"messages[{i}].role must be one of {sorted(ROLES)}"
        extra = sorted(set(message) - MESSAGE_FIELDS)
        if extra:
            return f"messages[{i}] has unexpected field(s) {extra}"
        if not isinstance(message.get("content"), str):
            return (
                f"messages[{i}].content must be a string (an assistant message with tool_calls "
                f'has content ""), got {message.get("content", "no content")!r}'
            )
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                return f"messages[{i}].tool_calls entries must be {{type: function, function: {{name, arguments}}}}"
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's"
    tools = line.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name") for t in tools
        )
    ):
        return "'tools' must be a list of {type: function, function: {name, ...}}"
    return None


def _invalid_training_files(files: dict[str, bytes]) -> str | None:
    """The Customizer's dataset validation of ``training/`` and ``validation/`` files:
    the first bad line, as the failed job's detail; None when all are valid."""
    for path in sorted(p for p in files if p.startswith(("training/", "validation/"))):
        for number, text in enumerate(files[path].decode(errors="replace").splitlines(), 1):
            if not text.strip():
                continue
            try:
                problem = _training_line_problem(json.loads(text))
            except ValueError:
                problem = "not valid JSON"
            if problem:
                return f"Dataset validation failed: {path} line {number}: {problem}"
    return None


def _chat_request_problem(messages: Any) -> str | None:
    """What an OpenAI-compatible server (a NIM) rejects in request messages: tool-call
    arguments are a JSON string, not an object."""
    for i, message in enumerate(messages or []):
        for j, call in enumerate(message.get("tool_calls") or []):
            if not isinstance((call.get("function") or {}).get("arguments"), str):
                return f"messages.{i}.tool_calls.{j}.function.arguments: Input should be a valid string"
    return None


def _target_model(target: Any) -> str | None:
    """The evaluated model of an Evaluator target: ``{type: model, model: "ns/name"}`` (a
    model the platform serves) or ``{..., model: {api_endpoint: {url, model_id}}}``."""
    model = (target or {}).get("model")
    if isinstance(model, str):
        return model or None
    return ((model or {}).get("api_endpoint") or {}).get("model_id")


def _args(call: dict) -> Any:
    arguments = call["function"].get("arguments")
    return json.loads(arguments) if isinstance(arguments, str) else (arguments or {})


def _overlap(a: str, b: str) -> float:
    ta, tb = set(re.findall(r"\w+", a.lower())), set(re.findall(r"\w+", b.lower()))
    return len(ta & tb) / len(ta | tb) if ta | tb else 1.0


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _token(oid: str) -> str:
    return hashlib.sha256(f"upload:{oid}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- server


class _Handler(LoopbackHandler):
    def _serve(self) -> None:
        emulator, service = self.server.emulator, self.server.service  # type: ignore[attr-defined]
        body = self.read_body()
        split = urlsplit(self.path)
        record = self.record(body, path=split.path, query=split.query, service=service)
        with emulator._lock:
            emulator.requests.append(record)
        fault = emulator._faults.take(self.command, split.path, service)
        if fault is not None:
            record.outcome = fault.kind
        self.respond(fault, lambda: self._answer(emulator, service, body))

    def _answer(self, emulator: NemoEmulator, service: str, body: bytes) -> Answer:
        status, payload, headers = emulator.handle(service, self.command, self.path, body, self.headers)
        return status, payload if isinstance(payload, bytes) else json.dumps(payload).encode(), headers

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


nemo_emulator = NemoEmulator  # the name tests use: ``with nemo_emulator(**options) as emulator:``
