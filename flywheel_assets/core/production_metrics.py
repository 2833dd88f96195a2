"""Production metrics of one day x workload of traces, per served model (no Dagster).

The model that answered a trace is `response.model` (what the serving layer reports), else
the request's `model`. Each served model name is tied to the candidate configured to serve
under it (`CandidateSpec.served_names`) and to the promotion that approved it: the latest
promote or rollback record of the workload, made no later than the end of the day, whose
target serves under that name (names taken from the candidate's configuration recorded in
the audit record). A served model no promotion approved is kept, with `approved` false.

Figures a trace does not carry are missing (null), never 0: no latency on any request of a
model gives null quantiles, no feedback gives null rates. Latency quantiles interpolate
linearly between samples, as numpy's default does.

Empty answers fail trace validation (`empty_response`) and land in `quarantined_traces`;
`empty_answers` counts them per served model, so that they count as requests whose answer
was empty instead of disappearing from the rate. Refused answers: the message's `refusal`,
`finish_reason` `content_filter`, or an answer that opens with a refusal phrase.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence

import polars as pl

from flywheel_assets.core.audit import AuditRecord
from flywheel_assets.core.candidates import CandidateSpec, CostProfile
from flywheel_assets.core.tool_schema import check_tool_call

PRODUCTION_METRICS_SCHEMA: dict[str, pl.DataType] = {
    "served_model": pl.String,
    "candidate": pl.String,
    "promotion": pl.String,
    "approved": pl.Boolean,
    "requests": pl.Int64,
    "latency_measured": pl.Int64,
    "latency_p50_s": pl.Float64,
    "latency_p95_s": pl.Float64,
    "latency_p99_s": pl.Float64,
    "prompt_tokens_per_request": pl.Float64,
    "completion_tokens_per_request": pl.Float64,
    "estimated_cost_usd": pl.Float64,
    "feedback_count": pl.Int64,
    "thumbs_up_rate": pl.Float64,
    "thumbs_down_rate": pl.Float64,
    "tool_calls": pl.Int64,
    "tool_call_name_valid_rate": pl.Float64,
    "tool_call_schema_valid_rate": pl.Float64,
    "empty_or_refused_rate": pl.Float64,
}

UNKNOWN_MODEL = "(unknown)"  # a trace that names no model at all

# an answer that opens like this declines the request (English; other refusals come through
# the `refusal` field or `finish_reason`)
_DECLINE = r"(?:can['’]?t|cannot|won['’]?t|will not|(?:am|['’]m) (?:not able|unable) to)"
REFUSAL_OPENING = (
    rf"(?i)^\s*(?:(?:(?:i['’]?m|i am) sorry|sorry|i apologi[sz]e)[,.!]?\s*(?:but,?\s*)?(?:i|we)\s*{_DECLINE}"
    rf"|(?:i|we)\s*{_DECLINE}\s+(?:help|assist|provide|comply|do that|answer)"
    r"|as an ai\b)"
)

_MESSAGE = "$.choices[0].message"


def served_model_expr() -> pl.Expr:
    """The model that answered a `raw_traces` record: `response.model`, else the request's `model`."""
    return pl.coalesce(
        pl.col("raw").str.json_path_match("$.response.model"), pl.col("model"), pl.lit(UNKNOWN_MODEL)
    ).alias("served_model")


def approvals(history: Sequence[AuditRecord], until: dt.datetime) -> dict[str, AuditRecord]:
    """Served model name -> the latest record (promote or rollback) made no later than
    `until` whose target serves under that name."""
    approved: dict[str, AuditRecord] = {}
    for record in sorted(history, key=lambda r: dt.datetime.fromisoformat(r.at)):
        if dt.datetime.fromisoformat(record.at) > until:
            break
        for name in _target_names(record):
            approved[name] = record
    return approved


def _target_names(record: AuditRecord) -> list[str]:
    target = record.target
    try:
        return CandidateSpec.model_validate(target.spec or {"name": target.candidate}).served_names
    except ValueError:  # a record written under an older configuration format
        return [n for n in (target.candidate, target.spec.get("model_id")) if n]


