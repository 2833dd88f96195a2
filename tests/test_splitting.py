"""split_dataset / to_jsonl / content_hash: seeded, disjoint, reproducible splits."""

from __future__ import annotations

import json

import polars as pl
import pytest

from flywheel_assets.core.splitting import (
    SplitConfig,
    content_hash,
    expected_message,
    split_dataset,
    to_examples,
    to_jsonl,
)

TOOLS = [{"type": "function", "function": {"name": "find_store", "parameters": {"type": "object"}}}]


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def dataset(n: int, *, tool_calling: bool = False, arguments=None) -> pl.DataFrame:
    """A curated workload dataset (the columns split_dataset reads), in a stable order."""
    rows = []
    for i in range(n):
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"question {i}"},
        ]
        if tool_calling:
            args = arguments if arguments is not None else _json({"city": f"City {i}"})
            answer = {
                "role": "assistant",
                "tool_calls": [
                    {"id": f"call_{i}", "type": "function", "function": {"name": "find_store", "arguments": args}}
                ],
            }
        else:
            answer = {"role": "assistant", "content": f"answer {i}"}
        request = {"model": "prod", "messages": messages, **({"tools": TOOLS} if tool_calling else {})}
        record = {
            "timestamp": 1_735_700_000 + i,
            "workload_id": "w",
            "client_id": "web",
            "request": request,
            "response": {"choices": [{"message": answer}]},
        }
        rows.append(
            {
                "record_id": f"rec{i:04d}",
                "timestamp": 1_735_700_000 + i,
                "workload_id": "w",
                "workload_type": "tool_calling" if tool_calling else "chat",
                "raw": _json(record),
            }
        )
    return pl.DataFrame(rows, schema_overrides={"raw": pl.String})


def ids(rows: pl.DataFrame, split: str) -> set[str]:
    return set(rows.filter(pl.col("split") == split)["record_id"])


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "n,expected",
    [
        (100, {"eval": 20, "validation": 8, "train": 72}),
        (220, {"eval": 20, "validation": 20, "train": 180}),
        (21, {"eval": 20, "validation": 0, "train": 1}),
        (20, {"eval": 20, "validation": 0, "train": 0}),
        (5, {"eval": 5, "validation": 0, "train": 0}),
    ],
)
def test_split_sizes(n, expected):
    rows = split_dataset(dataset(n), SplitConfig())
    counts = dict(rows.group_by("split").len().iter_rows())
    assert {k: counts.get(k, 0) for k in expected} == expected
    assert rows.height == n


def test_validation_is_about_ten_percent_of_what_is_left_after_eval():
    for n in (50, 77, 123, 500):
        rows = split_dataset(dataset(n), SplitConfig())
        rest = n - 20
        assert abs(len(ids(rows, "validation")) - 0.1 * rest) <= 0.5 + 1e-9


def test_max_records_caps_the_sample():
    rows = split_dataset(dataset(300), SplitConfig(max_records=100))
    assert rows.height == 100
    assert (len(ids(rows, "eval")), len(ids(rows, "validation")), len(ids(rows, "train"))) == (20, 8, 72)
    uncapped = split_dataset(dataset(300), SplitConfig(max_records=None))
    assert uncapped.height == 300


def test_custom_eval_size_and_ratio():
    rows = split_dataset(dataset(60), SplitConfig(eval_size=10, validation_ratio=0.2))
    assert (len(ids(rows, "eval")), len(ids(rows, "validation")), len(ids(rows, "train"))) == (10, 10, 40)


def test_splits_are_disjoint_and_cover_the_sample():
    data = dataset(150)
    rows = split_dataset(data, SplitConfig())
    ev, va, tr = ids(rows, "eval"), ids(rows, "validation"), ids(rows, "train")
    assert not (ev & va) and not (ev & tr) and not (va & tr)
    assert ev | va | tr == set(data["record_id"])
    assert rows["record_id"].n_unique() == rows.height


def test_empty_dataset_gives_empty_split_and_empty_file():
    rows = split_dataset(dataset(1).head(0), SplitConfig())
    assert rows.height == 0
    assert to_jsonl(rows) == b""


# --------------------------------------------------------------------------- determinism


def test_same_input_and_seed_give_byte_identical_files():
    a = split_dataset(dataset(120, tool_calling=True), SplitConfig(seed=7))
    b = split_dataset(dataset(120, tool_calling=True), SplitConfig(seed=7))
    for split in ("eval", "validation", "train"):
        fa = to_jsonl(a.filter(pl.col("split") == split))
        fb = to_jsonl(b.filter(pl.col("split") == split))
        assert fa == fb and fa
        assert content_hash(a.filter(pl.col("split") == split)) == content_hash(
            b.filter(pl.col("split") == split)
        )


