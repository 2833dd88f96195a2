"""ICL selection cost per prompt over a large pool: `lexical` (TF-IDF) against `uniform`.

Builds a pool of POOL tool-calling examples and PROMPTS eval prompts from the sample
traces (tool_router workload), then times `plan_icl_prompts` for each strategy in the same
run, with the endpoint token estimate (`evaluate.token_counter`'s chars/4). Printed per
strategy: the one-off cost of vectorising the pool, the cost per prompt, and the ratio
lexical / uniform; then, as a measure of the choice itself, how often the first example
calls the tool the prompt's production answer called. Each strategy runs REPEATS times; the fastest run counts (the machine
is shared).

With ``--demo-home DIR`` (the FLYWHEEL_HOME of a finished `flywheel demo`) it measures what
the choice is worth instead: it materializes `icl_eval` of every workload x candidate with
each strategy in that instance (lexical last: the default, as the demo left it) and prints
the primary scores.

    python benchmarks/icl_selection.py [--pool 10000 --prompts 200 --repeats 3]
    FLYWHEEL_START_DATE=2026-11-14 python benchmarks/icl_selection.py --demo-home .flywheel_data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flywheel_assets.core.chat import ChatExample, ChatPrompt  # noqa: E402
from flywheel_assets.core.icl import IclOptions, plan_icl_prompts, prompt_text, rank_pool  # noqa: E402
from flywheel_assets.sample_data import generate_records  # noqa: E402
from resources.openai_compatible import WireMessage, to_assistant_message  # noqa: E402


def sample_examples(count: int, seed: int) -> list[ChatExample]:
    """`count` well-formed tool-calling examples from the sample traces, one per prompt text
    (as curation deduplicates: an exact copy of an eval prompt in the pool would make the
    similarity strategies look better than they are)."""
    examples: dict[str, ChatExample] = {}
    for number, line in enumerate(generate_records(count * 3, seed=seed, workloads="tool_router")):
        try:
            record = json.loads(line)
            message = to_assistant_message(WireMessage.model_validate(record["response"]["choices"][0]["message"]))
            example = ChatExample(
                record_id=f"r{number:06d}",
                workload_id="tool_router",
                workload_type="tool_calling",
                messages=record["request"]["messages"],
                tools=record["request"].get("tools"),
                expected=message,
            )
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # the sample traces hold a few malformed records on purpose
        examples.setdefault(prompt_text(example), example)
        if len(examples) == count:
            return list(examples.values())
    raise RuntimeError(f"only {len(examples)} usable records")


def first_tool(example: ChatExample) -> str | None:
    calls = example.expected.tool_calls or []
    return calls[0].function.name if calls else None


def estimate_tokens(prompt: ChatPrompt) -> int:
    return len(prompt.model_dump_json()) // 4


def timed(strategy: str, prompts, pool, repeats: int) -> tuple[float, float]:
    """(seconds to vectorise the pool and prompts, seconds for the whole plan), fastest run."""
    options = IclOptions(strategy=strategy)
    index_s, plan_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        rank_pool(prompts, pool, options)
        index_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        plan_icl_prompts(prompts, pool, options, count_tokens=estimate_tokens)
        plan_s.append(time.perf_counter() - started)
    return min(index_s), min(plan_s)


def compare_on_demo(home: Path) -> None:
    """icl_eval's primary score with each strategy, for every workload x candidate of a demo."""
    import os

    os.environ["FLYWHEEL_HOME"] = str(home.resolve())
    os.environ.setdefault("DAGSTER_HOME", str(home.resolve() / "dagster_home"))
    import dagster as dg

    from flywheel_assets.definitions import ASSETS, defs
    from partitions.slices import candidate_partitions, candidate_workload_key, workload_partitions

    with dg.DagsterInstance.get() as instance:
        workloads = instance.get_dynamic_partitions(workload_partitions.name)
        print("| workload | candidate | uniform | lexical |\n|---|---|---|---|")
        for workload in sorted(workloads):
            for candidate in candidate_partitions.get_partition_keys():
                scores = {}
                for strategy in ("uniform", "lexical"):
                    result = dg.materialize(
                        ASSETS,
                        selection=["icl_eval"],
                        partition_key=candidate_workload_key(candidate, workload),
                        instance=instance,
                        resources=defs.resources,
                        tags={"flywheel/trigger": "icl_selection_benchmark"},
                        run_config={
                            "ops": {"icl_eval": {"config": {"strategy": strategy}}},
                            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                        },
                    )
                    (event,) = result.get_asset_materialization_events()
                    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
                    scores[strategy] = metadata.get("function_name_accuracy", metadata.get("similarity"))
                print(f"| `{workload}` | {candidate} | {scores['uniform']:.2f} | {scores['lexical']:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-home", type=Path, help="compare the strategies' scores on a finished demo instead")
    args = parser.parse_args(argv)
    if args.demo_home:
        compare_on_demo(args.demo_home)
        return
    examples = sample_examples(args.pool + args.prompts, args.seed)
    pool, prompts = examples[: args.pool], examples[args.pool :]
    print(f"pool {len(pool)} examples, {len(prompts)} prompts, best of {args.repeats}")
    results = {strategy: timed(strategy, prompts, pool, args.repeats) for strategy in ("uniform", "lexical")}
    for strategy, (index_s, plan_s) in results.items():
        per_prompt_ms = plan_s / len(prompts) * 1000
        print(
            f"{strategy:8s} vectorise {index_s * 1000:7.1f} ms   whole plan {plan_s:5.2f} s   per prompt "
            f"{per_prompt_ms:6.2f} ms ({per_prompt_ms - index_s / len(prompts) * 1000:5.2f} ms without vectorising)"
        )
    ratio = results["lexical"][1] / results["uniform"][1]
    print(f"ratio lexical / uniform (per prompt, vectorising included): {ratio:.2f}")
    # what the choice is worth without a model: how often the nearest example calls the tool
    # the prompt's production answer called (the selection itself never sees that answer)
    for strategy in ("uniform", "lexical"):
        plan = plan_icl_prompts(
            prompts, pool, IclOptions(strategy=strategy, cover_tools=False), count_tokens=estimate_tokens
        )
        same = sum(
            bool(choice.examples) and first_tool(choice.examples[0]) == first_tool(prompt)
            for prompt, choice in zip(prompts, plan.choices)
        )
        print(f"{strategy:8s} first example calls the answer's tool: {same / len(prompts):.0%}")


if __name__ == "__main__":
    main()