def metrics_by_served_model(
    traces: pl.DataFrame | pl.LazyFrame,
    *,
    candidates: Sequence[CandidateSpec],
    approved: Mapping[str, AuditRecord],
    empty_answers: Mapping[str, int] | None = None,
) -> pl.DataFrame:
    """One row per served model of `traces` (columns of `raw_traces`), in
    PRODUCTION_METRICS_SCHEMA; `empty_answers`: quarantined empty answers per served model."""
    # each json_path_match parses its whole document: the long record (request, tools,
    # messages) is parsed once, for its response; the answer's fields come from the short
    # response text (`answer_fields`), the offered tools from `offered_tools`
    traces = traces.lazy().collect()
    frame = traces.select(
        pl.col("raw").str.json_path_match("$.response").alias("response"),
        pl.col("model").alias("request_model"),
        pl.col("latency_ms") / 1000,
        "prompt_tokens",
        "completion_tokens",
        "feedback_thumbs",
        "has_tool_calls",
        offered_tools(traces).alias("tools"),
    )
    frame = pl.concat(
        [frame, answer_fields(frame.get_column("response"), frame.get_column("tools").is_not_null())], how="horizontal"
    ).select(
        pl.coalesce("response_model", "request_model", pl.lit(UNKNOWN_MODEL)).alias("served_model"),
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "feedback_thumbs",
        _refused().alias("refused"),
        "tools",
        "calls",
    )
    checks = tool_call_checks(frame.select("tools", "calls").drop_nulls().unique())
    by_model = (
        frame.lazy()
        .join(checks.lazy(), on=["tools", "calls"], how="left", nulls_equal=False)
        .group_by("served_model")
        .agg(
            pl.len().alias("requests"),
            pl.col("latency_ms").count().alias("latency_measured"),
            *(
                pl.col("latency_ms").quantile(q, interpolation="linear").alias(f"latency_p{round(q * 100)}_s")
                for q in (0.5, 0.95, 0.99)
            ),
            pl.col("prompt_tokens").mean().alias("prompt_tokens_per_request"),
            pl.col("completion_tokens").mean().alias("completion_tokens_per_request"),
            pl.col("prompt_tokens").sum().alias("_prompt_tokens"),
            pl.col("completion_tokens").sum().alias("_completion_tokens"),
            pl.col("prompt_tokens").count().alias("_usage_reported"),
            pl.col("feedback_thumbs").count().alias("feedback_count"),
            (pl.col("feedback_thumbs") == "up").sum().alias("_up"),
            (pl.col("feedback_thumbs") == "down").sum().alias("_down"),
            pl.col("call_count").sum().alias("tool_calls"),
            pl.col("names_offered").sum().alias("_names_offered"),
            pl.col("schemas_valid").sum().alias("_schemas_valid"),
            pl.col("refused").sum().alias("_refused"),
        )
        .collect()
    )
    by_model = _with_empty_answers(by_model, empty_answers or {})
    return _finish(by_model, candidates, approved)


MAX_TOOL_SETS = 16  # distinct tool sets resolved by substring; more are parsed per record


def offered_tools(traces: pl.DataFrame) -> pl.Series:
    """Per record with tool calls, the offered tools' JSON text (null for the others).

    Parsing each record for its tools costs as much as parsing the whole record, but a
    workload offers the same few tool sets all day. So for each distinct set of tool names
    (the `tool_names` column) the tools array of its first record is cut out verbatim, and
    every record holding that exact text offers those tools (the text of a JSON array can
    stand in a record only as a value, never inside a string, where its quotes are escaped);
    a record that differs (another schema, other formatting) is parsed on its own."""
    with_tools = pl.col("has_tools") & pl.col("has_tool_calls")
    firsts = traces.filter(with_tools).unique("tool_names", keep="first", maintain_order=True).head(MAX_TOOL_SETS)
    found = pl.lit(None, dtype=pl.String)
    for tool_names, raw in firsts.select("tool_names", "raw").iter_rows():
        verbatim = _verbatim_tools(raw)
        if verbatim is not None:
            # `contains` with a needle of kilobytes is slow in polars: find a short head, compare the rest
            head, tail = verbatim[:64], verbatim[64:]
            after_head = pl.col("raw").str.splitn(head, 2).struct.field("field_1")
            holds = with_tools & (pl.col("tool_names") == tool_names) & after_head.str.starts_with(tail)
            found = pl.when(holds).then(pl.lit(verbatim)).otherwise(found)
    tools = traces.select(found.alias("tools"), with_tools.alias("with_tools")).with_row_index()
    # polars evaluates every branch of a when/then on every row: parse only the rest
    rest = tools.filter(pl.col("with_tools") & pl.col("tools").is_null()).get_column("index")
    parsed = traces[rest].select(pl.col("raw").str.json_path_match("$.request.tools")).to_series()
    return tools.get_column("tools").scatter(rest, parsed) if len(rest) else tools.get_column("tools")


