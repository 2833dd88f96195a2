"""NeMo Data Store client: namespaces and dataset repos with files, through the Hugging
Face Hub-compatible API rooted at ``{datastore_base_url}/v1/hf``.

NVIDIA documents uploads with ``huggingface_hub.HfApi(endpoint=...)``. This client speaks
the same Hub protocol itself, and ``tests/test_nemo_datastore_protocol.py`` proves it
sends what ``HfApi`` sends (it drives the installed ``huggingface_hub`` against the
emulator and compares every request). Why not ``HfApi`` itself: ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``) makes it refuse every request, even to a custom endpoint, and
the flag is process-wide: turning it off for uploads would also let the local backend's
``transformers`` download weights in the same process; its retries and errors would differ
from every other NeMo client here; and with ``hf_xet`` installed it may try Xet, which a
Data Store does not speak. The calls, as ``huggingface_hub`` 2.x sends them:

- ``POST /v1/datastore/namespaces`` (form field ``namespace``): create the namespace.
- ``POST /v1/hf/api/repos/create`` ``{name, organization, type: "dataset"}``: create a
  repo (409: exists, fine).
- ``POST /v1/hf/api/datasets/{ns}/{name}/preupload/main`` ``{files: [{path, sample, size}]}``
  -> per file ``uploadMode`` (``regular`` | ``lfs``) and the ``oid`` of the file already
  there (unchanged files are skipped).
- LFS files: ``POST /v1/hf/datasets/{ns}/{name}.git/info/lfs/objects/batch`` (git-lfs
  batch API, sha256 oids; we offer only the ``basic`` transfer) -> a bare ``PUT`` of each
  object to the ``upload`` href it gives (no headers, no API key: the href is presigned),
  then ``POST {oid, size}`` to its ``verify`` href with our API key.
- ``POST /v1/hf/api/datasets/{ns}/{name}/commit/main`` (NDJSON: a ``header`` line, then
  ``file`` lines with base64 content or ``lfsFile`` lines with the sha256 oid): one
  commit with all files. Retrying a commit is harmless: the same files again.
- ``GET /v1/hf/datasets/{ns}/{name}/resolve/main/{path}``: read a file back.
- ``DELETE /v1/hf/api/repos/delete`` ``{name, organization, type}``: delete the repo.

Training and evaluation services read these files as ``hf://datasets/{ns}/{name}/{path}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote

from resources.nemo.transport import NemoHTTPError, ServiceClient, Wire, says_exists, status_is

REVISION = "main"


class PreuploadFile(Wire):
    path: str
    uploadMode: Literal["regular", "lfs"] | str
    shouldIgnore: bool = False
    oid: str | None = None


class PreuploadResponse(Wire):
    files: list[PreuploadFile]


class LfsAction(Wire):
    href: str


class LfsObjectError(Wire):
    code: int | None = None
    message: str = ""


class LfsObject(Wire):
    oid: str
    size: int
    actions: dict[str, LfsAction] | None = None
    error: LfsObjectError | None = None


class LfsBatchResponse(Wire):
    objects: list[LfsObject]
    transfer: str | None = None


class CommitResponse(Wire):
    commitOid: str | None = None
    commitUrl: str | None = None


def git_blob_oid(data: bytes) -> str:
    """The git object id of a regular file (what the Hub reports for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_repo_path(path: str) -> str:
    """A file path inside a repo: relative, '/'-separated, no '..' or empty parts."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid file path in dataset repo: {path!r}")
    return path


class DataStoreClient(ServiceClient):
    service = "Data Store"

    # -- namespaces and repos
    def create_namespace(self, namespace: str) -> bool:
        """Create ``namespace``; False when it already existed."""
        response = self.request(
            "POST",
            "/v1/datastore/namespaces",
            data={"namespace": namespace},
            accept=lambda r: says_exists(r) or r.status_code == 422,
        )
        return response.status_code < 400

    def create_repo(self, namespace: str, name: str) -> bool:
        """Create the dataset repo ``{namespace}/{name}``; False when it already existed."""
        response = self.request(
            "POST",
            "/v1/hf/api/repos/create",
            json={"name": name, "organization": namespace, "type": "dataset"},
            accept=says_exists,
        )
        return response.status_code < 400

    def delete_repo(self, namespace: str, name: str) -> bool:
        """Delete the repo; False when there was none."""
        response = self.request(
            "DELETE",
            "/v1/hf/api/repos/delete",
            json={"name": name, "organization": namespace, "type": "dataset"},
            accept=status_is(404),
        )
        return response.status_code < 400

    # -- files
    def upload_files(
        self, namespace: str, name: str, files: Mapping[str, bytes], *, message: str = "flywheel upload"
    ) -> list[str]:
        """Commit ``files`` (path in repo -> bytes) to the repo in one commit; files whose
        content is already there are skipped. Returns the paths actually committed."""
        repo = f"{quote(namespace, safe='')}/{quote(name, safe='')}"
        paths = [check_repo_path(path) for path in files]
        if not paths:
            return []
        preupload_path = f"/v1/hf/api/datasets/{repo}/preupload/{REVISION}"
        payload = {
            "files": [
                {"path": path, "sample": base64.b64encode(files[path][:512]).decode(), "size": len(files[path])}
                for path in paths
            ]
        }
        preupload = self.parse(
            PreuploadResponse, self.request_json("POST", preupload_path, json=payload), f"POST {preupload_path}"
        )
        modes = {entry.path: entry for entry in preupload.files}
        lines: list[dict] = [{"key": "header", "value": {"summary": message, "description": ""}}]
        lfs: dict[str, bytes] = {}
        committed = []
        for path in paths:
            data = files[path]
            entry = modes.get(path)
            mode = entry.uploadMode if entry else "regular"
            if entry and entry.shouldIgnore:
                continue
            if mode == "lfs" and data:
                oid = hashlib.sha256(data).hexdigest()
                if entry and entry.oid == oid:
                    continue  # unchanged
                lfs[oid] = data
                lines.append(
                    {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": len(data)}}
                )
            else:
                if entry and entry.oid == git_blob_oid(data):
                    continue  # unchanged
                lines.append(
                    {
                        "key": "file",
                        "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"},
                    }
                )
            committed.append(path)
        if not committed:
            return []
        if lfs:
            self._upload_lfs(repo, lfs)
        body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        path = f"/v1/hf/api/datasets/{repo}/commit/{REVISION}"
        self.parse(
            CommitResponse,
            self.request_json("POST", path, content=body, headers={"Content-Type": "application/x-ndjson"}),
            f"POST {path}",
        )
        return committed

    def _upload_lfs(self, repo: str, objects: Mapping[str, bytes]) -> None:
        path = f"/v1/hf/datasets/{repo}.git/info/lfs/objects/batch"
        lfs_headers = {"Accept": "application/vnd.git-lfs+json", "Content-Type": "application/vnd.git-lfs+json"}
        batch = self.parse(
            LfsBatchResponse,
            self.request_json(
                "POST",
                path,
                headers=lfs_headers,
                content=json.dumps(
                    {
                        "operation": "upload",
                        "transfers": ["basic"],
                        "objects": [{"oid": oid, "size": len(data)} for oid, data in objects.items()],
                        "hash_algo": "sha256",
                        "ref": {"name": REVISION},
                    }
                ).encode(),
            ),
            f"POST {path}",
        )
        for obj in batch.objects:
            if obj.error is not None:
                raise self._lfs_error(obj)
            if not obj.actions or "upload" not in obj.actions:
                continue  # the store has this object already
            # as huggingface_hub: the upload goes to the (presigned) href as a bare PUT,
            # without the action's headers or our key; verify is an API call with our key
            self.request("PUT", self._absolute(obj.actions["upload"].href), content=objects[obj.oid])
            verify = obj.actions.get("verify")
            if verify is not None:
                self.request("POST", self._own_path(verify.href), json={"oid": obj.oid, "size": obj.size})

    def _absolute(self, href: str) -> str:
        return href if href.startswith(("http://", "https://")) else f"{self.base_url}{href}"

    def _own_path(self, href: str) -> str:
        """A link on the store's own base URL as a path, so it gets our key; a link to
        another host stays absolute and does not (our key goes to the store only)."""
        absolute = self._absolute(href)
        return absolute[len(self.base_url) :] if absolute.startswith(f"{self.base_url}/") else absolute

    def _lfs_error(self, obj: LfsObject) -> NemoHTTPError:
        error = obj.error or LfsObjectError()
        return NemoHTTPError(
            f"{self.service}: LFS upload of object {obj.oid[:12]} refused: {error.code} {error.message}",
            service=self.service,
            status_code=error.code,
            detail=error.message,
        )

    def download_file(self, namespace: str, name: str, path: str) -> bytes:
        check_repo_path(path)
        repo = f"{quote(namespace, safe='')}/{quote(name, safe='')}"
        response = self.request("GET", f"/v1/hf/datasets/{repo}/resolve/{REVISION}/{quote(path)}")
        return response.content

    @staticmethod
    def files_url(namespace: str, name: str, path: str | None = None) -> str:
        """How Customizer and Evaluator name the repo (or one file in it)."""
        return f"hf://datasets/{namespace}/{name}" + (f"/{path}" if path else "")
