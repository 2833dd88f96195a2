"""Stage `monitor`, judged: what production traffic says about the promoted model, and what
a person should do about it. Everything here proposes; promotion and rollback stay human.

- `production_slos` [workload]: the workload's SLOs (FLYWHEEL_MONITORING, core/slo.py)
  judged per served model on the newest day of `production_metrics` and the day's
  `serving_telemetry`; one WARN check per objective, whose failure names the SLO, by how
  much, since which day, the promotion behind the model and the exact `rollback` run to
  launch. No sensor, schedule or condition here selects `promoted_model`, so nothing
  launches that run but a person.
- `canary_analysis` [workload]: while two versions serve the workload, the newest
  promotion's model against the other over the same window, per request (core/canary.py),
  with a verdict: promote fully / keep watching / roll back.
- `traffic_drift` [workload]: recent traffic against the train split behind the promoted
  model (core/drift.py). Its data version changes when a breach starts, and its WARN check
  fails while the breach lasts; `refresh_when_data_changed` (sensors/automation.py) then
  requests one new curate -> split -> train -> evaluate turn for that workload. The train
  split is read from the store, not declared as an input: drift starts the turn that
  rebuilds the split, so an edge would close a cycle.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from flywheel_assets.core.audit import AuditRecord
from flywheel_assets.core.canary import VersionTraffic, analyse_canary, pick_versions, request_values
from flywheel_assets.core.candidates import load_models
from flywheel_assets.core.curation import lookback_days
from flywheel_assets.core.drift import measure_drift, recent_requests, split_requests
from flywheel_assets.core.ingest import stored_traces
from flywheel_assets.core.slo import (
    OBJECTIVES,
    Breach,
    WorkloadMonitoring,
    daily_observations,
    find_breaches,
    has_figures,
    load_monitoring,
    rollback_proposal,
)
from flywheel_assets.core.splitting import SPLIT_SCHEMA
from flywheel_assets.curate import materialized_days
from flywheel_assets.lineage import latest_materialization, promotion_history
from flywheel_assets.metadata import table
from flywheel_assets.monitor import log_with_promoted_model, stored_production_metrics
from flywheel_assets.settings import load_settings
from partitions.slices import BY_WORKLOAD, workload_partitions
from resources.datasets import StoredAssets
from resources.tracking import Tracker
from sensors.automation import refresh_when_traffic_changed

DRIFT_CHECK = "drift_within_thresholds"
WARN = dg.AssetCheckSeverity.WARN


def _monitoring(key: str, production: AuditRecord | None) -> WorkloadMonitoring:
    config = load_monitoring(load_settings().monitoring_file)
    return config.for_workload(production.workload_id if production else None, key)


def _production(instance: dg.DagsterInstance, key: str) -> AuditRecord | None:
    history = promotion_history(instance, key, limit=1)
    return history[0] if history else None


# ----------------------------------------------------------------------------- SLOs
@dg.asset(
    partitions_def=workload_partitions,
    deps=[
        dg.AssetDep("production_metrics", partition_mapping=BY_WORKLOAD),
        dg.AssetDep("promoted_model"),
        # every workload reads the day's engine telemetry (its rows are keyed by served model)
        dg.AssetDep("serving_telemetry", partition_mapping=dg.AllPartitionMapping()),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            f"slo_{o.name}",
            asset="production_slos",
            partitions_def=workload_partitions,
            description=f"{o.name} ({o.kind} limit, from {o.source})",
        )
        for o in OBJECTIVES
    ],
    group_name="monitor",
    kinds={"polars"},
    code_version="1",
    automation_condition=refresh_when_traffic_changed,
    description=(
        "The workload's SLOs per served model and day (production metrics + serving telemetry); a breach "
        "fails a WARN check that proposes the rollback a person can launch."
    ),
)
def production_slos(context: dg.AssetExecutionContext, stored_assets: StoredAssets):
    key = context.partition_key
    production = _production(context.instance, key)
    settings = _monitoring(key, production)
    metrics = stored_production_metrics(context.instance, stored_assets, key, settings.history_days)
    observations = daily_observations(metrics, _stored_telemetry(stored_assets, list(metrics)))
    breaches = find_breaches(observations, settings.slo)
    newest = max(metrics) if metrics else None
    yield dg.Output(observations, metadata=_slo_metadata(observations, breaches, newest, production))
    yield from _slo_checks(key, settings, breaches, observations, newest, production)


def _slo_metadata(
    observations: pl.DataFrame, breaches: dict[str, list[Breach]], newest: str | None, production: AuditRecord | None
) -> dict:
    return {
        "dagster/row_count": observations.height,
        "newest_day": newest or "(no production metrics yet)",
        "production": production.id if production else "(no promotion)",
        "breached": ", ".join(name for name, found in breaches.items() if found) or "none",
        "observations": table(observations.sort("day", descending=True), max_rows=30),
    }


def _slo_checks(
    key: str,
    settings: WorkloadMonitoring,
    breaches: dict[str, list[Breach]],
    observations: pl.DataFrame,
    newest: str | None,
    production: AuditRecord | None,
) -> Iterator[dg.AssetCheckResult]:
    """One WARN check per objective; a breach's metadata proposes the rollback."""
    for objective in OBJECTIVES:
        found = breaches[objective.name]
        limit = getattr(settings.slo, objective.name)
        proposals = [
            rollback_proposal(
                b, key, production.workload_id if production else None, production.id if production else None
            )
            for b in found
        ]
        yield dg.AssetCheckResult(
            check_name=f"slo_{objective.name}",
            passed=not found,
            severity=WARN,
            description=(
                "; ".join(b.describe() for b in found)
                if found
                else f"not watched (no limit for {key})"
                if limit is None
                else "no production metrics yet"
                if newest is None
                else f"within {limit:g} on {newest}"
                if has_figures(observations, objective)
                else f"no {objective.column} on {newest} (from {objective.source}): nothing judged"
            ),
            metadata=_breach_metadata(found, proposals) if found else {"limit": limit},
        )


