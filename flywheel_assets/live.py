"""The flywheel as its users run it: `dagster dev` (webserver + daemon), sensors on, traces
dropped into the folder, runs launched by the daemon, progress read through GraphQL.

`flywheel live`, `benchmarks/live_flywheel.py` and `tests/test_live_flywheel.py` all drive it
through `LiveFlywheel`. Nothing here imports Dagster: it talks to the processes it starts.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from flywheel_assets.sample_data import DEFAULT_END_DATE, DEFAULT_WORKLOADS, write_sample_traces

if TYPE_CHECKING:
    import polars as pl

ROOT = Path(__file__).resolve().parent.parent
LOCAL_INSTANCE_YAML = ROOT / "deploy" / "dagster.local.yaml"
LOCATION = "flywheel"  # workspace.yaml's location name
REPOSITORY = "__repository__"  # the repository name of a `Definitions` object
INGEST_SENSORS = ("drop_folder_sensor",)
AUTOMATION_SENSORS = ("automation_sensor", "gpu_automation_sensor")

# A run's stage, from the assets it materializes (automation runs are Dagster's
# `__ASSET_JOB`, so the job name alone does not say which stage they are).
STAGES = {
    "raw_traces": "ingest",
    "workload_dataset": "curate_and_split",
    "eval_dataset": "curate_and_split",
    "train_dataset": "curate_and_split",
    "lora_adapter": "train_and_evaluate",
    "base_eval": "train_and_evaluate",
    "icl_eval": "train_and_evaluate",
    "customized_eval": "train_and_evaluate",
    "leaderboard": "report",
    # production monitoring follows every new day of traffic (production_metrics runs in ingest)
    "production_slos": "monitor",
    "canary_analysis": "monitor",
    "traffic_drift": "monitor",
}
STAGE_ORDER = ("ingest", "curate_and_split", "train_and_evaluate", "report", "monitor")
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
SAMPLE_DAYS = 7
SAMPLE_FIRST_DAY = (DEFAULT_END_DATE - dt.timedelta(days=SAMPLE_DAYS - 1)).isoformat()

_WORKSPACE = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename
    ... on RepositoryLocation { repositories { name sensors { name } } }
    ... on PythonError { message } } } } } }"""
_START_SENSOR = """mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
  __typename ... on Sensor { name } ... on PythonError { message } ... on UnauthorizedError { message }
  ... on SensorNotFoundError { message } } }"""
_RUNS = """{ runsOrError(limit: 5000) { __typename ... on Runs { results {
  runId jobName status startTime endTime tags { key value } assetSelection { path } } } } }"""
_TICKS = """query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  __typename ... on Sensor { sensorState { ticks(limit: 20) { timestamp status } } } } }"""
_MATERIALIZED = """query($path: [String!]!) { assetOrError(assetKey: {path: $path}) {
  __typename ... on Asset { assetMaterializations(limit: 10000) { partition timestamp runId } } } }"""


class LiveFlywheelError(RuntimeError):
    """The live flywheel did not get where it was asked to go; the message says where it stopped."""


@dataclass(frozen=True)
class Run:
    run_id: str
    job: str
    status: str
    start: float | None
    end: float | None
    tags: dict[str, str]
    assets: tuple[str, ...]

    @property
    def stage(self) -> str:
        stages = {STAGES[a] for a in self.assets if a in STAGES}
        return min(stages, key=STAGE_ORDER.index) if stages else self.job

    @property
    def partition(self) -> str:
        """Its partition, or `first...last` for a run over a range of partitions."""
        first, last = (
            self.tags.get("dagster/asset_partition_range_start"),
            self.tags.get("dagster/asset_partition_range_end"),
        )
        if first and last:
            return first if first == last else f"{first}...{last}"
        return self.tags.get("dagster/partition", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sensor_selector(name: str) -> dict[str, str]:
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}


