"""deploy/: the instance, the Kubernetes launch path of runs and steps, compose, Helm values, image.

Kubernetes objects are built with dagster-k8s itself (its config schema, K8sRunLauncher,
K8sContainerContext, construct_dagster_k8s_job) from the real assets' op tags and the code
location as the chart deploys it, so what is asserted is the pod a run or step would get,
without a cluster. The chart itself is not here: its rendering is mirrored (chart_instance,
chart_container_context), and checked against the real chart only where helm and the chart
are at hand (test_the_pinned_chart_renders_every_setting_of_the_instance).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import dagster_instance_config
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._serdes import ConfigurableClassData
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

from flywheel_assets.core.ingest import read_partition
from flywheel_assets.definitions import build_resources, defs
from flywheel_assets.evaluate import base_eval
from flywheel_assets.gpu import GPU_POOL, gpu_step_k8s_config
from flywheel_assets.jobs import GPU_RUN_TAGS
from flywheel_assets.settings import SettingsError, load_settings
from flywheel_assets.split import train_dataset
from flywheel_assets.train import lora_adapter

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# the chart's version is Dagster's (README: helm install ... --version)
(DAGSTER_VERSION,) = [d.split("==")[1] for d in PYPROJECT["project"]["dependencies"] if d.startswith("dagster==")]
K8S_ENV = {  # what the chart (or an operator without it) sets for deploy/dagster.yaml
    "DAGSTER_HOME": "/opt/dagster/dagster_home",
    "DAGSTER_K8S_JOB_NAMESPACE": "flywheel",
    "DAGSTER_K8S_SERVICE_ACCOUNT": "dagster",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "flywheel-dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
}


def deploy_instance_module():
    """deploy/instance.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("deploy_instance", DEPLOY / "instance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def snake_key(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def snake(value):
    """Helm's camelCase keys as dagster.yaml's snake_case (the chart does the same)."""
    if isinstance(value, dict):
        return {snake_key(k): snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake(v) for v in value]
    return value


def readme_deploy_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Deploying on Kubernetes", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def production():
    return deploy_instance_module().production()


@pytest.fixture(scope="module")
def helm():
    return load_yaml(DEPLOY / "helm" / "values.yaml")


@pytest.fixture
def k8s_env(monkeypatch):
    for name, value in K8S_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def launcher(production, k8s_env, tmp_path) -> K8sRunLauncher:
    """The run launcher of deploy/dagster.yaml, loaded through its config schema.

    Outside a cluster the in-cluster config can't load, so only that is swapped for a
    kubeconfig file (nothing connects to it).
    """
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            }
        )
    )
    section = production["run_launcher"]
    config = {**section["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    return ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(config)).rehydrate(K8sRunLauncher)


def code_location(helm: dict) -> dict:
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    return deployment


def code_location_env(helm: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in code_location(helm)["env"]}


def chart_container_context(helm: dict) -> dict:
    """What the chart hands to launched runs for the user deployment (includeConfigInLaunchedRuns),
    as its dagsterUserDeployments.k8sContainerContext helper writes it."""
    deployment = code_location(helm)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "image_pull_secrets": helm["dagster-user-deployments"].get("imagePullSecrets", []),
        "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
        "volume_mounts": deployment.get("volumeMounts", []),
        "volumes": deployment.get("volumes", []),
        "namespace": K8S_ENV["DAGSTER_K8S_JOB_NAMESPACE"],
        "env": deployment.get("env", []),
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if deployment.get("resources"):
        k8s["resources"] = deployment["resources"]
    return {"k8s": k8s}


def chart_run(helm: dict) -> dg.DagsterRun:
    """A train_and_evaluate run of the code location as the chart deploys it: its image (the
    chart sets it as the code server's current image) and its container context."""
    image = code_location(helm)["image"]
    repository = RepositoryPythonOrigin(
        executable_path="python",
        code_pointer=ModuleCodePointer(PYPROJECT["tool"]["dagster"]["module_name"], "defs"),
        container_image=f"{image['repository']}:{image['tag']}",
        container_context=chart_container_context(helm),
    )
    return dg.DagsterRun(
        job_name="train_and_evaluate",
        tags=GPU_RUN_TAGS,
        job_code_origin=JobPythonOrigin("train_and_evaluate", repository),
    )


def pod_spec(context: K8sContainerContext, job_config, component: str):
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", f"execute_{component.removesuffix('_worker')}"],
        job_name=f"dagster-{component}",
        pod_name=f"dagster-{component}",
        component=component,
        user_defined_k8s_config=context.run_k8s_config,
    )
    return job.spec.template.spec


def run_pod(launcher: K8sRunLauncher, helm: dict):
    """The run worker's pod, built as K8sRunLauncher.launch_run builds it."""
    run = chart_run(helm)
    context = launcher.get_container_context_for_run(run)
    job_config = context.get_k8s_job_config(run.job_code_origin.repository_origin.container_image, launcher)
    return pod_spec(context, job_config, "run_worker")


def step_pod(launcher: K8sRunLauncher, helm: dict, op_tags: dict):
    """The pod the k8s_job_executor would create for a step with `op_tags`, built the way
    K8sStepHandler does: run launcher + code location context, then the op's own tags; the
    image is the code location's unless the op's tags name one."""
    run = chart_run(helm)
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
    job_config = context.get_k8s_job_config(None, launcher)
    job_config = job_config.with_image(run.job_code_origin.repository_origin.container_image)
    return pod_spec(context, job_config, "step_worker")


def gpu_step_tags(helm: dict, asset: dg.AssetsDefinition) -> dict:
    """`asset`'s op tags as the code location computes them from the chart's env (gpu.py);
    Dagster keeps a tag's dict as JSON."""
    tags = gpu_step_k8s_config(code_location_env(helm))
    return {**asset.op.tags, **{key: json.dumps(value) for key, value in tags.items()}}


# --- the instance --------------------------------------------------------------------------


def test_production_instance_loads_with_dagsters_schema(tmp_path):
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["max_runtime_seconds"] > 0
    assert config["run_monitoring"]["max_resume_run_attempts"] > 0
    db = dict(config["storage"]["postgres"]["postgres_db"])
    # psycopg2 is what dagster-postgres installs; SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3
    assert db.pop("scheme") == "postgresql+psycopg2"
    assert {key: value["env"] for key, value in db.items()} == {
        "hostname": "DAGSTER_PG_HOST",
        "port": "DAGSTER_PG_PORT",
        "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD",
        "db_name": "DAGSTER_PG_DB",
    }


def test_run_launcher_config_passes_the_k8s_run_launcher_schema(production, k8s_env):
    section = production["run_launcher"]
    assert (section["module"], section["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = process_config(K8sRunLauncher.config_type(), section["config"])
    assert result.success, result.errors
    assert result.value["job_namespace"] == "flywheel"
    assert result.value["load_incluster_config"] is True


def test_gpu_runs_are_tagged_for_the_run_queue_limit(production):
    limited = {limit["key"] for limit in production["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert set(GPU_RUN_TAGS) <= limited
    repo = defs.get_repository_def()
    gpu_job = repo.get_job("train_and_evaluate")
    assert gpu_job.tags.items() >= GPU_RUN_TAGS.items()
    assert {k.to_user_string() for k in gpu_job.asset_layer.selected_asset_keys} == {
        "lora_adapter",
        "base_eval",
        "icl_eval",
        "customized_eval",
    }
    sensor = repo.get_sensor_def("gpu_automation_sensor")
    assert sensor.run_tags.items() >= GPU_RUN_TAGS.items()
    assert {k.to_user_string() for k in sensor.asset_selection.resolve(repo.asset_graph)} == {
        "lora_adapter",
        "base_eval",
        "icl_eval",
        "customized_eval",
    }


def test_single_host_variant_only_drops_what_one_host_cant_do(production):
    single = deploy_instance_module().single_host()
    assert "run_launcher" not in single
    assert single["run_monitoring"]["max_resume_run_attempts"] == 0
    assert {k: v for k, v in single.items() if k != "run_monitoring"} == {
        k: v for k, v in production.items() if k not in ("run_launcher", "run_monitoring")
    }


# --- run and step pods on Kubernetes -------------------------------------------------------


@pytest.mark.parametrize("asset", [lora_adapter, base_eval], ids=lambda a: a.op.name)
def test_gpu_step_pod_gets_one_gpu_its_cpu_and_memory_and_the_cuda_image(launcher, helm, asset):
    assert asset.op.pool == GPU_POOL
    assert json.loads(asset.op.tags["dagster-k8s/config"]) == gpu_step_k8s_config(os.environ)["dagster-k8s/config"]
    location_env = code_location_env(helm)
    pod = step_pod(launcher, helm, gpu_step_tags(helm, asset))
    (container,) = pod.containers
    # requests = limits (Guaranteed QoS); the launcher's CPU-step resources are replaced, and
    # nothing from the code server's pod leaks in
    cpu_memory = {"cpu": location_env["FLYWHEEL_GPU_STEP_CPU"], "memory": location_env["FLYWHEEL_GPU_STEP_MEMORY"]}
    assert container.resources.requests == cpu_memory
    assert container.resources.limits == {**cpu_memory, "nvidia.com/gpu": "1"}
    assert container.image == location_env["FLYWHEEL_GPU_STEP_IMAGE"]
    assert any(
        t.key == "nvidia.com/gpu" and t.operator == "Exists" and t.effect == "NoSchedule" for t in pod.tolerations
    )
    # the run launcher's secret and the code location's env and shared volume reach the step
    assert "flywheel-secrets" in {e.secret_ref.name for e in container.env_from if e.secret_ref}
    env = {e.name: e.value for e in container.env}
    assert env["FLYWHEEL_EXECUTOR"] == "k8s" and env["FLYWHEEL_HOME"].startswith("/data")
    assert {(m.name, m.mount_path) for m in container.volume_mounts} >= {("flywheel-data", "/data")}
    assert any(
        v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "flywheel-data" for v in pod.volumes
    )


def test_cpu_step_and_run_pods_get_the_launchers_resources_and_the_cpu_image(launcher, helm, production):
    resources = production["run_launcher"]["config"]["resources"]
    image = code_location(helm)["image"]
    for pod in (step_pod(launcher, helm, train_dataset.op.tags), run_pod(launcher, helm)):
        (container,) = pod.containers
        assert container.resources.requests == resources["requests"]
        assert container.resources.limits == resources["limits"]
        assert "nvidia.com/gpu" not in container.resources.limits
        assert not any(t.key == "nvidia.com/gpu" for t in pod.tolerations or [])
        assert container.image == f"{image['repository']}:{image['tag']}"


def test_gpu_step_resources_and_image_come_from_the_environment():
    container = gpu_step_k8s_config(
        {
            "FLYWHEEL_GPU_STEP_CPU": "8",
            "FLYWHEEL_GPU_STEP_MEMORY": "64Gi",
            "FLYWHEEL_GPU_STEP_IMAGE": "r/f:1-cuda",
        }
    )["dagster-k8s/config"]["container_config"]
    assert container == {
        "resources": {
            "requests": {"cpu": "8", "memory": "64Gi"},
            "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"},
        },
        "image": "r/f:1-cuda",
    }
    defaults = gpu_step_k8s_config({"FLYWHEEL_GPU_STEP_CPU": " "})["dagster-k8s/config"]["container_config"]
    assert defaults["resources"]["requests"] == {"cpu": "4", "memory": "24Gi"}
    assert "image" not in defaults  # the code location's image
    with pytest.raises(SettingsError, match=re.escape("FLYWHEEL_GPU_STEP_MEMORY='24GB' is not a Kubernetes quantity")):
        gpu_step_k8s_config({"FLYWHEEL_GPU_STEP_MEMORY": "24GB"})


# volume types the `restricted` Pod Security Standard allows
RESTRICTED_VOLUMES = {
    "config_map",
    "csi",
    "downward_api",
    "empty_dir",
    "ephemeral",
    "persistent_volume_claim",
    "projected",
    "secret",
}


@pytest.mark.parametrize("kind", ["run", "cpu step", "gpu step"])
def test_run_and_step_pods_meet_the_restricted_pod_security_standard(launcher, helm, kind):
    pod = {
        "run": lambda: run_pod(launcher, helm),
        "cpu step": lambda: step_pod(launcher, helm, train_dataset.op.tags),
        "gpu step": lambda: step_pod(launcher, helm, gpu_step_tags(helm, lora_adapter)),
    }[kind]()
    security = pod.security_context
    assert security.run_as_non_root and security.run_as_user == 10001  # the image's user
    assert security.fs_group == 10001  # the shared volume is written as the image's group
    assert security.seccomp_profile.type == "RuntimeDefault"
    assert not (pod.host_network or pod.host_pid or pod.host_ipc)
    for container in [*pod.containers, *(pod.init_containers or [])]:
        assert container.security_context.allow_privilege_escalation is False
        assert container.security_context.capabilities.drop == ["ALL"]
        assert not container.security_context.capabilities.add and not container.security_context.privileged
    for volume in pod.volumes:
        assert {k for k, v in volume.to_dict().items() if v is not None and k != "name"} <= RESTRICTED_VOLUMES


def test_run_and_step_pods_pull_with_the_registry_secret(launcher, helm):
    pull_secrets = {s["name"] for s in helm["imagePullSecrets"]}
    assert pull_secrets == {s["name"] for s in helm["dagster-user-deployments"]["imagePullSecrets"]}
    for pod in (run_pod(launcher, helm), step_pod(launcher, helm, gpu_step_tags(helm, lora_adapter))):
        assert {s.name for s in pod.image_pull_secrets} == pull_secrets


def split_image(reference: str) -> tuple[str, str]:
    """registry/repository[:port]/name:tag[@digest] -> (repository, tag[@digest])."""
    return re.fullmatch(r"(.+?):([^/]+)", reference).groups()


def test_images_are_referenced_by_immutable_tags(helm, production):
    # `<project version>-<git commit>`, `-cuda` for the GPU build, optionally with a digest
    immutable = re.compile(
        rf"{re.escape(PYPROJECT['project']['version'])}-[0-9a-f]{{7,40}}(-cuda)?(@sha256:[0-9a-f]{{64}})?"
    )
    image = code_location(helm)["image"]
    gpu_repository, gpu_tag = split_image(code_location_env(helm)["FLYWHEEL_GPU_STEP_IMAGE"])
    for tag in (str(image["tag"]), gpu_tag):
        assert immutable.fullmatch(tag), tag
    # the same build, with the CUDA torch: CPU steps and the run pod never pull CUDA
    assert gpu_repository == image["repository"]
    assert gpu_tag.split("@")[0] == f"{str(image['tag']).split('@')[0]}-cuda"
    # a cached immutable image is the right one
    pull_policies = {
        image["pullPolicy"],
        helm["runLauncher"]["config"]["k8sRunLauncher"]["imagePullPolicy"],
        production["run_launcher"]["config"]["image_pull_policy"],
    }
    assert pull_policies == {"IfNotPresent"}


# --- Helm values ---------------------------------------------------------------------------


def chart_instance(helm: dict) -> dict:
    """The parts of the chart's rendered dagster.yaml that deploy/dagster.yaml also sets, as
    the chart's templates write them (instance ConfigMap, run launcher, concurrency)."""
    launcher = helm["runLauncher"]["config"]["k8sRunLauncher"]
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = helm["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    assert not coordinator.get("config", {}).get("queuedRunCoordinator"), "limits belong in concurrency.runs"
    assert helm["concurrency"]["enabled"]
    assert not helm["dagsterDaemon"]["runMonitoring"]["enabled"], "run_monitoring comes from additionalInstanceConfig"
    return {
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
        "concurrency": snake({k: v for k, v in helm["concurrency"].items() if k != "enabled"}),
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": launcher["loadInclusterConfig"],
                "image_pull_policy": launcher["imagePullPolicy"],
                "image_pull_secrets": helm["imagePullSecrets"],
                "env_secrets": [s["name"] for s in launcher["envSecrets"]],
                "fail_pod_on_run_failure": launcher["failPodOnRunFailure"],
                # Kubernetes objects go through verbatim
                "resources": launcher["resources"],
                "security_context": launcher["securityContext"],
                "run_k8s_config": {snake_key(k): v for k, v in launcher["runK8sConfig"].items()},
            },
        },
        "telemetry": helm["telemetry"],
        **helm["additionalInstanceConfig"],
    }


def test_helm_values_render_the_same_instance_as_dagster_yaml(helm, production):
    assert deploy_instance_module().check(chart_instance(helm)) == []
    assert helm["postgresql"]["postgresqlScheme"] == production["storage"]["postgres"]["postgres_db"]["scheme"]


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        # a chart version without the `concurrency` values block: no pool limit, no run limit
        pytest.param(lambda i: i.pop("concurrency"), "concurrency: missing", id="no concurrency block"),
        pytest.param(
            lambda i: i["concurrency"]["runs"].pop("tag_concurrency_limits"),
            "concurrency.runs.tag_concurrency_limits: missing",
            id="no run limit",
        ),
        pytest.param(
            lambda i: i["run_launcher"]["config"].pop("security_context"),
            "run_launcher.config.security_context: missing",
            id="no launcher securityContext",
        ),
        # run queue limits rendered on the coordinator too: Dagster refuses the instance
        pytest.param(
            lambda i: i["run_coordinator"].update(config={"max_concurrent_runs": -1}),
            "run_coordinator.config: {'max_concurrent_runs': -1} is not in deploy/dagster.yaml",
            id="limits on the coordinator",
        ),
    ],
)
def test_instance_check_names_what_the_chart_did_not_render(helm, tmp_path, capsys, change, reported):
    rendered = chart_instance(helm)
    change(rendered)
    # as `helm template --show-only templates/configmap-instance.yaml` prints it
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"dagster.yaml": yaml.safe_dump(rendered)}}
    path = tmp_path / "configmap-instance.yaml"
    path.write_text("---\n# Source: dagster/templates/configmap-instance.yaml\n" + yaml.safe_dump(configmap))
    assert deploy_instance_module().main(["check", str(path)]) == 1
    assert reported in capsys.readouterr().err.splitlines()[0]


