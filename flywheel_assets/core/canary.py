"""Canary analysis: the new version of a workload's model against the previous one, over
the same window of production traffic, with a verdict for a person.

Per-request values of both versions are compared one-sided, in the direction that would
hurt (the canary slower, more thumbs-down, fewer valid tool calls, dearer):

| metric | test (scipy.stats) | interval shown |
|---|---|---|
| latency | Mann-Whitney U, canary > baseline x (1 + tolerance) | bootstrap CI of the p50 and p95 ratios |
| thumbs-down rate | Fisher's exact test on down/up counts | Wilson CI of each rate |
| tool-call validity | Fisher's exact test on invalid/valid calls | Wilson CI of each rate |
| cost per request | Mann-Whitney U, canary > baseline x (1 + tolerance) | Welch CI of the difference of means |

The p-values of the metrics tested are adjusted together with Benjamini-Hochberg
(`scipy.stats.false_discovery_control`): when nothing really differs, every rejection is a
false one, so the chance of any false alarm stays at `alpha`. The latency and cost
tolerances keep a negligible difference seen over very large traffic from rolling back.

Verdicts: `keep_watching` while a version has fewer than `min_requests` requests (with the
number still needed), else `roll_back` when a regression is significant, else
`promote_fully`. A verdict proposes; a person promotes or rolls back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from flywheel_assets.core.candidates import CostProfile

# scipy.stats is imported where it is used: importing it takes about half a second, and the
# code location (every run's process) imports this module

Verdict = Literal["promote_fully", "keep_watching", "roll_back"]


class CanaryPolicy(BaseModel):
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Chance of a false roll back when nothing differs.")
    min_requests: int = Field(default=300, ge=10, description="Requests per version before a verdict.")
    latency_tolerance: float = Field(default=0.05, ge=0, description="Relative latency increase accepted.")
    cost_tolerance: float = Field(default=0.05, ge=0, description="Relative cost increase accepted.")
    bootstrap_resamples: int = Field(default=999, ge=99)
    seed: int = 0


@dataclass
class VersionTraffic:
    """Per-request values of one served model over the window (latency NaN: not reported)."""

    served_model: str
    latency_s: np.ndarray
    thumbs_down: int
    thumbs_up: int
    tool_calls_valid: int
    tool_calls_invalid: int
    cost_usd: np.ndarray  # per request; empty when the model has no cost profile

    @property
    def requests(self) -> int:
        return len(self.latency_s)

    @classmethod
    def from_requests(cls, served_model: str, requests: pl.DataFrame) -> VersionTraffic:
        """From one row per request: `latency_s` (null: missing), `thumbs` ("up"/"down"/null),
        `tool_calls_valid`, `tool_calls_invalid` (ints) and `cost_usd` (null: unknown)."""
        thumbs = requests["thumbs"]
        cost = requests["cost_usd"].drop_nulls()
        return cls(
            served_model=served_model,
            latency_s=requests["latency_s"].cast(pl.Float64).fill_null(float("nan")).to_numpy(),
            thumbs_down=int((thumbs == "down").sum()),
            thumbs_up=int((thumbs == "up").sum()),
            tool_calls_valid=int(requests["tool_calls_valid"].sum()),
            tool_calls_invalid=int(requests["tool_calls_invalid"].sum()),
            cost_usd=cost.to_numpy() if cost.len() == requests.height else np.array([]),
        )


@dataclass
class MetricTest:
    metric: str
    baseline: float | None
    canary: float | None
    p_value: float | None = None  # None: not tested (no data on one side)
    p_adjusted: float | None = None
    regression: bool = False
    interval: str = ""
    note: str = ""


@dataclass
class CanaryResult:
    verdict: Verdict
    reason: str
    baseline: str
    canary: str
    tests: list[MetricTest]
    more_requests_needed: dict[str, int]

    def table(self) -> pl.DataFrame:
        return pl.DataFrame(
            [vars(t) for t in self.tests],
            schema={
                "metric": pl.String,
                "baseline": pl.Float64,
                "canary": pl.Float64,
                "p_value": pl.Float64,
                "p_adjusted": pl.Float64,
                "regression": pl.Boolean,
                "interval": pl.String,
                "note": pl.String,
            },
        )


def request_values(
    traces: pl.DataFrame | pl.LazyFrame, costs: dict[str, CostProfile], other: CostProfile
) -> pl.DataFrame:
    """One row per `raw_traces` record with the per-request values `VersionTraffic` reads;
    its tool calls as judged when it landed (the columns `production_metrics` sums).
    `costs`: served model name -> its candidate's cost profile; `other` prices the rest (the
    production model a promotion replaced)."""
    frame = (
        traces.lazy()
        .select(
            "served_model",
            (pl.col("latency_ms") / 1000).alias("latency_s"),
            pl.col("feedback_thumbs").alias("thumbs"),
            "prompt_tokens",
            "completion_tokens",
            pl.col("tool_calls_schema_valid").alias("tool_calls_valid"),
            (pl.col("tool_calls") - pl.col("tool_calls_schema_valid")).alias("tool_calls_invalid"),
        )
        .collect()
    )
    models = frame.get_column("served_model").unique().to_list()
    prices = pl.DataFrame(
        {
            "served_model": models,
            "_prompt_usd": [costs.get(m, other).usd_per_million_prompt_tokens / 1e6 for m in models],
            "_completion_usd": [costs.get(m, other).usd_per_million_completion_tokens / 1e6 for m in models],
        },
        schema={"served_model": pl.String, "_prompt_usd": pl.Float64, "_completion_usd": pl.Float64},
    )
    return frame.join(prices, on="served_model", how="left").select(
        "served_model",
        "latency_s",
        "thumbs",
        "tool_calls_valid",
        "tool_calls_invalid",
        (
            pl.col("prompt_tokens") * pl.col("_prompt_usd") + pl.col("completion_tokens") * pl.col("_completion_usd")
        ).alias("cost_usd"),
    )


def pick_versions(metrics: pl.DataFrame) -> tuple[str, str] | str:
    """(baseline, canary) served models from `production_metrics` rows of the window: the
    canary is the model of the newest promotion (record ids sort by time), the baseline the
    busiest other model; or why there is no canary to analyse."""
    served = (
        metrics.group_by("served_model")
        .agg(pl.col("requests").sum(), pl.col("promotion").drop_nulls().max())
        .sort("requests", descending=True)
    )
    if served.height < 2:
        return f"one version serves the workload ({', '.join(served.get_column('served_model')) or 'no traffic'})"
    promoted = served.filter(pl.col("promotion").is_not_null()).sort("promotion", descending=True)
    if promoted.is_empty():
        return f"no promotion approved any of {', '.join(served.get_column('served_model'))}"
    canary = promoted.get_column("served_model")[0]
    baseline = served.filter(pl.col("served_model") != canary).get_column("served_model")[0]
    return baseline, canary


def _latency(v: VersionTraffic) -> np.ndarray:
    return v.latency_s[~np.isnan(v.latency_s)]


def _rate(bad: int, good: int) -> float | None:
    return bad / (bad + good) if bad + good else None


def _fisher(metric: str, base_bad: int, base_good: int, can_bad: int, can_good: int) -> MetricTest:
    from scipy import stats

    test = MetricTest(metric, _rate(base_bad, base_good), _rate(can_bad, can_good))
    if test.baseline is None or test.canary is None:
        test.note = "not tested: no data for one version"
        return test
    # one-sided: the canary's share of bad outcomes is higher
    test.p_value = float(stats.fisher_exact([[can_bad, can_good], [base_bad, base_good]], alternative="greater").pvalue)
    return test


def _mann_whitney(metric: str, base: np.ndarray, can: np.ndarray, tolerance: float) -> MetricTest:
    from scipy import stats

    test = MetricTest(
        metric, float(np.median(base)) if len(base) else None, float(np.median(can)) if len(can) else None
    )
    if not len(base) or not len(can):
        test.note = "not tested: no data for one version"
        return test
    # H0: the canary is at most (1 + tolerance) times the baseline (a scale shift)
    test.p_value = float(stats.mannwhitneyu(can, base * (1 + tolerance), alternative="greater").pvalue)
    return test


def significance_tests(baseline: VersionTraffic, canary: VersionTraffic, policy: CanaryPolicy) -> list[MetricTest]:
    """One test per metric both versions have data for, adjusted together (no intervals)."""
    from scipy import stats

    tests = [
        _mann_whitney("latency_s (median)", _latency(baseline), _latency(canary), policy.latency_tolerance),
        _fisher("thumbs_down_rate", baseline.thumbs_down, baseline.thumbs_up, canary.thumbs_down, canary.thumbs_up),
        _fisher(
            "tool_call_invalid_rate",
            baseline.tool_calls_invalid,
            baseline.tool_calls_valid,
            canary.tool_calls_invalid,
            canary.tool_calls_valid,
        ),
        _mann_whitney("cost_usd_per_request (median)", baseline.cost_usd, canary.cost_usd, policy.cost_tolerance),
    ]
    tested = [t for t in tests if t.p_value is not None]
    if tested:
        adjusted = stats.false_discovery_control([t.p_value for t in tested], method="bh")
        for test, p in zip(tested, adjusted):
            test.p_adjusted = float(p)
            test.regression = bool(p <= policy.alpha)
    return tests


def verdict(
    baseline: VersionTraffic, canary: VersionTraffic, policy: CanaryPolicy
) -> tuple[Verdict, str, list[MetricTest], dict[str, int]]:
    needed = {
        v.served_model: policy.min_requests - v.requests for v in (baseline, canary) if v.requests < policy.min_requests
    }
    tests = significance_tests(baseline, canary, policy)
    if needed:
        more = ", ".join(f"{n} more requests of {name}" for name, n in needed.items())
        return "keep_watching", f"not enough traffic yet ({policy.min_requests} per version): {more}", tests, needed
    regressions = [t for t in tests if t.regression]
    if regressions:
        what = ", ".join(
            f"{t.metric} {t.baseline:.4g} -> {t.canary:.4g} (adjusted p {t.p_adjusted:.2g})" for t in regressions
        )
        return "roll_back", f"{canary.served_model} is worse than {baseline.served_model}: {what}", tests, {}
    return (
        "promote_fully",
        (
            f"no significant regression of {canary.served_model} against {baseline.served_model} "
            f"at alpha {policy.alpha} ({canary.requests} vs {baseline.requests} requests)"
        ),
        tests,
        {},
    )


def analyse_canary(baseline: VersionTraffic, canary: VersionTraffic, policy: CanaryPolicy) -> CanaryResult:
    """The verdict, with confidence intervals for a person reading it."""
    outcome, reason, tests, needed = verdict(baseline, canary, policy)
    intervals = {
        "latency_s (median)": _latency_interval(_latency(baseline), _latency(canary), policy),
        "thumbs_down_rate": _rates_interval(
            baseline.thumbs_down, baseline.thumbs_up, canary.thumbs_down, canary.thumbs_up
        ),
        "tool_call_invalid_rate": _rates_interval(
            baseline.tool_calls_invalid, baseline.tool_calls_valid, canary.tool_calls_invalid, canary.tool_calls_valid
        ),
        "cost_usd_per_request (median)": _mean_difference_interval(baseline.cost_usd, canary.cost_usd),
    }
    for test in tests:
        test.interval = intervals[test.metric]
    return CanaryResult(outcome, reason, baseline.served_model, canary.served_model, tests, needed)


def _latency_interval(base: np.ndarray, can: np.ndarray, policy: CanaryPolicy) -> str:
    from scipy import stats

    if len(base) < 2 or len(can) < 2:
        return ""
    parts = []
    for q in (50, 95):

        def ratio(b, c, axis, q=q):  # q bound now: the bootstrap calls it after the loop moved on
            return np.percentile(c, q, axis=axis) / np.percentile(b, q, axis=axis)

        ci = stats.bootstrap(
            (base, can),
            ratio,
            n_resamples=policy.bootstrap_resamples,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(policy.seed),
        ).confidence_interval
        parts.append(f"p{q} canary/baseline {ratio(base, can, None):.3f} [95% CI {ci.low:.3f}, {ci.high:.3f}]")
    return "; ".join(parts)


def _wilson(bad: int, good: int) -> str:
    from scipy import stats

    if not bad + good:
        return "n/a"
    ci = stats.binomtest(bad, bad + good).proportion_ci(method="wilson")
    return f"{bad / (bad + good):.3f} [{ci.low:.3f}, {ci.high:.3f}] of {bad + good}"


def _rates_interval(base_bad: int, base_good: int, can_bad: int, can_good: int) -> str:
    return f"baseline {_wilson(base_bad, base_good)}; canary {_wilson(can_bad, can_good)} (95% Wilson)"


def _mean_difference_interval(base: np.ndarray, can: np.ndarray) -> str:
    from scipy import stats

    if len(base) < 2 or len(can) < 2:
        return ""
    ci = stats.ttest_ind(can, base, equal_var=False).confidence_interval()
    return f"mean canary - baseline {can.mean() - base.mean():.3g} USD [95% CI {ci.low:.3g}, {ci.high:.3g}]"
