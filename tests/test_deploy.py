"""deploy/: the instance, the Kubernetes launch path of GPU steps, compose, Helm values, image.

Kubernetes objects are built with dagster-k8s itself (its config schema, K8sRunLauncher,
K8sContainerContext, construct_dagster_k8s_job) from the real GPU assets' op tags, so what is
asserted is the pod a step would get, without a cluster.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes import ConfigurableClassData
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

from flywheel_assets.core.ingest import read_partition
from flywheel_assets.definitions import build_resources, defs
from flywheel_assets.jobs import GPU_RUN_TAGS
from flywheel_assets.evaluate import base_eval
from flywheel_assets.gpu import GPU_POOL
from flywheel_assets.settings import SettingsError, load_settings
from flywheel_assets.split import train_dataset
from flywheel_assets.train import lora_adapter

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
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


def snake(value):
    """Helm's camelCase keys as dagster.yaml's snake_case (the chart does the same)."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake(v) for v in value]
    return value


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
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "test", "user": {"token": "test"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    section = production["run_launcher"]
    config = {**section["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    return ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(config)).rehydrate(K8sRunLauncher)


def chart_container_context(helm: dict) -> K8sContainerContext:
    """What the chart hands to launched runs for the user deployment (includeConfigInLaunchedRuns),
    as its dagsterUserDeployments.k8sContainerContext helper writes it."""
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
        "volume_mounts": deployment.get("volumeMounts", []),
        "volumes": deployment.get("volumes", []),
        "namespace": K8S_ENV["DAGSTER_K8S_JOB_NAMESPACE"],
        "env": deployment.get("env", []),
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if deployment.get("resources"):
        k8s["resources"] = deployment["resources"]
    return K8sContainerContext.create_from_config({"k8s": k8s})


def step_pod(launcher: K8sRunLauncher, helm: dict, asset: dg.AssetsDefinition):
    """The Kubernetes Job the k8s_job_executor would create for `asset`'s step, built the way
    K8sStepHandler does: run launcher + code location context, then the op's own tags."""
    run = dg.DagsterRun(job_name="train_and_evaluate", tags=GPU_RUN_TAGS)
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    context = context.merge(chart_container_context(helm))
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(asset.op.tags)))
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config("registry.example.com/flywheel:test", launcher),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{asset.op.name}",
        pod_name=f"dagster-step-{asset.op.name}",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": asset.op.name},
    )
    return job.spec.template.spec


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
        "hostname": "DAGSTER_PG_HOST", "port": "DAGSTER_PG_PORT", "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD", "db_name": "DAGSTER_PG_DB",
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
        "lora_adapter", "base_eval", "icl_eval", "customized_eval",
    }
    sensor = repo.get_sensor_def("gpu_automation_sensor")
    assert sensor.run_tags.items() >= GPU_RUN_TAGS.items()
    assert {k.to_user_string() for k in sensor.asset_selection.resolve(repo.asset_graph)} == {
        "lora_adapter", "base_eval", "icl_eval", "customized_eval",
    }


def test_single_host_variant_only_drops_what_one_host_cant_do(production):
    single = deploy_instance_module().single_host()
    assert "run_launcher" not in single
    assert single["run_monitoring"]["max_resume_run_attempts"] == 0
    assert {k: v for k, v in single.items() if k != "run_monitoring"} == {
        k: v for k, v in production.items() if k not in ("run_launcher", "run_monitoring")
    }


# --- GPU steps on Kubernetes ---------------------------------------------------------------


@pytest.mark.parametrize("asset", [lora_adapter, base_eval], ids=lambda a: a.op.name)
def test_gpu_step_pod_asks_for_one_gpu_and_tolerates_gpu_nodes(launcher, helm, asset):
    assert asset.op.pool == GPU_POOL
    pod = step_pod(launcher, helm, asset)
    (container,) = pod.containers
    # exactly what gpu.py asks for: nothing from the code server's pod leaks into a GPU step
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert any(
        t.key == "nvidia.com/gpu" and t.operator == "Exists" and t.effect == "NoSchedule"
        for t in pod.tolerations
    )
    # the run launcher's secret and the code location's env and shared volume reach the step
    assert "flywheel-secrets" in {e.secret_ref.name for e in container.env_from if e.secret_ref}
    env = {e.name: e.value for e in container.env}
    assert env["FLYWHEEL_EXECUTOR"] == "k8s" and env["FLYWHEEL_HOME"].startswith("/data")
    assert {(m.name, m.mount_path) for m in container.volume_mounts} >= {("flywheel-data", "/data")}
    assert any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "flywheel-data" for v in pod.volumes)
    assert container.image == "registry.example.com/flywheel:test"