def _verbatim_tools(raw: str) -> str | None:
    """The text of `request.tools` as it stands in the record `raw`, or None."""
    try:
        tools = json.loads(raw)["request"]["tools"]
    except (ValueError, KeyError, TypeError):
        return None
    decoder = json.JSONDecoder()
    for match in re.finditer(r'"tools"\s*:\s*', raw):
        try:
            value, end = decoder.raw_decode(raw, match.end())
        except ValueError:
            continue
        if value == tools:
            return raw[match.end() : end]
    return None


_ANSWER = pl.Struct(
    {
        "model": pl.String,
        "choices": pl.List(
            pl.Struct(
                {
                    "finish_reason": pl.String,
                    "message": pl.Struct({"content": pl.String, "refusal": pl.String}),
                }
            )
        ),
    }
)


def answer_fields(response: pl.Series, with_tools: pl.Series) -> pl.DataFrame:
    """From each response's JSON text: `response_model`, `finish_reason`, the message's
    `content` and `refusal`, and, where `with_tools`, its `calls` (tool_calls as JSON text).
    Decoded into typed fields in one pass; where a field holds another type (a number for
    `model`, an object for `refusal`) polars refuses the whole column, so each field is then
    looked up by path."""
    rows = with_tools.arg_true()
    calls = pl.repeat(None, len(response), dtype=pl.String, eager=True).alias("calls")
    if len(rows):
        calls = calls.scatter(rows, response.gather(rows).str.json_path_match(f"{_MESSAGE}.tool_calls"))
    try:
        decoded = response.str.json_decode(_ANSWER)
    except pl.exceptions.PolarsError:
        message = response.str.json_path_match(_MESSAGE)
        return pl.DataFrame(
            [
                response.str.json_path_match("$.model").alias("response_model"),
                response.str.json_path_match("$.choices[0].finish_reason").alias("finish_reason"),
                message.str.json_path_match("$.content").alias("content"),
                message.str.json_path_match("$.refusal").alias("refusal"),
                calls,
            ]
        )
    first = decoded.struct.field("choices").list.first()
    message = first.struct.field("message")
    return pl.DataFrame(
        [
            decoded.struct.field("model").alias("response_model"),
            first.struct.field("finish_reason"),
            message.struct.field("content"),
            message.struct.field("refusal"),
            calls,
        ]
    )


def _refused() -> pl.Expr:
    """From the answer's `content`, `refusal` and `finish_reason` columns."""
    return (
        (pl.col("refusal").is_not_null() & (pl.col("refusal").str.strip_chars() != ""))
        | (pl.col("finish_reason") == "content_filter")
        | (~pl.col("has_tool_calls") & pl.col("content").str.contains(REFUSAL_OPENING))
    ).fill_null(False)


def tool_call_checks(distinct: pl.DataFrame) -> pl.DataFrame:
    """Per distinct (tools, calls) pair of JSON texts: calls made, calls naming an offered
    tool, calls whose arguments validate against the tool's schema. A workload offers the
    same tools all day and models repeat their calls, so pairs repeat."""
    results = [_check_calls(tools, calls) for tools, calls in distinct.iter_rows()]
    return distinct.with_columns(
        pl.Series("call_count", [r[0] for r in results], dtype=pl.Int64),
        pl.Series("names_offered", [r[1] for r in results], dtype=pl.Int64),
        pl.Series("schemas_valid", [r[2] for r in results], dtype=pl.Int64),
    )


def _check_calls(tools_json: str | None, calls_json: str | None) -> tuple[int, int, int]:
    tools = _json_list(tools_json)
    calls = _json_list(calls_json)
    offered = valid = 0
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        check = check_tool_call(tools, name if isinstance(name, str) else "", function.get("arguments"))
        offered += check.name_offered
        # a tool that declares no usable schema: its calls count as valid once their arguments parse
        valid += bool(
            check.schema_valid or (check.schema_valid is None and check.name_offered and check.arguments_parse)
        )
    return len(calls), offered, valid


