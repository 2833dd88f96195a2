"""`NemoServices`: the Dagster resource that knows where the NeMo microservices are and
hands out their typed clients. Plain configuration: base URLs, the namespace, secrets
(fill them with ``dg.EnvVar``, never inline), timeouts and the retry policy.

Each factory returns a new client; use it as a context manager so its connections close::

    with nemo.customizer() as customizer:
        customizer.get_status(job_id)
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from resources.nemo.customizer import CustomizerClient
from resources.nemo.datastore import DataStoreClient
from resources.nemo.deployment import DeploymentClient
from resources.nemo.entity_store import EntityStoreClient
from resources.nemo.evaluator import EvaluatorClient
from resources.nemo.nim import NimProxyClient
from resources.nemo.transport import RetryPolicy


class NemoServices(dg.ConfigurableResource):
    nemo_base_url: str = Field(description="Gateway of Entity Store, Customizer, Evaluator and Deployment Management.")
    datastore_base_url: str = Field(description="NeMo Data Store (its HF-compatible API is under /v1/hf).")
    nim_base_url: str = Field(description="NIM proxy (OpenAI-compatible; /v1/models, /v1/chat/completions).")
    namespace: str = Field(default="dfwbp", description="Namespace of everything the flywheel creates.")
    api_key: str | None = Field(default=None, description="Bearer token for all services; set with dg.EnvVar.")
    datastore_token: str | None = Field(
        default=None, description="Data Store (HF) token if it differs from api_key; dg.EnvVar."
    )
    nim_api_key: str | None = Field(default=None, description="NIM proxy key if it differs from api_key; dg.EnvVar.")
    request_timeout_s: float = Field(default=60.0, description="Connect/read timeout of one HTTP request.")
    max_retries: int = Field(default=5, description="Retries of one call on 429/5xx/connection errors.")
    backoff_s: float = Field(default=1.0, description="First retry delay; doubles per retry, with jitter.")
    max_backoff_s: float = Field(default=30.0, description="Cap of one retry delay.")
    poll_interval_s: float = Field(default=10.0, description="Seconds between two status polls of a job or deployment.")

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)

    def _options(self, api_key: str | None) -> dict:
        return {"api_key": api_key, "timeout_s": self.request_timeout_s, "retry": self.retry_policy()}

    def datastore(self) -> DataStoreClient:
        return DataStoreClient(self.datastore_base_url, **self._options(self.datastore_token or self.api_key))

    def entity_store(self) -> EntityStoreClient:
        return EntityStoreClient(self.nemo_base_url, **self._options(self.api_key))

    def customizer(self) -> CustomizerClient:
        return CustomizerClient(self.nemo_base_url, **self._options(self.api_key))

    def evaluator(self) -> EvaluatorClient:
        return EvaluatorClient(self.nemo_base_url, **self._options(self.api_key))

    def deployments(self) -> DeploymentClient:
        return DeploymentClient(self.nemo_base_url, **self._options(self.api_key))

    def nim(self) -> NimProxyClient:
        return NimProxyClient(self.nim_base_url, **self._options(self.nim_api_key or self.api_key))