def _stored_telemetry(stored_assets: StoredAssets, days: list[str]) -> dict[str, pl.DataFrame]:
    telemetry = {}
    for day in days:
        try:
            telemetry[day] = stored_assets.scan("serving_telemetry", day).collect()
        except FileNotFoundError:  # telemetry is optional: its SLOs judge nothing that day
            continue
    return telemetry


def _breach_metadata(found: list[Breach], proposals: list[dict]) -> dict:
    first = found[0]
    metadata = {
        "slo": first.objective.name,
        "limit": first.limit,
        "observed": first.observed,
        "excess": first.excess,
        "since": first.since,
        "served_model": first.served_model,
        "promotion": first.promotion or "(none)",
        "candidate": first.candidate or "(none)",
        "breaches": table(
            pl.DataFrame(
                [
                    {
                        "served_model": b.served_model,
                        "observed": b.observed,
                        "limit": b.limit,
                        "since": b.since,
                        "promotion": b.promotion,
                        "rollback": "proposed" if p["rollback"] else p["why_not"],
                    }
                    for b, p in zip(found, proposals)
                ]
            )
        ),
    }
    proposal = next((p for p in proposals if p["rollback"]), None)
    if proposal:
        metadata["rollback_run_config"] = dg.MetadataValue.json(proposal["rollback"])
        metadata["rollback_command"] = dg.MetadataValue.md(
            "Launch by hand (Launchpad: job `rollback`, partition "
            f"`{proposal['rollback']['partition']}`, this config), or fill in `approver` and run:\n\n"
            f"```\n{proposal['command']}\n```"
        )
    return metadata


