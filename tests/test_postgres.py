"""The production instance (deploy/dagster.yaml) on a real PostgreSQL server.

A throwaway server is started on loopback (initdb + pg_ctl into a temporary folder, as the
`postgres` system user when the tests run as root: PostgreSQL refuses to run as root). The
instance is the single-host variant derived from deploy/dagster.yaml by deploy/instance.py,
with the DAGSTER_PG_* variables pointing at that server; the data half of the flywheel runs
in it, and the test reads the materializations back out of Postgres itself.

scripts/test.sh installs PostgreSQL from Debian packages when it runs as root and finds no
server, so CI runs this; elsewhere it is skipped with the reason when no server is installed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from test_deploy import deploy_instance_module

from flywheel_assets.definitions import ASSETS, build_resources
from flywheel_assets.runner import run_flywheel
from flywheel_assets.sample_data import write_sample_traces

PG_USER, PG_PASSWORD, PG_DB = "flywheel", "flywheel-test", "flywheel"


def postgres_bin_dir() -> Path | None:
    """The newest server under /usr/lib/postgresql/*/bin (Debian), else initdb on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    found = candidates[-1] if candidates else shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_server():
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb): apt-get install postgresql, or run scripts/test.sh as root"
        )
    as_user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` system user to run the server as")
        as_user = "postgres"

    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    if as_user:
        shutil.chown(root, user=as_user)
    data, port = root / "data", free_port()

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, text=True, user=as_user, timeout=120)

    try:
        pw_file = root / "pw"
        pw_file.write_text(PG_PASSWORD)
        if as_user:
            shutil.chown(pw_file, user=as_user)
        # trust on loopback: dagster-postgres opens a connection per event (no pool), and a
        # SCRAM handshake for each made this test about 30 % slower
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "--pwfile",
            str(pw_file),
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        server_options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-o",
            server_options,
            "-w",
            "start",
        )
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {err.stderr or err.stdout}")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, password=PG_PASSWORD, dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE can't run in a transaction
        conn.cursor().execute(f"CREATE DATABASE {PG_DB}")
        conn.close()
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_USER": PG_USER,
            "DAGSTER_PG_PASSWORD": PG_PASSWORD,
            "DAGSTER_PG_DB": PG_DB,
        }
    finally:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            user=as_user,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_instance(postgres_server, tmp_path_factory):
    """A DagsterInstance from deploy/dagster.yaml (single-host variant) on the test server."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text(yaml.safe_dump(deploy_instance_module().single_host()))
    with pytest.MonkeyPatch.context() as env:
        for name, value in postgres_server.items():
            env.setenv(name, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance


def test_instance_is_the_deploy_configuration_on_postgres(postgres_instance):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(postgres_instance.run_storage, PostgresRunStorage)
    assert isinstance(postgres_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(postgres_instance.schedule_storage, PostgresScheduleStorage)
    assert type(postgres_instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    concurrency = postgres_instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.run_queue_config.tag_concurrency_limits == [{"key": "flywheel/gpu", "limit": 1}]
    assert postgres_instance.run_monitoring_max_runtime_seconds == 43200


def test_flywheel_materializations_are_stored_in_postgres(postgres_instance, postgres_server, tmp_path):
    write_sample_traces(tmp_path / "traces", n=600, seed=0, days=2)
    defs = dg.Definitions(assets=ASSETS, resources=build_resources(tmp_path, tmp_path / "traces"))

    result = run_flywheel(defs, postgres_instance, log=lambda _: None, through="split")

    assert result.workloads == ["query_rewrite", "support_chat", "tool_router"] and not result.failed
    with (
        psycopg2.connect(
            host=postgres_server["DAGSTER_PG_HOST"],
            port=postgres_server["DAGSTER_PG_PORT"],
            user=PG_USER,
            password=PG_PASSWORD,
            dbname=PG_DB,
        ) as conn,
        conn.cursor() as cursor,
    ):
        cursor.execute("SELECT asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        stored = {(dg.AssetKey.from_db_string(key).to_user_string(), partition) for key, partition in cursor.fetchall()}
        cursor.execute("SELECT status, count(*) FROM runs GROUP BY status")
        runs_by_status = dict(cursor.fetchall())
    conn.close()
    for asset in ("workload_dataset", "eval_dataset", "train_dataset"):
        assert {p for a, p in stored if a == asset} == set(result.workloads), asset
    assert {a for a, _ in stored} >= {"raw_traces", "quarantined_traces"}
    assert runs_by_status == {"SUCCESS": len(result.runs)}
    # what the UI reads goes through the same storage
    record = postgres_instance.get_latest_materialization_event(dg.AssetKey("train_dataset"))
    assert record.asset_materialization.metadata["seed"].value == 42
