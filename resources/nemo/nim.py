"""NIM proxy client (on ``nim_base_url``): the OpenAI-compatible endpoint that serves every
deployed NIM and every customized adapter.

- ``GET /v1/models``: which models are served now (`wait_for_model` polls it until a
  deployment or an adapter is listed).
- ``POST /v1/chat/completions``: through the project's `OpenAICompatibleBackend`
  (`chat_backend`), which has its own worker threads, retries and error handling.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from resources.nemo.transport import ProgressCallback, ServiceClient, Wire, poll
from resources.openai_compatible import OpenAICompatibleBackend


class NimModel(Wire):
    id: str


class NimModelList(Wire):
    data: list[NimModel] = Field(default_factory=list)


class NimProxyClient(ServiceClient):
    service = "NIM proxy"

    def list_models(self) -> list[str]:
        payload = self.request_json("GET", "/v1/models")
        return [model.id for model in self.parse(NimModelList, payload, "GET /v1/models").data]

    def wait_for_model(
        self, model: str, *, timeout_s: float, interval_s: float, on_progress: ProgressCallback | None = None
    ) -> None:
        """Poll ``GET /v1/models`` until ``model`` is listed."""
        poll(
            self.list_models,
            service=self.service,
            subject=f"model {model}",
            observe=lambda models: ("listed" if model in models else "not listed yet", None, None),
            done=lambda models: model in models,
            timeout_s=timeout_s,
            interval_s=interval_s,
            on_progress=on_progress,
        )

    def chat_backend(self, model: str, **options: Any) -> OpenAICompatibleBackend:
        """A `ChatBackend` answering with ``model`` through this proxy."""
        return OpenAICompatibleBackend(f"{self.base_url}/v1", model, api_key=self._api_key, **options)