# ----------------------------------------------------------------------------- canary
@dg.asset(
    partitions_def=workload_partitions,
    deps=[
        dg.AssetDep("raw_traces", partition_mapping=BY_WORKLOAD),
        dg.AssetDep("production_metrics", partition_mapping=BY_WORKLOAD),
    ],
    group_name="monitor",
    kinds={"polars", "scipy"},
    code_version="1",
    automation_condition=refresh_when_traffic_changed,
    description=(
        "While two versions serve the workload: the newest promotion's model against the other over the "
        "same window (latency, thumbs-down, tool-call validity, cost; tests and intervals) and a verdict."
    ),
)
def canary_analysis(context: dg.AssetExecutionContext, stored_assets: StoredAssets, tracker: Tracker):
    key = context.partition_key
    settings = _monitoring(key, _production(context.instance, key))
    metrics = stored_production_metrics(context.instance, stored_assets, key, settings.window_days)
    traffic = _canary_traffic(context.instance, stored_assets, key, metrics)
    if isinstance(traffic, str):
        context.log.info(f"{key}: no canary: {traffic}")
        return dg.Output(pl.DataFrame(), metadata={"verdict": "no_canary", "reason": traffic})
    baseline, canary = traffic
    result = analyse_canary(baseline, canary, settings.canary)
    context.log.info(f"{key}: {result.verdict}: {result.reason}")
    metadata = _canary_metadata(result, baseline, canary, sorted(metrics), settings.canary.alpha)
    if tracker.enabled:
        metadata |= log_with_promoted_model(
            context, tracker, "canary_analysis", key, key, result.table(), {"verdict": result.verdict}
        )
    return dg.Output(result.table(), metadata=metadata)


def _canary_traffic(
    instance: dg.DagsterInstance, stored_assets: StoredAssets, key: str, metrics: dict[str, pl.DataFrame]
) -> tuple[VersionTraffic, VersionTraffic] | str:
    """The previous version's and the canary's requests over the window, or why there is no canary."""
    versions = pick_versions(pl.concat(metrics.values(), how="diagonal_relaxed")) if metrics else "no traffic yet"
    if isinstance(versions, str):
        return versions
    days = materialized_days(instance, key)
    models = load_models()
    costs = {name: c.cost for c in models.candidates for name in c.served_names}
    with stored_assets.pinned("raw_traces", [days[d] for d in metrics if d in days]) as frames:
        requests = request_values(stored_traces(frames, with_quality=True), costs, models.production)
    baseline, canary = (
        VersionTraffic.from_requests(name, requests.filter(pl.col("served_model") == name)) for name in versions
    )
    return baseline, canary


def _canary_metadata(result, baseline: VersionTraffic, canary: VersionTraffic, window: list[str], alpha: float) -> dict:
    return {
        "verdict": result.verdict,
        "reason": dg.MetadataValue.md(result.reason),
        "baseline": f"{baseline.served_model} ({baseline.requests} requests)",
        "canary": f"{canary.served_model} ({canary.requests} requests)",
        "window": ", ".join(window),
        "alpha": alpha,
        "tests": table(result.table(), max_rows=10, max_chars=200),
        **(
            {"more_requests_needed": dg.MetadataValue.json(result.more_requests_needed)}
            if result.more_requests_needed
            else {}
        ),
    }


# ----------------------------------------------------------------------------- drift
@dg.asset(
    partitions_def=workload_partitions,
    deps=[dg.AssetDep("raw_traces", partition_mapping=BY_WORKLOAD)],
    # partitioned: a check result of one workload must not stand for the others in automation
    check_specs=[
        dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset="traffic_drift",
            partitions_def=workload_partitions,
            description="Recent traffic stays close to the promoted model's train split.",
        )
    ],
    group_name="monitor",
    kinds={"polars", "scipy"},
    code_version="1",
    automation_condition=refresh_when_traffic_changed,
    description=(
        "Recent traffic against the train split behind the promoted model: tool mix, unseen tools, prompt "
        "lengths, novel prompts. A breach starts a new curate -> split -> train -> evaluate turn."
    ),
)
def traffic_drift(context: dg.AssetExecutionContext, stored_assets: StoredAssets, tracker: Tracker):
    key = context.partition_key
    result, window, reference_version, reference_note = _measure_drift(context.instance, stored_assets, key)
    metadata = _drift_metadata(result, window, reference_note)
    context.log.info(f"{key}: drift {metadata['breached']} ({result.note or reference_note})")
    if tracker.enabled:
        metadata |= log_with_promoted_model(
            context, tracker, "traffic_drift", key, key, result.table(), {"breached": len(result.breached)}
        )
    yield dg.Output(result.table(), data_version=dg.DataVersion(result.signature(reference_version)), metadata=metadata)
    yield _drift_check(result, metadata["breached"], key)


