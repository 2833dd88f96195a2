"""Drop-folder sensor: new or changed trace files -> new workloads + `raw_traces` runs.

Landing is idempotent and by content (`resources/traces.py`): a repeated tick lands nothing
and requests nothing, and so does a file re-dropped unchanged, copied or renamed. The
cursor is a watermark of the files' `ctime`: a tick stats the folder (one `stat` per file,
the floor without filesystem notifications) but lands only the files whose ctime is past
the watermark (minus a grace for writers racing the scan), so its landing work - reading
manifests, validating records - follows the new files, not the history. `ctime` is set by
the kernel on create, write, rename and chmod, so a file copied with its old mtime kept
(`cp -p`, `rsync -t`) is still checked. Every `FULL_SCAN_EVERY` ticks (and on the first
one) every file is checked, as a safety net.

What a tick requests: the landings made since the last committed tick, by this tick or by
anyone else (a tick that crashed before its cursor was saved, a `raw_traces` run), so a
failed tick never leaves landed data without its ingest run. Landings are numbered by a
counter (their generation); the cursor keeps the last generation a committed tick saw and
the generations landed meanwhile by other processes for files that tick did not check. A
landing found again (a re-dropped, copied or renamed file) is not requested again; one that
a crashed tick lost is requested under the same run key, so the daemon launches it once.
Files under `<traces_dir>/weave/` are the Weave sensor's: it lands them itself.

A tick never stops at a bad file: a refused one (a link, a FIFO, a device, a directory named
like a trace file) and one that fails to read (truncated, damaged, unreadable) are named in
the tick's log with the reason and what to do, and the other files land. A failed file is
read again only once it changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from flywheel_assets.core.ingest import UNATTRIBUTED, LandingResult
from flywheel_assets.jobs import ingest_job
from partitions.slices import day_partitions, trace_partition_boxes, trace_range_tags, workload_partitions
from resources.traces import FileTraceSource, scan_drop_folder
from resources.weave_source import WEAVE_FOLDER

GRACE_NS = 120 * 1_000_000_000
FULL_SCAN_EVERY = 60


@dataclass(frozen=True)
class IngestRequests:
    runs: list[dg.RunRequest]
    new_workloads: list[str]
    out_of_range: list[str]  # "day|workload" partitions whose day is no day partition

    def summary(self) -> str:
        text = f"{len(self.runs)} runs; new workloads {self.new_workloads}"
        if self.out_of_range:
            text += f"; not requested (day out of range): {self.out_of_range}"
        return text

    def sensor_result(self, cursor: str) -> dg.SensorResult:
        """The runs, and the new workloads added as partitions before they start."""
        adds = [workload_partitions.build_add_request(self.new_workloads)] if self.new_workloads else []
        return dg.SensorResult(run_requests=self.runs, dynamic_partitions_requests=adds, cursor=cursor)


def ingest_requests(results: Iterable[LandingResult], known_workloads: Iterable[str], trigger: str) -> IngestRequests:
    """`raw_traces` runs for the day x workload partitions that received records: one run
    per key range (`trace_partition_boxes`), so a dropped file is ingested in one run
    instead of one process per partition.

    Partitions of days outside the day partitions (records quarantined as
    `before_start_date` / `future_timestamp`) and unattributable records are not
    requested: no run can materialize them (their records are counted in every
    raw_traces run's `unattributed` metadata, or in landing). The run key names the
    landings (content id and generation), so the daemon never launches the same ingest
    twice, and identical content gives identical keys.
    """
    sources: dict[str, set[str]] = {}
    for result in results:
        for partition, counts in result.partitions.items():
            if counts.get("valid") or counts.get("quarantined"):
                sources.setdefault(partition, set()).add(f"{result.source_id}@{result.generation}")
    days: dict[str, bool] = {}
    out_of_range, wanted = [], {}
    for partition in sorted(sources):
        day, key = partition.split("|", 1)
        if day == UNATTRIBUTED:
            continue
        if day not in days:
            days[day] = day_partitions.has_partition_key(day)
        if not days[day]:
            out_of_range.append(partition)
            continue
        wanted[(day, key)] = sources[partition]
    known = list(known_workloads)
    new = sorted({key for _, key in wanted} - set(known))
    runs = []
    for box in trace_partition_boxes(wanted, known + new):
        window = trace_range_tags(box)
        landings = sorted(landing for partition in box for landing in wanted[partition])
        version = hashlib.sha256(json.dumps(landings).encode()).hexdigest()[:16]
        runs.append(
            dg.RunRequest(
                run_key=f"{trigger}:{'...'.join(window.values())}:{version}",
                tags={**window, "flywheel/trigger": trigger},
            )
        )
    return IngestRequests(runs=runs, new_workloads=new, out_of_range=out_of_range)


@dataclass(frozen=True)
class DropFolderCursor:
    ctime_ns: int | None = None  # newest ctime among the files handled by committed ticks
    tick: int = 0
    generation: int | None = None  # landings up to this one were seen by committed ticks,
    unseen: tuple[int, ...] = ()  # except these, landed by others for files a tick did not check

    @classmethod
    def parse(cls, text: str | None) -> DropFolderCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            ctime_ns=data.get("ctime_ns"),
            tick=int(data.get("tick", 0)),
            generation=data.get("generation"),
            unseen=tuple(data.get("unseen", ())),
        )

    def to_json(self) -> str:
        fields = {"ctime_ns": self.ctime_ns, "tick": self.tick, "generation": self.generation}
        return json.dumps({**fields, "unseen": list(self.unseen)}, sort_keys=True)

    def is_due(self, result: LandingResult) -> bool:
        """Whether a landing is to be requested: landed since the last committed tick (by
        this tick, a tick that crashed, or a raw_traces run). On the very first tick (or
        from a cursor without generations), only what this tick landed: history was
        ingested before."""
        if self.generation is None:
            return result.landed
        return result.generation > self.generation or result.generation in self.unseen

    def after(self, results: list[LandingResult], generation: int, ctime_ns: int | None) -> DropFolderCursor:
        """The cursor once this tick is committed; `generation` was read after its landings."""
        checked = {result.generation for result in results}
        since = generation if self.generation is None else self.generation  # first tick: none owed
        unseen = tuple(g for g in range(since + 1, generation + 1) if g not in checked)
        return DropFolderCursor(ctime_ns=ctime_ns, tick=self.tick + 1, generation=generation, unseen=unseen)


def land_new_files(
    context: dg.SensorEvaluationContext, trace_source: FileTraceSource
) -> dg.SensorResult | dg.SkipReason:
    state = DropFolderCursor.parse(context.cursor)
    folder = Path(trace_source.traces_dir)
    if not folder.is_dir():
        return dg.SkipReason(
            f"traces_dir {folder} does not exist: create it and drop JSONL/Parquet trace files "
            "there, or set FLYWHEEL_TRACES_DIR"
        )
    files = scan_drop_folder(folder, skip=(WEAVE_FOLDER,))
    full_scan = state.ctime_ns is None or state.tick % FULL_SCAN_EVERY == 0
    watermark = state.ctime_ns if state.ctime_ns is not None else -1
    candidates = files if full_scan else [f for f in files if f.ctime_ns > watermark - GRACE_NS]
    landings = trace_source.land_report([f.path for f in candidates])
    for line in landings.log_lines():
        context.log.warning(line)
    results = landings.results
    due = [result for result in results if state.is_due(result)]
    cursor = state.after(
        results,
        generation=trace_source.last_generation(),  # read after landing: this tick's are in it
        ctime_ns=max([watermark, *(f.ctime_ns for f in files)]) if files else state.ctime_ns,
    ).to_json()
    checked = f"{len(candidates)} of {len(files)} checked" + (
        f"; {len(landings.refused)} refused, {len(landings.failed)} failed: see the tick log"
        if landings.refused or landings.failed
        else ""
    )
    if not due:
        return dg.SensorResult(skip_reason=f"no new or changed trace files ({checked})", cursor=cursor)
    known = context.instance.get_dynamic_partitions(workload_partitions.name)
    requests = ingest_requests(due, known, trigger="drop_folder")
    context.log.info(
        f"{sum(r.landed for r in due)} files landed, {len(due)} landings new since the last tick "
        f"({checked}); {requests.summary()}"
    )
    return requests.sensor_result(cursor)


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=15,  # a tick stats the folder and lands only new files
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Lands new trace files from the drop folder and ingests the partitions they touch.",
)
def drop_folder_sensor(context: dg.SensorEvaluationContext, trace_source: FileTraceSource):
    return land_new_files(context, trace_source)
