"""`judge_calibration`: how well the chat similarity in use agrees with human scores.

Scores the shipped gold set (`core/calibration.py`) with whatever scores chat evaluations:
the LLM judge when `FLYWHEEL_JUDGE_BASE_URL` is set, else token F1, and says which. Run it
by hand after configuring or changing the judge (it has no automation condition, so it
never adds a run, or a failure, to the demo or the live flywheel); its check warns when the
agreement is below the configured floors.
"""

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.calibration import Calibration, calibrate, load_gold_set
from flywheel_assets.metadata import table
from resources.platform import ModelPlatform

AGREEMENT_CHECK = "agrees_with_human_scores"


class JudgeCalibrationConfig(dg.Config):
    min_spearman: float = Field(default=0.6, description="warn below this rank correlation with the human scores")
    min_kappa: float = Field(default=0.4, description="warn below this Cohen's kappa on low/mid/high bins")


CALIBRATION_ROWS = {
    "id": pl.String,
    "human": pl.Float64,
    "machine": pl.Float64,
    "human_bin": pl.String,
    "machine_bin": pl.String,
    "reason": pl.String,
    "note": pl.String,
}


@dg.asset(
    group_name="evaluate",
    kinds={"polars"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            AGREEMENT_CHECK,
            asset="judge_calibration",
            description="The chat similarity agrees with the human gold scores.",
        )
    ],
    description="Agreement of the chat similarity in use (LLM judge or token F1) with a human-scored gold set.",
)
def judge_calibration(context: dg.AssetExecutionContext, config: JudgeCalibrationConfig, platform: ModelPlatform):
    result = calibrate(load_gold_set(), platform.judge())
    rows = pl.DataFrame(result.rows, schema=CALIBRATION_ROWS, orient="row")
    yield dg.Output(rows, metadata=_calibration_metadata(result, rows))
    yield _agreement_check(result.method, result.spearman, result.kappa, result.unscored, config)


def _calibration_metadata(result: Calibration, rows: pl.DataFrame) -> dict:
    worst = rows.filter(pl.col("machine").is_not_null()).sort(
        (pl.col("human") - pl.col("machine")).abs(), descending=True
    )
    judge = result.judge or {}
    return {
        "method": result.method,
        "judge_model": judge.get("model", ""),
        "judge_prompt_sha256": judge.get("prompt_sha256", ""),
        "pairs": result.pairs,
        "scored": result.scored,
        "unscored": result.unscored,
        "spearman": result.spearman,
        "spearman_p_value": result.spearman_p_value,
        "kappa_binned": result.kappa,
        "largest_disagreements": table(worst.select("id", "human", "machine", "note")),
        "dagster/row_count": rows.height,
    }


def _agreement_check(
    method: str, spearman: float | None, kappa: float | None, unscored: int, config: JudgeCalibrationConfig
) -> dg.AssetCheckResult:
    shortfalls = []
    if spearman is None or spearman < config.min_spearman:
        shortfalls.append(f"Spearman {_show(spearman)} < {config.min_spearman}")
    if kappa is None or kappa < config.min_kappa:
        shortfalls.append(f"binned kappa {_show(kappa)} < {config.min_kappa}")
    remedy = (
        "configure an LLM judge (FLYWHEEL_JUDGE_BASE_URL, FLYWHEEL_JUDGE_MODEL): token F1 counts shared words, "
        "not meaning"
        if method == "token_f1"
        else "try a stronger judge model, or read the largest disagreements"
    )
    if unscored:
        shortfalls.append(f"{unscored} judgements gave no score")
    return dg.AssetCheckResult(
        check_name=AGREEMENT_CHECK,
        passed=not shortfalls,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{method} agrees with the human scores"
            if not shortfalls
            else f"{method}: {'; '.join(shortfalls)}: {remedy}"
        ),
        metadata={
            "method": method,
            "spearman": spearman,
            "kappa_binned": kappa,
            "min_spearman": config.min_spearman,
            "min_kappa": config.min_kappa,
        },
    )


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