def prepare_instance(dagster_home: Path) -> None:
    """A DAGSTER_HOME with the local instance settings (run queue, pools), unless it has its own."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copy(LOCAL_INSTANCE_YAML, dagster_home / "dagster.yaml")


class LiveFlywheel:
    """`dagster dev` on loopback for one flywheel home; a context manager that stops every
    process it started (the whole process group), also when the caller fails."""

    def __init__(self, home: Path, *, port: int | None = None, env: dict[str, str] | None = None):
        self.home = Path(home).resolve()
        self.dagster_home = self.home / "dagster_home"
        self.traces_dir = self.home / "traces"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "dagster_dev.log"
        self.env = {
            **os.environ,
            "FLYWHEEL_HOME": str(self.home),
            "FLYWHEEL_TRACES_DIR": str(self.traces_dir),
            "DAGSTER_HOME": str(self.dagster_home),
            **(env or {}),
        }
        self._process: subprocess.Popen | None = None
        self._client = httpx.Client(timeout=60)

    # ------------------------------------------------------------------- processes
    def start(self, *, timeout_s: float = 180) -> LiveFlywheel:
        prepare_instance(self.dagster_home)
        self.traces_dir.mkdir(parents=True, exist_ok=True)
        dagster = Path(sys.executable).parent / "dagster"
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [str(dagster), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for(self._location_loaded, timeout_s, "the webserver to load the `flywheel` code location")
        return self

    def stop(self) -> None:
        """SIGTERM to `dagster dev` and its children (webserver, daemon, code server, runs), then SIGKILL."""
        self._client.close()
        if self._process is None or self._process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self._process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self._process.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait_until_stopped(self) -> None:
        if self._process is not None:
            self._process.wait()

    def __enter__(self) -> LiveFlywheel:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # --------------------------------------------------------------------- GraphQL
    def graphql(self, query: str, **variables) -> dict:
        response = self._client.post(f"{self.url}/graphql", json={"query": query, "variables": variables})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise LiveFlywheelError(f"GraphQL error: {body['errors']}")
        return body["data"]

    def _location_loaded(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise LiveFlywheelError(
                f"`dagster dev` exited with {self._process.returncode}; its log ends:\n{self.log_tail()}"
            )
        try:
            entries = self.graphql(_WORKSPACE)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, LiveFlywheelError, KeyError, TypeError):
            return False
        for entry in entries:
            location = entry["locationOrLoadError"] or {}
            if location.get("__typename") == "PythonError":
                raise LiveFlywheelError(f"the code location failed to load: {location['message']}")
            if entry["name"] == LOCATION and location.get("__typename") == "RepositoryLocation":
                return True
        return False

    def start_sensors(self, names: Iterable[str] = INGEST_SENSORS + AUTOMATION_SENSORS) -> None:
        for name in names:
            result = self.graphql(_START_SENSOR, selector=sensor_selector(name))["startSensor"]
            if result["__typename"] != "Sensor":
                raise LiveFlywheelError(f"could not start sensor {name}: {result.get('message', result)}")

    def sensor_ticks(self, sensor: str) -> list[tuple[float, str]]:
        """(time, status) of the sensor's latest ticks, newest first."""
        state = self.graphql(_TICKS, selector=sensor_selector(sensor))["sensorOrError"]["sensorState"]
        return [(float(t["timestamp"]), t["status"]) for t in state["ticks"]]

    def wait_for_ticks(self, sensor: str, *, after: float, count: int, timeout_s: float) -> None:
        """Until `count` ticks of `sensor` finished after `after` (one that started before it
        may have seen the folder as it was)."""

        def done() -> bool:
            return sum(t > after and status != "STARTED" for t, status in self.sensor_ticks(sensor)) >= count

        self.wait_for(done, timeout_s, f"{count} ticks of {sensor}")

    def runs(self) -> list[Run]:
        results = self.graphql(_RUNS)["runsOrError"]["results"]
        return [
            Run(
                run_id=r["runId"],
                job=r["jobName"],
                status=r["status"],
                start=r["startTime"],
                end=r["endTime"],
                tags={t["key"]: t["value"] for t in r["tags"]},
                assets=tuple("/".join(a["path"]) for a in r["assetSelection"] or ()),
            )
            for r in results
        ]

    def materialized_partitions(self, asset: str) -> dict[str, float]:
        """partition -> time of its latest materialization."""
        node = self.graphql(_MATERIALIZED, path=[asset])["assetOrError"]
        latest: dict[str, float] = {}
        for event in node.get("assetMaterializations") or ():
            stamp = float(event["timestamp"]) / 1000
            latest[event["partition"]] = max(stamp, latest.get(event["partition"], 0.0))
        return latest

    # ----------------------------------------------------------------------- traces
    def drop(self, files: Sequence[Path]) -> float:
        """Move trace files into the drop folder as a user would (each appears whole: a
        hidden copy renamed into place); returns the time of the drop."""
        dropped_at = time.time()
        for path in files:
            hidden = self.traces_dir / f".{path.name}.part"
            shutil.copyfile(path, hidden)
            os.replace(hidden, self.traces_dir / path.name)
        return dropped_at

    # ------------------------------------------------------------------------ waits
    def wait_for(self, ready: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise LiveFlywheelError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(poll_s)

    def wait_for_leaderboards(
        self,
        workloads: Iterable[str],
        *,
        since: float,
        timeout_s: float,
        progress: Callable[[str], None] | None = None,
    ) -> LiveReport:
        """Until every workload's leaderboard was materialized after `since`; fails at the
        first failed run, or at the deadline naming the stage that did not finish."""
        wanted = sorted(workloads)
        deadline = time.monotonic() + timeout_s
        reported: set[str] = set()
        while True:
            runs = [r for r in self.runs() if (r.start or since) >= since - 1]
            for run in sorted(runs, key=lambda r: r.end or 0):
                if progress and run.status in FINISHED and run.run_id not in reported:
                    reported.add(run.run_id)
                    busy = sum(r.status not in FINISHED for r in runs)
                    progress(
                        f"+{time.time() - since:4.0f} s  {run.status.lower():<7} {run.stage:<18} "
                        f"[{run.partition}] ({run.end - run.start if run.end and run.start else 0:.0f} s; "
                        f"{busy} runs queued or running)"
                    )
            failed = [r for r in runs if r.status == "FAILURE"]
            if failed:
                raise LiveFlywheelError(
                    f"{len(failed)} run(s) failed: "
                    + ", ".join(f"{r.stage} [{r.partition}] {r.run_id}" for r in failed)
                    + f"; see {self.url}/runs/{failed[0].run_id}"
                )
            boards = {p: t for p, t in self.materialized_partitions("leaderboard").items() if t >= since}
            if all(w in boards for w in wanted):
                return LiveReport(since=since, runs=runs, leaderboards=boards)
            if time.monotonic() > deadline:
                raise LiveFlywheelError(
                    f"timed out after {timeout_s:.0f} s: leaderboards of {sorted(set(wanted) - set(boards))} "
                    f"missing; {stuck_stage(runs)}"
                )
            time.sleep(2.0)


def stuck_stage(runs: Sequence[Run]) -> str:
    """Which stage the flywheel stands at, for a timeout message."""
    if not runs:
        return "no run was launched (is the drop-folder sensor on? see the sensor's ticks in the UI)"
    busy = [r for r in runs if r.status not in FINISHED]
    if busy:
        stages = sorted({r.stage for r in busy}, key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else 9)
        return f"{len(busy)} run(s) still queued or running, in stage(s) {stages}"
    last = max(runs, key=lambda r: r.end or 0)
    return f"all {len(runs)} runs finished; the last was {last.stage} [{last.partition}]: automation requested nothing after it"


@dataclass(frozen=True)
class LiveReport:
    since: float
    runs: list[Run]
    leaderboards: dict[str, float]

    @property
    def seconds(self) -> float:
        return max(self.leaderboards.values()) - self.since

    def stage_times(self) -> dict[str, tuple[float, float, int]]:
        """stage -> (first start, last end) in seconds after the drop, and its run count."""
        spans: dict[str, tuple[float, float, int]] = {}
        for run in self.runs:
            if run.start is None:
                continue
            first, last, count = spans.get(run.stage, (float("inf"), 0.0, 0))
            spans[run.stage] = (
                min(first, run.start - self.since),
                max(last, (run.end or run.start) - self.since),
                count + 1,
            )
        return dict(sorted(spans.items(), key=lambda kv: kv[1][0]))

    def summary(self) -> str:
        lines = [
            f"drop -> every leaderboard: {self.seconds:.0f} s; {len(self.runs)} runs launched, "
            f"{sum(r.status == 'FAILURE' for r in self.runs)} failed"
        ]
        for stage, (first, last, count) in self.stage_times().items():
            lines.append(f"  {stage:<18} {count:3d} runs  +{first:5.0f} s .. +{last:5.0f} s")
        return "\n".join(lines)


def demo_traces(folder: Path, records: int, seed: int) -> tuple[list[Path], str, list[str]]:
    """The demo's sample traces, written to `folder` (not yet dropped): the files, the first
    day they cover (the demo's day partitions start there) and the workloads' keys."""
    files = write_sample_traces(folder, n=records, seed=seed, days=SAMPLE_DAYS)
    return files, SAMPLE_FIRST_DAY, list(DEFAULT_WORKLOADS)


def print_leaderboards(home: Path, workloads: Iterable[str]) -> None:
    import polars as pl

    from resources.datasets import partition_file

    with pl.Config(
        tbl_rows=50,
        tbl_width_chars=120,
        tbl_formatting="ASCII_MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
    ):
        for workload in workloads:
            path = partition_file(home / "assets", ["leaderboard"], workload)
            board = pl.read_parquet(path)
            print(f"\nleaderboard [{workload}] (all {board.width} columns: {path})")
            print(decision_table(board))


def decision_table(board: pl.DataFrame) -> pl.DataFrame:
    """What a person needs to decide on a workload, one row per candidate x experiment: the
    score with its 95% interval, argument accuracy (tool-calling workloads), latency, cost
    against production and the verdict; the stored board has every column."""
    import polars as pl

    def shown(value: float | None, template: str) -> str:
        return "-" if value is None else template.format(value)

    def verdict(row: dict) -> str:
        if row["best"]:
            return "recommended"
        return "meets threshold" if row["meets_threshold"] else "threshold not met"

    # a chat workload's board has no tool-call columns
    tool_calling = "function_name_and_args_accuracy" in board.columns
    return pl.DataFrame(
        [
            {
                "candidate": row["candidate"],
                "experiment": row["experiment"],
                "score [95% CI]": "not scored"
                if row["score"] is None
                else f"{row['score']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}] n={row['n']}",
                **({"name+args": shown(row["function_name_and_args_accuracy"], "{:.2f}")} if tool_calling else {}),
                "p50 latency": shown(row["latency_p50_s"], "{:.2f} s"),
                "cost vs prod": shown(row["cost_vs_production"], "{:.1%}"),
                "verdict": verdict(row),
            }
            for row in board.iter_rows(named=True)
        ]
    )