def _drift_check(result, breached: str, key: str) -> dg.AssetCheckResult:
    description = (
        f"drift: {breached}; a new turn is requested for {key}"
        if result.breached
        else result.note or "within thresholds"
    )
    return dg.AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=not result.breached,
        severity=WARN,
        description=description,
        metadata={"breached": breached},
    )


def _measure_drift(instance: dg.DagsterInstance, stored_assets: StoredAssets, key: str):
    """The drift of the recent window against the promoted model's train split: the result,
    the window's days, the split's data version and what that split is."""
    production = _production(instance, key)
    settings = _monitoring(key, production)
    days = materialized_days(instance, key)
    window = lookback_days(list(days), settings.drift.recent_days)
    reference, reference_version, reference_note = _reference(instance, stored_assets, key, production)
    with stored_assets.pinned("raw_traces", [days[d] for d in window]) as frames:
        recent = recent_requests(stored_traces(frames))
    result = measure_drift(recent, reference, settings.drift)
    if reference.is_empty():
        result.note = reference_note
    return result, window, reference_version, reference_note


def _drift_metadata(result, window: list[str], reference_note: str) -> dict:
    summary = ", ".join(f"{m} {result.measures[m]:.3f} > {result.thresholds[m]:g}" for m in result.breached)
    return {
        "breached": summary or "none",
        "recent_days": ", ".join(window) or "(no traffic)",
        "recent_requests": result.recent_requests,
        "reference": reference_note,
        "reference_train_records": result.reference_requests,
        "unseen_tools": ", ".join(result.unseen_tools) or "none",
        "measures": table(result.table()),
        **({"note": result.note} if result.note else {}),
    }


def _reference(
    instance: dg.DagsterInstance, stored_assets: StoredAssets, key: str, production: AuditRecord | None
) -> tuple[pl.DataFrame, str, str]:
    """The train split drift compares with, its data version, and what it is."""
    current = latest_materialization(instance, "train_dataset", key)
    if current is None:
        return split_requests(pl.DataFrame(schema=SPLIT_SCHEMA)), "none", "no train split yet"
    promoted = next((m for m in production.upstream if m.asset == "train_dataset"), None) if production else None
    reference = split_requests(stored_assets.scan("train_dataset", key))
    if promoted is None:
        return reference, current.data_version or "", f"current train split {current.data_version} (no promotion)"
    if promoted.data_version == current.data_version:
        return (
            reference,
            promoted.data_version or "",
            f"train split {promoted.data_version} of promotion {production.id}",
        )
    # the store keeps the newest split only; the version behind the promotion keys the breach
    return (
        reference,
        promoted.data_version or "",
        (
            f"current train split {current.data_version}; promotion {production.id} was trained on "
            f"{promoted.data_version}, no longer stored"
        ),
    )


def turn_started_by(instance: dg.DagsterInstance, key: str) -> dict:
    """Leaderboard metadata: drift started this turn when the workload's latest
    `traffic_drift` is a breach recorded after the previous leaderboard."""
    drift = latest_materialization(instance, "traffic_drift", key)
    if drift is None or drift.summary.get("breached", "none") == "none":
        return {"turn_started_by": "new data"}
    board = latest_materialization(instance, "leaderboard", key)
    if board is not None and board.timestamp > drift.timestamp:
        return {"turn_started_by": "new data"}
    return {
        "turn_started_by": f"drift: {drift.summary['breached']} (traffic_drift run {drift.run_id[:8]})",
        "drift_run": dg.MetadataValue.dagster_run(drift.run_id),
    }


MONITORING_ASSETS = [production_slos, canary_analysis, traffic_drift]
