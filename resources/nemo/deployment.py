"""NeMo Deployment Management client (on ``nemo_base_url``) and the `nim_deployment`
context manager.

- ``POST /v1/deployment/model-deployments`` ``{name, namespace, config: {model,
  nim_deployment: {image_name, image_tag, pvc_size, gpu, additional_envs}}}``. A repeat
  create is idempotent: 409, or any error whose text says the deployment already exists
  (the reference notes the service answers 500 "model deployment already exists").
- ``GET /v1/deployment/model-deployments/{ns}/{name}`` -> ``{status_details: {status}}``;
  waited on until ``ready``; ``failed``, ``cancelled`` and ``unknown`` end the wait with
  `NemoJobFailed` (and the block's teardown deletes the deployment).
- ``DELETE /v1/deployment/model-deployments/{ns}/{name}`` (404: already gone, fine).

``with nim_deployment(...) as model:`` deploys, waits until ready and until the NIM proxy
lists the model, and deletes the deployment when the block ends: on success, on an
exception, on KeyboardInterrupt and on Dagster's run cancellation
(``DagsterExecutionInterruptedError``, a BaseException), since teardown sits in an
``except BaseException`` / ``else`` pair around the ``yield``. A failed teardown does not
hide the block's own exception (it is added to it as a note).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from pydantic import Field

from resources.nemo.nim import NimProxyClient
from resources.nemo.transport import (
    NemoError,
    NemoJobFailed,
    Progress,
    ProgressCallback,
    ServiceClient,
    Wire,
    first_text,
    poll,
    says_exists,
    status_is,
)

# states a deployment ends in without getting ready: waiting longer cannot help
FAILED_STATES = frozenset({"failed", "error", "cancelled", "canceled", "unknown"})


class NimDeploymentConfig(Wire):
    image_name: str
    image_tag: str
    pvc_size: str | None = None
    gpu: int | None = None
    additional_envs: dict[str, str] = Field(default_factory=dict)


class DeploymentConfig(Wire):
    model: str
    nim_deployment: NimDeploymentConfig


class ModelDeploymentRequest(Wire):
    name: str
    namespace: str
    config: DeploymentConfig


class DeploymentStatusDetails(Wire):
    status: str
    description: str | None = None


class ModelDeployment(Wire):
    status_details: DeploymentStatusDetails
    name: str | None = None
    namespace: str | None = None

    @property
    def state(self) -> str:
        return self.status_details.status.strip().lower()


def deployment_name(model: str) -> str:
    """A deployment name for a model id: no slashes (as the reference), lower case,
    only letters, digits and dashes, at most 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower().replace("/", "-")).strip("-")
    return name[:63].rstrip("-") or "nim"


class DeploymentClient(ServiceClient):
    service = "Deployment Management"

    def _path(self, namespace: str, name: str) -> str:
        return f"/v1/deployment/model-deployments/{quote(namespace, safe='')}/{quote(name, safe='')}"

    def create(self, request: ModelDeploymentRequest) -> bool:
        """Deploy; False when a deployment of that name already existed (idempotent)."""
        response = self.request(
            "POST", "/v1/deployment/model-deployments", json=request.model_dump(exclude_none=True), accept=says_exists
        )
        return response.status_code < 400

    def get(self, namespace: str, name: str) -> ModelDeployment | None:
        path = self._path(namespace, name)
        response = self.request("GET", path, accept=status_is(404))
        if response.status_code == 404:
            return None
        return self.parse(ModelDeployment, self.json_of(response, f"GET {path}"), f"GET {path}")

    def delete(self, namespace: str, name: str) -> bool:
        """Shut the deployment down; False when there was none."""
        response = self.request("DELETE", self._path(namespace, name), accept=status_is(404))
        return response.status_code < 400

    def wait_ready(
        self,
        namespace: str,
        name: str,
        *,
        timeout_s: float,
        interval_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> ModelDeployment:
        subject = f"deployment {namespace}/{name}"

        def fetch() -> ModelDeployment:
            found = self.get(namespace, name)
            if found is None:
                raise NemoError(f"{self.service}: {subject} disappeared while waiting for it", service=self.service)
            return found

        def done(deployment: ModelDeployment) -> bool:
            if deployment.state in FAILED_STATES:
                detail = first_text([deployment.status_details.description]) or "no detail given"
                raise NemoJobFailed(
                    f"{self.service}: {subject} {deployment.state}: {detail}",
                    service=self.service,
                    job_id=f"{namespace}/{name}",
                    status=deployment.state,
                    detail=detail,
                )
            return deployment.state == "ready"

        return poll(
            fetch,
            service=self.service,
            subject=subject,
            observe=lambda d: (d.state, None, d.status_details.description),
            done=done,
            timeout_s=timeout_s,
            interval_s=interval_s,
            on_progress=on_progress,
        )


@contextmanager
def nim_deployment(
    deployments: DeploymentClient,
    nim: NimProxyClient,
    request: ModelDeploymentRequest,
    *,
    served_model: str | None = None,
    ready_timeout_s: float = 3600,
    sync_timeout_s: float = 1800,
    interval_s: float = 5,
    on_progress: ProgressCallback | None = None,
) -> Iterator[str]:
    """Deploy ``request``, wait until it is ready and the NIM proxy lists
    ``served_model`` (default: the deployed model; pass a customization's output model to
    wait for its adapter), yield that model id, and delete the deployment afterwards,
    whatever ends the block."""
    namespace, name = request.namespace, request.name
    model = served_model or request.config.model

    def teardown() -> None:
        existed = deployments.delete(namespace, name)
        if on_progress is not None:
            on_progress(
                Progress(
                    deployments.service, f"deployment {namespace}/{name}", "deleted" if existed else "already gone"
                )
            )

    try:
        deployments.create(request)
        deployments.wait_ready(
            namespace, name, timeout_s=ready_timeout_s, interval_s=interval_s, on_progress=on_progress
        )
        nim.wait_for_model(model, timeout_s=sync_timeout_s, interval_s=interval_s, on_progress=on_progress)
        yield model
    except BaseException as error:  # also KeyboardInterrupt, DagsterExecutionInterruptedError, GeneratorExit
        try:
            teardown()
        except Exception as cleanup_error:  # keep the original error in front
            error.add_note(f"cleanup: could not delete deployment {namespace}/{name}: {cleanup_error}")
        raise
    else:
        teardown()