@pytest.mark.skipif(
    not (shutil.which("helm") and os.environ.get("FLYWHEEL_DAGSTER_CHART")),
    reason="needs helm and FLYWHEEL_DAGSTER_CHART=<the dagster chart, .tgz or directory> (README)",
)
def test_the_pinned_chart_renders_every_setting_of_the_instance():
    chart = os.environ["FLYWHEEL_DAGSTER_CHART"]
    shown = subprocess.run(["helm", "show", "chart", chart], check=True, capture_output=True, text=True)
    assert yaml.safe_load(shown.stdout)["version"] == DAGSTER_VERSION
    rendered = subprocess.run(
        [
            "helm",
            "template",
            "flywheel",
            chart,
            "-n",
            "flywheel",
            "-f",
            str(DEPLOY / "helm" / "values.yaml"),
            "--show-only",
            "templates/configmap-instance.yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    instance = deploy_instance_module()
    assert instance.check(instance.rendered_instance(rendered.stdout)) == []


def test_the_chart_version_is_dagsters_wherever_it_is_named():
    for text in ((DEPLOY / "helm" / "values.yaml").read_text(), readme_deploy_section()):
        assert set(re.findall(r"dagster/dagster --version (\S+)", text)) == {DAGSTER_VERSION}


def test_helm_instance_passes_dagsters_instance_schema(helm, tmp_path):
    # the chart's own parts (storage, scheduler, compute logs) are the chart's business
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(chart_instance(helm)))
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == [{"key": "flywheel/gpu", "limit": 1}]


# keys that hold a secret, and env entries that name one
SECRET_NAME = re.compile(r"password|token|api_?key", re.I)


def plain_secrets(node, path: str = "values"):
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "value" in node and SECRET_NAME.search(node["name"]):
            yield f"{path}: {node['name']}"
        for key, value in node.items():
            if SECRET_NAME.search(key) and isinstance(value, str) and value:
                yield f"{path}.{key}"
            yield from plain_secrets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from plain_secrets(value, f"{path}[{index}]")


def test_no_secret_in_the_values_and_one_way_to_make_the_postgres_secret(helm):
    assert list(plain_secrets(helm)) == []
    # the chart writes no password Secret (its default would, from postgresqlPassword);
    # the operator creates it, and the bundled Postgres reads the same one
    assert helm["generatePostgresqlPasswordSecret"] is False
    secret = helm["global"]["postgresqlSecretName"]
    assert helm["postgresql"]["existingSecret"] == secret
    readme = readme_deploy_section()
    assert re.search(rf"create secret generic {secret} \\\s*\n\s*--from-literal=postgresql-password=", readme)


def test_helm_code_location_runs_the_definitions_with_valid_settings(helm):
    deployment = code_location(helm)
    assert helm["dagster-user-deployments"]["enabled"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", PYPROJECT["tool"]["dagster"]["module_name"]]
    settings = load_settings(code_location_env(helm))
    assert settings.executor == "k8s"
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    assert settings.home.is_relative_to(mounts["flywheel-data"])
    gpu_step_k8s_config(code_location_env(helm))  # the GPU step variables are valid too


# --- compose and the image -----------------------------------------------------------------


def compose_defaults(value: str) -> str:
    """${VAR:-default} as compose resolves it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_runs_webserver_daemon_code_location_and_postgres():
    compose = load_yaml(DEPLOY / "docker-compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgres", "webserver", "daemon", "code"}
    workspace = load_yaml(DEPLOY / "workspace.compose.yaml")
    (location,) = workspace["load_from"]
    assert location["grpc_server"]["host"] == "code"
    assert location["grpc_server"]["location_name"] == PYPROJECT["tool"]["dagster"]["code_location_name"]
    assert f"-p {location['grpc_server']['port']}" in services["code"]["command"][-1]
    for name in ("webserver", "daemon", "code"):
        service = services[name]
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert "deploy/instance.py single-host" in service["command"][-1]
        env = {k: compose_defaults(str(v)) for k, v in service["environment"].items()}
        assert env["DAGSTER_PG_HOST"] == "postgres"
        assert {"DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"} <= set(env)
        load_settings(env)
    for name in ("webserver", "daemon"):
        assert "deploy/workspace.compose.yaml" in services[name]["command"][-1]
    gpu = load_yaml(DEPLOY / "docker-compose.gpu.yaml")
    (device,) = gpu["services"]["code"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def dockerfile_runs() -> list[str]:
    """RUN commands with the build args at their defaults, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    runs = re.findall(r"^RUN (.+)$", text, flags=re.M)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), run) for run in runs]


