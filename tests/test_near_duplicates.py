"""near_duplicates: shingles, clusters of near-copies, leaked pairs confirmed exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import polars as pl

from flywheel_assets.core.near_duplicates import (
    jaccard,
    leaked_pairs,
    near_duplicate_clusters,
    prompt_text,
    shingles,
    user_key_prompt,
)

WORDS = "order refund parcel address store hours coat size colour return label invoice".split()


def prompt(rng: random.Random, words: int = 20) -> str:
    return " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 999)}" for _ in range(words))


def test_case_whitespace_and_punctuation_variants_have_the_same_shingles():
    assert shingles("Where is my ORDER 12?") == shingles("where  is my order, 12")
    assert jaccard(shingles("a b c d"), shingles("a b c e")) == 2 / 4
    assert shingles("hi") == {b"hi"} and shingles("") == {b""}


def test_prompt_text_is_the_user_contents_as_the_dedup_key_has_them():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}]},
    ]
    assert prompt_text(messages) == "first\nsecond"
    keys = pl.DataFrame({"user_key": [json.dumps(["first", "second"])]})
    assert keys.select(user_key_prompt()).item() == prompt_text(messages)


def test_clusters_join_near_copies_under_their_earliest_record():
    rng = random.Random(0)
    originals = [prompt(rng) for _ in range(200)]
    texts = list(originals)
    # a near-copy of every tenth prompt (one word changed of 20: Jaccard 17/21 = 0.81),
    # a case and punctuation variant of every 25th
    for i in range(0, 200, 10):
        words = originals[i].split()
        words[10] = "changed"
        texts.append(" ".join(words))
    for i in range(0, 200, 25):
        texts.append(originals[i].upper() + "!")
    clusters = near_duplicate_clusters(texts, threshold=0.8)
    for k, i in enumerate(range(0, 200, 10)):
        assert clusters[200 + k] == i
    for k, i in enumerate(range(0, 200, 25)):
        assert clusters[220 + k] == i
    assert (clusters[:200] == np.arange(200)).all()  # unrelated prompts stay alone


def test_a_stricter_threshold_leaves_a_looser_copy_alone():
    rng = random.Random(1)
    original = prompt(rng)
    words = original.split()
    words[3], words[12] = "x", "y"  # two words of 20: Jaccard 15/23 = 0.65
    texts = [original, " ".join(words)]
    assert near_duplicate_clusters(texts, threshold=0.6).tolist() == [0, 0]
    assert near_duplicate_clusters(texts, threshold=0.8).tolist() == [0, 1]
    assert near_duplicate_clusters([], threshold=0.8).tolist() == []


def test_templated_prompts_with_different_values_are_not_near_duplicates():
    texts = [f"What is the status of order ORD-{n:06d}?" for n in range(300)]
    assert (near_duplicate_clusters(texts) == np.arange(300)).all()


def test_leaked_pairs_are_confirmed_by_their_exact_similarity():
    rng = random.Random(2)
    train = [(f"t{i}", prompt(rng)) for i in range(300)]
    words = train[7][1].split()
    words[0] = "planted"
    held_out = [("e0", " ".join(words)), ("e1", train[42][1].lower()), ("e2", prompt(rng))]
    found = leaked_pairs(held_out, train, threshold=0.8)
    assert [(p.eval_id, p.other_id, p.kind) for p in found] == [("e0", "t7", "near"), ("e1", "t42", "exact")]
    assert found[0].similarity == round(18 / 20, 4)
    assert leaked_pairs(held_out, [], 0.8) == [] and leaked_pairs([], train, 0.8) == []


def test_dedup_keys_decode_to_their_user_contents_one_per_line():
    keys = [json.dumps(["first", "line\nbreak"]), json.dumps(['é "quoted" \\ back']), json.dumps([""])]
    decoded = pl.DataFrame({"user_key": keys}).select(user_key_prompt()).to_series().to_list()
    assert decoded == ["\n".join(json.loads(k)) for k in keys]


def test_a_held_out_prompt_is_compared_with_every_prompt_of_a_large_bucket():
    # 150 prompts that differ in their last word only (Jaccard about 0.95 with each other)
    # share most bands: buckets far larger than the 64 that curation compares pair by pair
    rng = random.Random(4)
    common = prompt(rng, words=40)
    train = [(f"t{i}", f"{common} w{i}") for i in range(150)]
    # e0 holds only the shared words, so it is in every bucket the others share, first
    held_out = [("e0", common), ("e1", train[123][1] + " thanks")]
    found = leaked_pairs(held_out, train)
    for eval_id in ("e0", "e1"):  # e1 not only with its buckets' first prompt (e0)
        assert sorted(p.other_id for p in found if p.eval_id == eval_id) == sorted(i for i, _ in train)
    assert {(p.eval_id, p.other_id): p.similarity for p in found}["e1", "t7"] == round(39 / 42, 4)


def test_prompts_without_words_are_duplicates_of_each_other_only():
    assert near_duplicate_clusters(["", "?!", "hello there", "  "]).tolist() == [0, 0, 2, 0]