def test_another_seed_gives_another_split():
    a = split_dataset(dataset(120), SplitConfig(seed=1))
    b = split_dataset(dataset(120), SplitConfig(seed=2))
    assert ids(a, "eval") != ids(b, "eval")
    assert content_hash(a.filter(pl.col("split") == "eval")) != content_hash(
        b.filter(pl.col("split") == "eval")
    )


def test_content_hash_changes_when_the_data_changes():
    rows = split_dataset(dataset(40), SplitConfig())
    train = rows.filter(pl.col("split") == "train")
    edited = train.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.col("messages").str.replace("question", "QUESTION"))
        .otherwise(pl.col("messages"))
        .alias("messages")
    )
    assert content_hash(train) != content_hash(edited)
    assert len(content_hash(train)) == 16


# --------------------------------------------------------------------------- expected


def test_tool_call_arguments_are_parsed_into_objects():
    rows = split_dataset(dataset(3, tool_calling=True), SplitConfig())
    for row in rows.iter_rows(named=True):
        expected = json.loads(row["expected"])
        (call,) = expected["tool_calls"]
        assert call["function"]["name"] == "find_store"
        assert isinstance(call["function"]["arguments"], dict)
        assert call["function"]["arguments"]["city"].startswith("City ")
        assert call["type"] == "function"


@pytest.mark.parametrize(
    "arguments,parsed",
    [
        ('{"city": "Denver", "n": 2}', {"city": "Denver", "n": 2}),
        ({"city": "Denver"}, {"city": "Denver"}),
        ("", {}),
        (None, {}),
        ('{"city": "Den', {"__unparsed__": '{"city": "Den'}),
        ("not json at all", {"__unparsed__": "not json at all"}),
        ("[1, 2]", {"__unparsed__": "[1, 2]"}),
        ('"Denver"', {"__unparsed__": '"Denver"'}),
    ],
)
def test_expected_message_arguments(arguments, parsed):
    answer = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "function": {"name": "find_store", "arguments": arguments}}],
    }
    message = expected_message(answer)
    assert message.tool_calls[0].function.arguments == parsed
    assert message.tool_calls[0].function.name == "find_store"


def test_unparseable_arguments_survive_the_split_and_the_file():
    rows = split_dataset(dataset(2, tool_calling=True, arguments="{broken"), SplitConfig())
    for line in to_jsonl(rows).decode().splitlines():
        call = json.loads(line)["messages"][-1]["tool_calls"][0]
        assert call["function"]["arguments"] == {"__unparsed__": "{broken"}


def test_chat_answers_are_kept_as_content():
    rows = split_dataset(dataset(3), SplitConfig())
    for row in rows.iter_rows(named=True):
        expected = json.loads(row["expected"])
        assert expected == {"role": "assistant", "content": f"answer {int(row['record_id'][3:])}"}


# --------------------------------------------------------------------------- to_jsonl


def test_jsonl_lines_end_with_the_assistant_turn():
    data = dataset(30, tool_calling=True)
    rows = split_dataset(data, SplitConfig())
    text = to_jsonl(rows).decode()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == rows.height
    source = {r["record_id"]: json.loads(r["raw"]) for r in data.iter_rows(named=True)}
    for line, row in zip(lines, rows.iter_rows(named=True)):
        record = json.loads(line)
        assert record["record_id"] == row["record_id"]
        trace = source[row["record_id"]]
        assert record["messages"][:-1] == trace["request"]["messages"]
        last = record["messages"][-1]
        assert last["role"] == "assistant"
        answer = trace["response"]["choices"][0]["message"]
        assert last["tool_calls"][0]["function"]["arguments"] == json.loads(
            answer["tool_calls"][0]["function"]["arguments"]
        )
        assert record["tools"] == TOOLS


def test_chat_jsonl_has_no_tools_key():
    rows = split_dataset(dataset(5), SplitConfig())
    for line in to_jsonl(rows).decode().splitlines():
        record = json.loads(line)
        assert "tools" not in record
        assert record["messages"][-1] == {"role": "assistant", "content": record["messages"][-1]["content"]}
        assert record["messages"][-2]["role"] == "user"


def test_examples_round_trip():
    rows = split_dataset(dataset(4, tool_calling=True), SplitConfig())
    examples = to_examples(rows)
    assert [e.record_id for e in examples] == rows["record_id"].to_list()
    assert all(e.workload_type == "tool_calling" and e.tools == TOOLS for e in examples)