def test_dockerfile_installs_the_pinned_cpu_torch_by_default():
    (torch_pin,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch")]
    assert torch_pin == "torch==2.13.0"
    installs = [run for run in dockerfile_runs() if "torch==" in run]
    assert any(
        '"torch==2.13.0"' in run and '--index-url "https://download.pytorch.org/whl/cpu"' in run for run in installs
    ), installs


def test_dockerfile_runs_the_code_location_as_the_pods_non_root_user(production):
    lines = [
        line.split(None, 1)
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line and not line.startswith(("#", " "))
    ]
    instructions = [(parts[0], parts[1] if len(parts) > 1 else "") for parts in lines]
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    # the user and group the run and step pods run as and write the shared volume with
    pod_security = production["run_launcher"]["config"]["run_k8s_config"]["pod_spec_config"]["securityContext"]
    uid, gid = pod_security["runAsUser"], pod_security["runAsGroup"]
    assert users[-1] == str(uid) and gid == pod_security["fsGroup"]
    assert any(
        f"groupadd --gid {gid} " in run and f"useradd --uid {uid} --gid {gid} " in run for run in dockerfile_runs()
    )
    entrypoint = [arg for op, arg in instructions if op == "ENTRYPOINT"]
    # the chart and dagster-k8s pass whole commands as container args: no command in the entrypoint
    assert entrypoint == ['["/usr/bin/tini", "--"]']
    (cmd,) = [yaml.safe_load(arg) for op, arg in instructions if op == "CMD"]
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert PYPROJECT["tool"]["dagster"]["module_name"] in cmd


# --- configuration by environment (flywheel_assets/settings.py) ----------------------------


def test_settings_default_to_the_embedded_local_flywheel(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert (settings.backend, settings.executor) == ("local", "in_process")
    assert settings.home == tmp_path / ".flywheel_data" and settings.traces == settings.home / "traces"
    # empty counts as unset (Kubernetes and compose files carry VAR: "")
    assert load_settings({"FLYWHEEL_BACKEND": "", "FLYWHEEL_TRACES_DIR": " "}) == settings


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FLYWHEEL_BACKEND": "foo"}, "FLYWHEEL_BACKEND='foo' is not one of local, nemo"),
        ({"FLYWHEEL_EXECUTOR": "celery"}, "FLYWHEEL_EXECUTOR='celery' is not one of multiprocess, in_process, k8s"),
        ({"FLYWHEEL_JUDGE_BASE_URL": "judge:8000"}, "FLYWHEEL_JUDGE_BASE_URL='judge:8000' is not an http(s) URL"),
        ({"FLYWHEEL_JUDGE_BASE_URL": "http://judge:8000/v1"}, "FLYWHEEL_JUDGE_MODEL (the judge's model name) is unset"),
        ({"FLYWHEEL_START_DATE": "2025-13-01"}, "FLYWHEEL_START_DATE='2025-13-01' is invalid"),
        ({"FLYWHEEL_NEMO_NAMESPACE": "../x"}, "FLYWHEEL_NEMO_NAMESPACE='../x' must match"),
        ({"FLYWHEEL_VALIDATION_WORKERS": "-1"}, "FLYWHEEL_VALIDATION_WORKERS='-1' is invalid"),
        ({"FLYWHEEL_CANDIDATES": "/no/such/file.json"}, "FLYWHEEL_CANDIDATES='/no/such/file.json' is not a file"),
        (
            {"FLYWHEEL_BACKEND": "nemo", "FLYWHEEL_NIM_BASE_URL": "http://nim:8000"},
            "FLYWHEEL_BACKEND=nemo needs FLYWHEEL_NEMO_BASE_URL, FLYWHEEL_NEMO_DATASTORE_URL (unset)",
        ),
    ],
)
def test_a_bad_variable_is_named_in_the_error(environ, message):
    with pytest.raises(SettingsError) as err:
        load_settings(environ)
    assert message in str(err.value)


