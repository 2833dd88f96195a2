"""`NemoDatasetStore`: the project's `DatasetStore` interface on the NeMo Data Store.

A relative path ``{repo}/{path in repo}`` names a file of the dataset repo
``{namespace}/{repo}``; `write_file` creates the namespace and the repo when needed,
commits the file (unchanged content is not sent again) and returns the
``hf://datasets/{namespace}/{repo}/{path}`` URI that Customizer and Evaluator read.
It does not register the dataset in the Entity Store: `NemoBackend.upload_splits` does
(the Customizer needs that; a plain file store does not).
"""

from __future__ import annotations

import re

from pydantic import Field

from resources.datasets import DatasetStore
from resources.nemo.datastore import DataStoreClient, check_repo_path
from resources.nemo.transport import RetryPolicy

REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class NemoDatasetStore(DatasetStore):
    datastore_base_url: str = Field(description="NeMo Data Store (its HF-compatible API is under /v1/hf).")
    namespace: str = Field(default="dfwbp")
    token: str | None = Field(default=None, description="Data Store token; set with dg.EnvVar.")
    request_timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0

    def _client(self) -> DataStoreClient:
        return DataStoreClient(self.datastore_base_url, api_key=self.token, timeout_s=self.request_timeout_s,
                               retry=RetryPolicy(max_retries=self.max_retries, backoff_s=self.backoff_s))

    def _split(self, relpath: str) -> tuple[str, str]:
        repo, _, path = relpath.partition("/")
        if not REPO_NAME.match(repo) or not path:
            raise ValueError(f"{relpath!r}: expected '<repo>/<path in repo>' with a repo name matching {REPO_NAME.pattern}")
        return repo, check_repo_path(path)

    def write_file(self, relpath: str, data: bytes) -> str:
        repo, path = self._split(relpath)
        with self._client() as store:
            store.create_namespace(self.namespace)
            store.create_repo(self.namespace, repo)
            store.upload_files(self.namespace, repo, {path: data}, message=f"write {path}")
        return DataStoreClient.files_url(self.namespace, repo, path)

    def read_file(self, relpath: str) -> bytes:
        repo, path = self._split(relpath)
        with self._client() as store:
            return store.download_file(self.namespace, repo, path)
