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
        assert content_hash(a.filter(pl.col("split") == split)) == content_hash(b.filter(pl.col("split") == split))


def test_another_seed_gives_another_split():
    a = split_dataset(dataset(120), SplitConfig(seed=1))
    b = split_dataset(dataset(120), SplitConfig(seed=2))
    assert ids(a, "eval") != ids(b, "eval")
    assert content_hash(a.filter(pl.col("split") == "eval")) != content_hash(b.filter(pl.col("split") == "eval"))


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


# --------------------------------------------------------------------------- stratified by tool


from collections import Counter  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flywheel_assets.core.splitting import (  # noqa: E402
    NO_TOOL_CALL,
    apportion,
    assign_splits,
    leaks,
    tool_counts,
)


def tool_dataset(tools: list[str | None], clusters: list[str] | None = None, prompts=None) -> pl.DataFrame:
    """A tool-calling dataset whose record i first calls tools[i] (None: answers in text)."""
    rows = []
    for i, tool in enumerate(tools):
        answer = (
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": f"c{i}", "type": "function", "function": {"name": tool, "arguments": "{}"}},
                    {"id": f"d{i}", "type": "function", "function": {"name": "second_call", "arguments": "{}"}},
                ],
            }
            if tool
            else {"role": "assistant", "content": "no tool needed"}
        )
        text = prompts[i] if prompts else f"question {i} about {tool}"
        record = {
            "request": {"messages": [{"role": "user", "content": text}], "tools": TOOLS},
            "response": {"choices": [{"message": answer}]},
        }
        rows.append(
            {"record_id": f"rec{i:04d}", "workload_id": "w", "workload_type": "tool_calling", "raw": _json(record)}
        )
    data = pl.DataFrame(rows)
    return data.with_columns(near_duplicate_cluster=pl.Series(clusters)) if clusters else data


def eval_counts(rows: pl.DataFrame) -> Counter:
    return Counter(rows.filter(pl.col("split") == "eval")["first_tool"].to_list())


def test_each_tool_is_in_the_eval_split_in_proportion_and_a_rare_tool_gets_one():
    tools = ["search"] * 500 + ["order"] * 300 + ["refund"] * 150 + ["cancel"] * 48 + ["rare"] * 2
    rows = split_dataset(tool_dataset(tools), SplitConfig(eval_size=50, max_records=None))
    # 50 of 1,000: search 25, order 15, refund 7.5, cancel 2.4, rare 0.1 -> at least 1
    assert eval_counts(rows) == {"search": 25, "order": 15, "refund": 7, "cancel": 2, "rare": 1}
    validation = Counter(rows.filter(pl.col("split") == "validation")["first_tool"].to_list())
    assert validation == {"search": 48, "order": 28, "refund": 14, "cancel": 5}  # 95 of the 950 left


def test_the_class_is_the_first_tool_called_and_no_call_is_a_class_of_its_own():
    rows = split_dataset(tool_dataset(["search", None, None, "order"]), SplitConfig(eval_size=2))
    assert sorted(rows["first_tool"].to_list()) == [NO_TOOL_CALL, NO_TOOL_CALL, "order", "search"]
    assert "second_call" not in rows["first_tool"].to_list()
    chat = split_dataset(dataset(3), SplitConfig())
    assert chat["first_tool"].to_list() == [None, None, None]


def test_tools_with_one_record_share_the_seats_of_one_class():
    tools = ["main"] * 90 + [f"once{i}" for i in range(10)]
    rows = split_dataset(tool_dataset(tools), SplitConfig(eval_size=20))
    counts = eval_counts(rows)
    assert counts["main"] == 18 and sum(n for t, n in counts.items() if t.startswith("once")) == 2


def test_when_eval_is_smaller_than_the_number_of_tools_the_largest_tools_come_first():
    tools = ["a"] * 10 + ["b"] * 8 + ["c"] * 6 + ["d"] * 4
    assert eval_counts(split_dataset(tool_dataset(tools), SplitConfig(eval_size=3))) == {"a": 1, "b": 1, "c": 1}


def test_per_tool_counts_of_each_split():
    tools = ["search"] * 60 + ["order"] * 38 + ["rare"] * 2
    rows = split_dataset(tool_dataset(tools), SplitConfig(eval_size=10))
    counts = {r["first_tool"]: r for r in tool_counts(rows).iter_rows(named=True)}
    assert counts["rare"] == {"first_tool": "rare", "eval": 1, "validation": 0, "train": 1, "total": 2}
    assert counts["search"]["eval"] == 6 and counts["search"]["total"] == 60
    assert list(counts) == ["search", "order", "rare"]


