"""NeMo Entity Store client (on ``nemo_base_url``): namespaces, datasets, models.

- ``POST /v1/namespaces`` ``{"id": ns}`` (409/422 "already exists" is fine)
- ``POST /v1/datasets`` ``{name, namespace, description, files_url, project}``;
  ``GET / PATCH / DELETE /v1/datasets/{ns}/{name}``
- ``GET /v1/models/{ns}/{name}``, ``DELETE /v1/models/{ns}/{name}``
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from resources.nemo.transport import ServiceClient, Wire, says_exists, status_is


class DatasetEntity(Wire):
    name: str
    namespace: str
    files_url: str
    description: str | None = None
    project: str | None = None


class ModelEntity(Wire):
    name: str
    namespace: str | None = None
    base_model: str | Any | None = None
    created_at: str | None = None


def _entity_path(namespace: str, name: str) -> str:
    return f"{quote(namespace, safe='')}/{quote(name, safe='@.')}"


class EntityStoreClient(ServiceClient):
    service = "Entity Store"

    def create_namespace(self, namespace: str) -> bool:
        """Create ``namespace``; False when it already existed."""
        response = self.request(
            "POST",
            "/v1/namespaces",
            json={"id": namespace},
            accept=lambda r: says_exists(r) or r.status_code == 422,
        )
        return response.status_code < 400

    # -- datasets
    def get_dataset(self, namespace: str, name: str) -> DatasetEntity | None:
        path = f"/v1/datasets/{_entity_path(namespace, name)}"
        response = self.request("GET", path, accept=status_is(404))
        if response.status_code == 404:
            return None
        return self.parse(DatasetEntity, self.json_of(response, f"GET {path}"), f"GET {path}")

    def register_dataset(
        self, namespace: str, name: str, files_url: str, *, description: str = "", project: str = "flywheel"
    ) -> DatasetEntity:
        """Register (or update) the dataset; repeatable."""
        body = {
            "name": name,
            "namespace": namespace,
            "description": description,
            "files_url": files_url,
            "project": project,
        }
        response = self.request("POST", "/v1/datasets", json=body, accept=says_exists)
        if response.status_code >= 400:  # exists: bring it up to date
            path = f"/v1/datasets/{_entity_path(namespace, name)}"
            response = self.request("PATCH", path, json=body)
        return self.parse(DatasetEntity, self.json_of(response, "register dataset"), "POST /v1/datasets")

    def delete_dataset(self, namespace: str, name: str) -> bool:
        response = self.request("DELETE", f"/v1/datasets/{_entity_path(namespace, name)}", accept=status_is(404))
        return response.status_code < 400

    # -- models
    def get_model(self, model: str) -> ModelEntity | None:
        """The model entry ``{ns}/{name}`` (e.g. a customization's output model), or None."""
        namespace, _, name = model.partition("/")
        if not name:
            raise ValueError(f"model name {model!r} must be 'namespace/name'")
        path = f"/v1/models/{_entity_path(namespace, name)}"
        response = self.request("GET", path, accept=status_is(404))
        if response.status_code == 404:
            return None
        return self.parse(ModelEntity, self.json_of(response, f"GET {path}"), f"GET {path}")

    def delete_model(self, model: str) -> bool:
        namespace, _, name = model.partition("/")
        response = self.request("DELETE", f"/v1/models/{_entity_path(namespace, name)}", accept=status_is(404))
        return response.status_code < 400