def test_cpu_step_pod_asks_for_no_gpu(launcher, helm):
    pod = step_pod(launcher, helm, train_dataset)
    (container,) = pod.containers
    assert "nvidia.com/gpu" not in ((container.resources and container.resources.limits) or {})
    assert not any(t.key == "nvidia.com/gpu" for t in pod.tolerations or [])


# --- Helm values ---------------------------------------------------------------------------


def chart_instance(helm: dict) -> dict:
    """The parts of the chart's rendered dagster.yaml that deploy/dagster.yaml also sets."""
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
                "env_secrets": [s["name"] for s in launcher["envSecrets"]],
                "fail_pod_on_run_failure": launcher["failPodOnRunFailure"],
            },
        },
        "telemetry": helm["telemetry"],
        **helm["additionalInstanceConfig"],
    }


def test_helm_values_render_the_same_instance_as_dagster_yaml(helm, production):
    rendered = chart_instance(helm)
    for key in ("run_coordinator", "concurrency", "run_monitoring", "telemetry"):
        assert rendered[key] == production[key], key
    assert helm["postgresql"]["postgresqlScheme"] == production["storage"]["postgres"]["postgres_db"]["scheme"]
    production_launcher = production["run_launcher"]["config"]
    for key, value in rendered["run_launcher"]["config"].items():
        assert production_launcher[key] == value, key


def test_helm_instance_passes_dagsters_instance_schema(helm, tmp_path):
    # the chart's own parts (storage, scheduler, compute logs) are the chart's business
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(chart_instance(helm)))
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == [{"key": "flywheel/gpu", "limit": 1}]


def test_helm_code_location_runs_the_definitions_with_valid_settings(helm):
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    assert helm["dagster-user-deployments"]["enabled"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", PYPROJECT["tool"]["dagster"]["module_name"]]
    settings = load_settings({e["name"]: e["value"] for e in deployment["env"]})
    assert settings.executor == "k8s"
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    assert settings.home.is_relative_to(mounts["flywheel-data"])


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


def test_dockerfile_runs_the_code_location_as_a_non_root_user():
    lines = [line.split(None, 1) for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line and not line.startswith(("#", " "))]
    instructions = [(parts[0], parts[1] if len(parts) > 1 else "") for parts in lines]
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
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


@pytest.mark.parametrize(("environ", "message"), [
    ({"FLYWHEEL_BACKEND": "foo"}, "FLYWHEEL_BACKEND='foo' is not one of local, nemo"),
    ({"FLYWHEEL_EXECUTOR": "celery"}, "FLYWHEEL_EXECUTOR='celery' is not one of multiprocess, in_process, k8s"),
    ({"FLYWHEEL_JUDGE_BASE_URL": "judge:8000"}, "FLYWHEEL_JUDGE_BASE_URL='judge:8000' is not an http(s) URL"),
    ({"FLYWHEEL_START_DATE": "2025-13-01"}, "FLYWHEEL_START_DATE='2025-13-01' is invalid"),
    ({"FLYWHEEL_NEMO_NAMESPACE": "../x"}, "FLYWHEEL_NEMO_NAMESPACE='../x' must match"),
    ({"FLYWHEEL_VALIDATION_WORKERS": "-1"}, "FLYWHEEL_VALIDATION_WORKERS='-1' is invalid"),
    ({"FLYWHEEL_CANDIDATES": "/no/such/file.json"}, "FLYWHEEL_CANDIDATES='/no/such/file.json' is not a file"),
    ({"FLYWHEEL_BACKEND": "nemo", "FLYWHEEL_NIM_BASE_URL": "http://nim:8000"},
     "FLYWHEEL_BACKEND=nemo needs FLYWHEEL_NEMO_BASE_URL, FLYWHEEL_NEMO_DATASTORE_URL (unset)"),
])
def test_a_bad_variable_is_named_in_the_error(environ, message):
    with pytest.raises(SettingsError) as err:
        load_settings(environ)
    assert message in str(err.value)


def test_nemo_backend_settings():
    settings = load_settings({
        "FLYWHEEL_BACKEND": "nemo",
        "FLYWHEEL_NEMO_BASE_URL": "http://nemo.flywheel.svc:8000/",
        "FLYWHEEL_NEMO_DATASTORE_URL": "http://datastore.flywheel.svc:3000",
        "FLYWHEEL_NIM_BASE_URL": "https://nim.example.com",
    })
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
