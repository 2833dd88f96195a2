"""How GPU work is scheduled: one Dagster pool, and pod settings for Kubernetes.

The `gpu` pool's limit (`dagster instance concurrency set gpu N`, or `concurrency.pools`
in dagster.yaml) is the number of GPU steps that may run at once, across all runs. On
Kubernetes (`k8s_job_executor`), each GPU step's pod (LoRA training, the evaluations) gets,
through the `dagster-k8s/config` op tag:

- one GPU, and a toleration of the usual GPU node taint;
- CPU and memory with requests = limits (Guaranteed QoS: the last pods a node evicts, and
  torch sizes its thread pool from the CPU limit): FLYWHEEL_GPU_STEP_CPU (default 4) and
  FLYWHEEL_GPU_STEP_MEMORY (default 24Gi, an 8B model's bf16 weights on the host with room
  to spare, and still within an 8-vCPU/32-GiB GPU node);
- the CUDA image FLYWHEEL_GPU_STEP_IMAGE, when set; the run pod and the CPU steps keep the
  code location's image, which then needs no CUDA.

Everything else of a step pod (security context, CPU steps' resources, pull secrets) comes
from the run launcher's config (deploy/dagster.yaml, or the chart's runLauncher values).
"""

import os
import re
from collections.abc import Mapping

from flywheel_assets.settings import SettingsError, load_settings

GPU_POOL = "gpu"

# a Kubernetes resource quantity: 4, 500m, 1.5, 24Gi, 32G
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _quantity(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name, "").strip() or default
    if not _QUANTITY.match(value):
        raise SettingsError(f"{name}={value!r} is not a Kubernetes quantity (e.g. 4, 500m, 24Gi)")
    return value


def gpu_step_k8s_config(environ: Mapping[str, str]) -> dict:
    """The `dagster-k8s/config` op tag of a GPU step, from the FLYWHEEL_GPU_STEP_* variables."""
    cpu = _quantity(environ, "FLYWHEEL_GPU_STEP_CPU", "4")
    memory = _quantity(environ, "FLYWHEEL_GPU_STEP_MEMORY", "24Gi")
    container = {
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": "1"},
        }
    }
    image = environ.get("FLYWHEEL_GPU_STEP_IMAGE", "").strip()
    if image:
        container["image"] = image
    return {
        "dagster-k8s/config": {
            "container_config": container,
            "pod_spec_config": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            },
        }
    }


# With the NeMo backend the GPU work runs on NeMo: a step pod needs no GPU of its own.
GPU_OP_TAGS = {} if load_settings().backend == "nemo" else gpu_step_k8s_config(os.environ)
