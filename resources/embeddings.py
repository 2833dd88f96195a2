"""Embeddings from any OpenAI-compatible ``POST {base_url}/embeddings`` endpoint (a NIM
embedding model, vLLM, OpenAI), cached on disk by content hash, for the `embedding` ICL
strategy (`flywheel_assets/core/icl.py`).

The wire format is OpenAI's: the request is ``{"model", "input": [texts]}`` (plus
``input_type`` when configured: NVIDIA's asymmetric retrieval models such as
``nvidia/llama-3.2-nv-embedqa-1b-v2`` require ``"query"`` or ``"passage"``); the response
is ``{"data": [{"index": i, "embedding": [floats]}, ...]}``.

The transport is the one the chat client uses (`OpenAICompatibleEndpoint`, without the
chat calls): the same retries (429, 5xx, connection errors, timeouts), error messages
naming the URL and model, and API key kept out of every message. A response with the
wrong number of vectors or the wrong dimension is retried too (a proxy can answer from the
wrong model); when the retries are spent, `EmbeddingError` says what was wrong and what
to check. There is never a silent fallback to another strategy: a failed embedding fails
the ICL evaluation.

Cache: one SQLite file (transactions make writes atomic and safe between concurrent runs),
keyed by the SHA-256 of (model, input_type, text), so a rerun embeds only new texts.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from resources.http import Retryable
from resources.openai_compatible import EndpointError, OpenAICompatibleEndpoint


class EmbeddingError(EndpointError):
    """Embeddings could not be had; the message names the endpoint, model and remedy."""


class _WireEmbedding(BaseModel):
    model_config = ConfigDict(extra="ignore")
    index: int
    embedding: list[float]


class EmbeddingsResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: list[_WireEmbedding]


class EmbeddingClient(OpenAICompatibleEndpoint):
    """``embed(texts)``: one unit-agnostic row per text, from the cache or the endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        cache_path: Path,
        api_key: str | None = None,
        input_type: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 64,
        timeout_s: float = 60,
        max_retries: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        super().__init__(
            base_url, model, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s
        )
        self.cache_path = Path(cache_path)
        self.input_type = input_type
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.requests_made = 0  # endpoint calls that returned vectors (reruns should make none)

    @property
    def embeddings_url(self) -> str:
        return f"{self.base_url}/embeddings"

    def embed(self, texts: list[str]) -> np.ndarray:
        """A (len(texts) x dimensions) float32 array; raises EmbeddingError."""
        keys = [self._key(text) for text in texts]
        with closing(self._cache()) as cache:
            vectors = self._cached(cache, set(keys))
            dimension = self.dimensions or self._cached_dimension(cache)
            missing = list(dict.fromkeys(text for text, key in zip(texts, keys) if key not in vectors))
            with self._client() as client:
                for start in range(0, len(missing), self.batch_size):
                    batch = missing[start : start + self.batch_size]
                    fresh = self._request(client, batch, dimension)
                    dimension = dimension or fresh.shape[1]
                    rows = [(self._key(t), self.model, fresh.shape[1], v.tobytes()) for t, v in zip(batch, fresh)]
                    with cache:  # one transaction per batch: a failure keeps what came before
                        cache.executemany("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?)", rows)
                    vectors.update({row[0]: vector for row, vector in zip(rows, fresh)})
        if not texts:
            return np.zeros((0, dimension or 0), dtype=np.float32)
        wrong = {len(vectors[key]) for key in keys} - {dimension}
        if wrong:
            raise EmbeddingError(
                f"the embeddings cache {self.cache_path} holds {sorted(wrong)}-dimensional vectors for model "
                f"{self.model} but {dimension} are expected: the model behind the name changed? delete the cache "
                "file (it is rebuilt) or set FLYWHEEL_EMBEDDINGS_DIMENSIONS"
            )
        return np.stack([vectors[key] for key in keys])

    # -- internals
    def _key(self, text: str) -> str:
        return hashlib.sha256(json.dumps([self.model, self.input_type, text]).encode()).hexdigest()

    def _cache(self) -> sqlite3.Connection:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache = sqlite3.connect(self.cache_path, timeout=60)
        with cache:
            cache.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, model TEXT, dimension INTEGER, vector BLOB)"
            )
        return cache

    def _cached(self, cache: sqlite3.Connection, keys: set[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        wanted = sorted(keys)
        for start in range(0, len(wanted), 500):  # SQLite bounds the parameters of one query
            chunk = wanted[start : start + 500]
            rows = cache.execute(
                f"SELECT key, vector FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return found

    def _cached_dimension(self, cache: sqlite3.Connection) -> int | None:
        row = cache.execute("SELECT dimension FROM embeddings WHERE model = ? LIMIT 1", (self.model,)).fetchone()
        return row[0] if row else None

    def _request(self, client: httpx.Client, texts: list[str], dimension: int | None) -> np.ndarray:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.input_type:
            body["input_type"] = self.input_type
        try:
            vectors = self._with_retries(lambda: self._post_once(client, body, dimension))
        except EndpointError as error:
            raise EmbeddingError(
                f"{error}. The ICL strategy 'embedding' needs this endpoint: check FLYWHEEL_EMBEDDINGS_BASE_URL, "
                "FLYWHEEL_EMBEDDINGS_MODEL (and FLYWHEEL_EMBEDDINGS_DIMENSIONS), then re-run the evaluation; "
                "or set FLYWHEEL_ICL_STRATEGY=lexical"
            ) from None
        self.requests_made += 1
        return vectors

    def _post_once(self, client: httpx.Client, body: dict[str, Any], dimension: int | None) -> np.ndarray:
        payload = self._send(client, "POST", self.embeddings_url, body)
        where = f"{self.embeddings_url} (model {self.model})"
        try:
            data = sorted(EmbeddingsResponse.model_validate(payload).data, key=lambda item: item.index)
        except ValidationError as error:
            raise Retryable(self._invalid(self.embeddings_url, error), ambiguous=False) from None
        count = len(body["input"])
        if [item.index for item in data] != list(range(count)):
            raise Retryable(f"{where} returned {len(data)} embeddings for {count} inputs", ambiguous=False)
        sizes = {len(item.embedding) for item in data}
        expected = dimension or len(data[0].embedding)
        if sizes != {expected} or expected == 0:
            raise Retryable(
                f"{where} returned embeddings of dimension {sorted(sizes)}, expected {expected}", ambiguous=False
            )
        return np.asarray([item.embedding for item in data], dtype=np.float32)


class EmbeddingsResource(dg.ConfigurableResource):
    """The embeddings endpoint of the `embedding` ICL strategy (unset: that strategy is off)."""

    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL (…/v1).")
    model: str | None = Field(default=None, description="Embedding model name sent to the endpoint.")
    api_key: str | None = Field(default=None, description="Set with EnvVar, never inline.")
    input_type: str | None = Field(default=None, description="Sent as input_type (NIM retrieval models: query).")
    dimensions: int | None = Field(default=None, description="Expected vector size; checked on every response.")
    cache_path: str = Field(description="SQLite file of cached embeddings.")
    timeout_s: float = 60
    max_retries: int = 4

    def client(self) -> EmbeddingClient | None:
        if not self.base_url or not self.model:
            return None
        return EmbeddingClient(
            self.base_url,
            self.model,
            cache_path=Path(self.cache_path),
            api_key=self.api_key,
            input_type=self.input_type,
            dimensions=self.dimensions,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
        )