def _json_list(text: str | None) -> list:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _with_empty_answers(by_model: pl.DataFrame, empty_answers: Mapping[str, int]) -> pl.DataFrame:
    if not empty_answers:
        return by_model
    empty = pl.DataFrame(
        {"served_model": list(empty_answers), "_empty": list(empty_answers.values())},
        schema={"served_model": pl.String, "_empty": pl.Int64},
    )
    joined = by_model.join(empty, on="served_model", how="full", coalesce=True)
    return joined.with_columns(
        (pl.col("requests").fill_null(0) + pl.col("_empty").fill_null(0)).alias("requests"),
        (pl.col("_refused").fill_null(0) + pl.col("_empty").fill_null(0)).alias("_refused"),
        *(
            pl.col(c).fill_null(0)
            for c in (
                "latency_measured",
                "feedback_count",
                "tool_calls",
                "_up",
                "_down",
                "_names_offered",
                "_schemas_valid",
                "_usage_reported",
            )
        ),
    ).drop("_empty")


def _finish(
    by_model: pl.DataFrame, candidates: Sequence[CandidateSpec], approved: Mapping[str, AuditRecord]
) -> pl.DataFrame:
    serving = {name: c for c in candidates for name in c.served_names}
    for name, record in approved.items():  # a candidate since removed from the configuration
        serving.setdefault(name, CandidateSpec(name=record.target.candidate))
    models = by_model.get_column("served_model").to_list()
    profiles = {m: serving[m].cost for m in models if m in serving}
    resolved = pl.DataFrame(
        {
            "served_model": models,
            "candidate": [serving[m].name if m in serving else None for m in models],
            "promotion": [approved[m].id if m in approved else None for m in models],
            "_usd_per_prompt_token": [_per_token(profiles.get(m), "prompt") for m in models],
            "_usd_per_completion_token": [_per_token(profiles.get(m), "completion") for m in models],
        },
        schema={
            "served_model": pl.String,
            "candidate": pl.String,
            "promotion": pl.String,
            "_usd_per_prompt_token": pl.Float64,
            "_usd_per_completion_token": pl.Float64,
        },
    )

    def rate(part: str, whole: str) -> pl.Expr:
        return pl.when(pl.col(whole) > 0).then(pl.col(part) / pl.col(whole))

    return (
        by_model.join(resolved, on="served_model", how="left")
        .with_columns(
            pl.col("promotion").is_not_null().alias("approved"),
            pl.when(pl.col("_usage_reported") > 0)
            .then(
                pl.col("_prompt_tokens").fill_null(0) * pl.col("_usd_per_prompt_token")
                + pl.col("_completion_tokens").fill_null(0) * pl.col("_usd_per_completion_token")
            )
            .alias("estimated_cost_usd"),
            rate("_up", "feedback_count").alias("thumbs_up_rate"),
            rate("_down", "feedback_count").alias("thumbs_down_rate"),
            rate("_names_offered", "tool_calls").alias("tool_call_name_valid_rate"),
            rate("_schemas_valid", "tool_calls").alias("tool_call_schema_valid_rate"),
            rate("_refused", "requests").alias("empty_or_refused_rate"),
        )
        .select(pl.col(c).cast(t) for c, t in PRODUCTION_METRICS_SCHEMA.items())
        .sort("requests", "served_model", descending=[True, False])
    )


def _per_token(profile: CostProfile | None, kind: str) -> float | None:
    if profile is None:
        return None
    return getattr(profile, f"usd_per_million_{kind}_tokens") / 1e6


def empty_answers_by_model(quarantined: pl.DataFrame | pl.LazyFrame) -> dict[str, int]:
    """Quarantined `empty_response` traces per served model (those whose raw text names one)."""
    empty = (
        quarantined.lazy()
        .filter(pl.col("reason") == "empty_response")
        .select(
            pl.coalesce(
                pl.col("raw").str.json_path_match("$.response.model"),
                pl.col("raw").str.json_path_match("$.request.model"),
                pl.lit(UNKNOWN_MODEL),
            ).alias("served_model")
        )
        .group_by("served_model")
        .len()
        .collect()
    )
    return dict(empty.iter_rows())


def day_end(day: str) -> dt.datetime:
    """The end of a UTC day partition: promotions made by then approve that day's traffic."""
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time.max, tzinfo=dt.UTC)
