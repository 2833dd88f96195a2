"""How GPU work is scheduled: one Dagster pool, and pod settings for Kubernetes.

The `gpu` pool's limit (`dagster instance concurrency set gpu N`, or `concurrency.pools`
in dagster.yaml) is the number of GPU steps that may run at once, across all runs. On
Kubernetes (`k8s_job_executor`), each GPU step's pod asks for one GPU and tolerates the
usual GPU node taint, through the `dagster-k8s/config` op tag.
"""

from flywheel_assets.settings import load_settings

GPU_POOL = "gpu"

_K8S_GPU_STEP = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        },
    }
}

# With the NeMo backend the GPU work runs on NeMo: a step pod needs no GPU of its own.
GPU_OP_TAGS = {} if load_settings().backend == "nemo" else _K8S_GPU_STEP