def test_nemo_backend_settings():
    settings = load_settings(
        {
            "FLYWHEEL_BACKEND": "nemo",
            "FLYWHEEL_NEMO_BASE_URL": "http://nemo.flywheel.svc:8000/",
            "FLYWHEEL_NEMO_DATASTORE_URL": "http://datastore.flywheel.svc:3000",
            "FLYWHEEL_NIM_BASE_URL": "https://nim.example.com",
        }
    )
    assert settings.nemo_base_url == "http://nemo.flywheel.svc:8000"  # no trailing slash to join paths onto
    assert settings.nemo_namespace == "flywheel"


def test_the_trace_source_quarantines_records_before_the_configured_start_date(tmp_path, monkeypatch):
    # FLYWHEEL_START_DATE is the first day partition: an older record has no partition to
    # go to, so landing must quarantine it instead of filing it under a day Dagster lacks
    monkeypatch.setenv("FLYWHEEL_START_DATE", "2025-01-02")
    monkeypatch.setenv("FLYWHEEL_VALIDATION_WORKERS", "1")
    traces = tmp_path / "traces"
    traces.mkdir()
    record = {
        "timestamp": 1_735_700_000,  # 2025-01-01
        "workload_id": "w",
        "client_id": "c",
        "request": {"messages": [{"role": "user", "content": "hi"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "hello"}}]},
    }
    (traces / "t.jsonl").write_text(json.dumps(record) + "\n")
    source = build_resources(home=tmp_path, traces=traces)["trace_source"]
    assert source.validation_workers == 1
    (landed,) = source.land()
    assert landed.partitions == {"2025-01-01|w": {"valid": 0, "quarantined": 1}}
    _, quarantined = read_partition(source.landing_path, "2025-01-01", "w")
    assert quarantined["reason"].to_list() == ["before_start_date"]


def test_the_evaluator_targets_the_nim_proxy_at_its_in_cluster_address(tmp_path):
    from flywheel_assets.definitions import build_platform

    nemo = {
        "FLYWHEEL_BACKEND": "nemo",
        "FLYWHEEL_NEMO_BASE_URL": "http://nemo.example:8080",
        "FLYWHEEL_NEMO_DATASTORE_URL": "http://datastore.example:3000",
        "FLYWHEEL_NIM_BASE_URL": "https://nim.example.com",
    }
    inside = build_platform(
        load_settings({**nemo, "FLYWHEEL_NEMO_EVALUATOR_NIM_URL": "http://nemo-nim-proxy:8000"}), tmp_path
    )
    assert inside.nemo.evaluator_nim_url == "http://nemo-nim-proxy:8000"
    assert build_platform(load_settings(nemo), tmp_path).nemo.evaluator_nim_url is None  # jobs name the model
    with pytest.raises(SettingsError, match="FLYWHEEL_NEMO_EVALUATOR_NIM_URL='nim:8000' is not an http"):
        load_settings({**nemo, "FLYWHEEL_NEMO_EVALUATOR_NIM_URL": "nim:8000"})
