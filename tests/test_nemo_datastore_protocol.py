"""The Data Store client sends what ``huggingface_hub`` sends.

NVIDIA documents Data Store uploads with ``HfApi(endpoint=f"{datastore}/v1/hf")``; the
project speaks the same Hub protocol itself (see `resources.nemo.datastore` for why). This
test drives the installed ``huggingface_hub`` against the emulator in a subprocess (Hub
access on, Xet off: a Data Store does not speak Xet), records every request it makes, then
has `DataStoreClient` upload the same files and requires the same requests: paths, query,
the headers a server acts on (Authorization, Content-Type, Accept) and bodies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nemo_emulator import RecordedRequest, nemo_emulator

from resources.nemo.datastore import DataStoreClient
from resources.nemo.transport import RetryPolicy

KEY = "nvapi-hub-key-3"
NS, REPO = "dfwbp", "ds"
FILES = {"training/training.jsonl": b'{"messages": []}\n' * 40, "validation/validation.jsonl": b"{}\n"}
MESSAGE = "flywheel upload"
HEADERS_THAT_MATTER = ("authorization", "content-type", "accept")

# what the reference does (NVIDIA's docs and the blueprint's DataUploader), with one commit
HF_UPLOAD = """
import sys, json
from huggingface_hub import CommitOperationAdd, HfApi
endpoint, key, files, message = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
api = HfApi(endpoint=endpoint + "/v1/hf", token=key)
api.create_repo("{ns}/{repo}", repo_type="dataset", exist_ok=True)
api.create_commit("{ns}/{repo}", repo_type="dataset", commit_message=message,
                  operations=[CommitOperationAdd(path, data.encode()) for path, data in files.items()])
""".replace("{ns}", NS).replace("{repo}", REPO)


def comparable(request: RecordedRequest) -> tuple:
    content_type = request.headers.get("content-type", "")
    if "ndjson" in content_type:
        body = [json.loads(line) for line in request.body.splitlines() if line.strip()]
    elif "json" in content_type:
        body = json.loads(request.body)
    else:
        body = request.body
    if isinstance(body, dict) and body.get("operation") == "upload":
        # the one difference: huggingface_hub also offers the "multipart" transfer, whose
        # chunked uploads we do not implement; offering only "basic" (which every git-lfs
        # server supports) makes the server choose it
        assert body.pop("transfers") in (["basic"], ["basic", "multipart"])
    headers = {name: request.headers[name] for name in HEADERS_THAT_MATTER if name in request.headers}
    if request.method == "PUT" or content_type == "application/json":
        headers.pop("accept", None)  # '*/*' or absent: the same to a server
    return request.method, request.path, request.query, headers, body


def hub_requests() -> list[tuple]:
    with nemo_emulator(api_key=KEY) as emu:
        emu.lfs_threshold = 64  # the training file goes through LFS, the other one is regular
        emu.datastore_namespaces.add(NS)
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
        files = json.dumps({path: data.decode() for path, data in FILES.items()})
        done = subprocess.run(
            [sys.executable, "-c", HF_UPLOAD, emu.datastore_base_url, KEY, files, MESSAGE],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert {path: emu.repos[f"{NS}/{REPO}"][path] for path in FILES} == FILES
        assert emu.lfs_paths[f"{NS}/{REPO}"] == {"training/training.jsonl"}
        return [comparable(request) for request in emu.requests]


def client_requests() -> list[tuple]:
    with nemo_emulator(api_key=KEY) as emu:
        emu.lfs_threshold = 64
        emu.datastore_namespaces.add(NS)
        with DataStoreClient(emu.datastore_base_url, api_key=KEY, retry=RetryPolicy(max_retries=0)) as store:
            store.create_repo(NS, REPO)
            assert sorted(store.upload_files(NS, REPO, FILES, message=MESSAGE)) == sorted(FILES)
        assert emu.repos[f"{NS}/{REPO}"] == FILES
        return [comparable(request) for request in emu.requests]


def test_the_client_sends_the_requests_huggingface_hub_sends():
    expected = hub_requests()
    assert [(method, path) for method, path, *_ in expected] == [
        ("POST", "/v1/hf/api/repos/create"),
        ("POST", f"/v1/hf/api/datasets/{NS}/{REPO}/preupload/main"),
        ("POST", f"/v1/hf/datasets/{NS}/{REPO}.git/info/lfs/objects/batch"),
        ("PUT", expected[3][1]),
        ("POST", f"{expected[3][1]}/verify"),
        ("POST", f"/v1/hf/api/datasets/{NS}/{REPO}/commit/main"),
    ]
    put = expected[3]
    assert put[3] == {} and put[2]  # a bare PUT to the presigned URL: no key, no headers
    assert expected[4][3]["authorization"] == f"Bearer {KEY}"  # verify carries the token
    assert client_requests() == expected