def test_a_near_duplicate_cluster_stays_in_one_split():
    tools = ["search"] * 100
    clusters = [f"rec{(i // 10) * 10:04d}" for i in range(100)]  # ten clusters of ten
    rows = split_dataset(tool_dataset(tools, clusters), SplitConfig(eval_size=20, validation_ratio=0.2))
    by_cluster = dict(zip(tool_dataset(tools, clusters)["record_id"], clusters))
    splits_of = {}
    for record_id, split in rows.select("record_id", "split").iter_rows():
        splits_of.setdefault(by_cluster[record_id], set()).add(split)
    assert all(len(s) == 1 for s in splits_of.values())
    # validation asks for 16 of the 80 left: one cluster of ten fits, a second would not
    assert Counter(rows["split"].to_list()) == {"eval": 20, "validation": 10, "train": 70}


def test_stratified_split_with_clusters_is_byte_identical_for_the_same_seed():
    tools = [["a", "b", "c", None][i % 4] for i in range(200)]
    clusters = [f"rec{i - i % 3:04d}" for i in range(200)]
    a = split_dataset(tool_dataset(tools, clusters), SplitConfig(seed=3))
    b = split_dataset(tool_dataset(tools, clusters), SplitConfig(seed=3))
    assert to_jsonl(a) == to_jsonl(b) and a.equals(b)
    assert content_hash(a) != content_hash(split_dataset(tool_dataset(tools, clusters), SplitConfig(seed=4)))


@settings(max_examples=200)
@given(
    counts=st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(1, 60), min_size=1, max_size=8),
    size=st.integers(0, 120),
)
def test_apportion_gives_each_class_its_share_rounded(counts, size):
    quotas = apportion(counts, size, one_each=False)
    total = sum(counts.values())
    assert sum(quotas.values()) == min(size, total)
    for name, n in counts.items():
        assert quotas[name] <= n
        if size <= total:
            assert abs(quotas[name] - size * n / total) < 1


@settings(max_examples=200)
@given(
    counts=st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(1, 60), min_size=1, max_size=8),
    size=st.integers(0, 120),
)
def test_apportion_gives_every_class_of_two_a_seat_when_seats_allow(counts, size):
    quotas = apportion(counts, size, one_each=True)
    assert sum(quotas.values()) == min(size, sum(counts.values()))
    eligible = [c for c, n in counts.items() if n >= 2]
    if size >= len(eligible):
        assert all(quotas[c] >= 1 for c in eligible)


@settings(max_examples=200)
@given(data=st.data())
def test_assign_splits_keeps_clusters_whole_and_sizes_within_bounds(data):
    n = data.draw(st.integers(1, 120))
    classes = data.draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    clusters = data.draw(st.lists(st.integers(0, n // 2), min_size=n, max_size=n))
    n_eval = data.draw(st.integers(0, n))
    n_validation = data.draw(st.integers(0, n - n_eval))
    labels = assign_splits(classes, [str(c) for c in clusters], n_eval, n_validation)
    for cluster in set(clusters):
        assert len({labels[i] for i in range(n) if clusters[i] == cluster}) == 1
    counts = Counter(labels)
    assert counts["eval"] <= n_eval and counts["validation"] <= n_validation
    if len(set(clusters)) == n:  # no clusters: exact sizes, and the rare-tool guarantee
        assert (counts["eval"], counts["validation"]) == (n_eval, n_validation)
        eligible = [c for c, k in Counter(classes).items() if k >= 2]
        if n_eval >= len(eligible):
            in_eval = {classes[i] for i in range(n) if labels[i] == "eval"}
            assert set(eligible) <= in_eval


# --------------------------------------------------------------------------- leakage


def test_leaks_finds_a_planted_near_copy_of_an_eval_prompt_in_train():
    prompts = [f"please look up the opening hours of store number {i} in the city of town{i} today" for i in range(60)]
    rows = split_dataset(tool_dataset(["search"] * 60, prompts=prompts), SplitConfig(eval_size=10))
    assert leaks(rows, 0.8) == []
    victim = rows.filter(pl.col("split") == "eval").row(0, named=True)
    text = json.loads(victim["messages"])[0]["content"]
    planted = victim | {
        "record_id": "planted",
        "split": "train",
        "messages": _json([{"role": "user", "content": text.replace("today", "now")}]),
    }
    leaking = pl.concat([rows, pl.DataFrame([planted], schema=rows.schema)])
    (pair,) = leaks(leaking, 0.8)
    assert (pair.eval_id, pair.other_id, pair.kind) == (victim["record_id"], "planted", "near")
