"""Near-duplicate prompts: MinHash signatures and LSH over all prompts at once, clusters, leaks.

A prompt's text is its user messages' contents. It is lowercased and cut into words (runs of
Unicode word characters); its shingles are the word bigrams (a one-word prompt: the word, an
empty one: one empty shingle). Two prompts are near-duplicates when the Jaccard similarity of
their shingle sets reaches the threshold (default 0.8: one word changed in a 20-word prompt
still counts, "status of order A" vs "... order B" does not). Whitespace, case and
punctuation variants have the same shingles (similarity 1).

Candidates come from MinHash and locality-sensitive hashing (Broder 1997; Leskovec, Rajaraman
and Ullman, "Mining of Massive Datasets", ch. 3), computed as vectorised numpy and polars
passes over every prompt at once rather than one sketch per prompt:
- each word is hashed by polars and each bigram is a mix of its two words' hashes (64 bits);
- a prompt's signature is, for each of NUM_PERM multiply-shift hash functions (Dietzfelbinger
  et al. 1997), the least hash of its shingles;
- the signatures are cut into b bands of r values, with b and r chosen as datasketch's
  `MinHashLSH` chooses them, for recall over precision (12 x 5 at 0.8: 99% of the pairs at
  0.8 share a band); prompts sharing a band are candidates;
- a candidate whose signatures agree on far fewer values than the threshold is dropped, and
  every other is confirmed by the exact Jaccard similarity of its shingle sets, so no pair
  is reported from a collision.
Curation's clusters are the connected components of the confirmed pairs. In a band bucket of
more than 64 prompts (templated traffic) each prompt is compared with the bucket's first
only, so comparisons grow with the prompts, not their square. The split's leakage check
compares each held-out prompt with every prompt it shares a bucket with.

datasketch's per-prompt sketch (a Python call per prompt) took 30 times as long as the exact
dedup over a million prompts; see benchmarks/near_duplicates.py for this path's figures.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

# scipy is imported where it is used: importing it takes a quarter of a second, and the
# code location (every run's process) imports this module

DEFAULT_THRESHOLD = 0.8
NUM_PERM = 64
_WORD = r"\w+"
_WORD_SEED = 0x5EED  # polars' word hash seed: any fixed value
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# odd 64-bit multipliers of the multiply-shift hash functions, fixed so signatures are the
# same on every run
_MULTIPLIERS = np.random.default_rng(20261201).integers(0, 1 << 63, NUM_PERM, dtype=np.uint64) * np.uint64(
    2
) + np.uint64(1)
# three standard errors of a 64-value signature's agreement near J = 0.8
_ESTIMATE_MARGIN = 0.15
# band buckets up to this size are compared pair by pair, larger ones against their first
_ALL_PAIRS_BUCKET = 64


def prompt_text(messages: Sequence[dict]) -> str:
    """The user messages' contents (text parts of multi-part contents), one per line."""
    parts = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(content if isinstance(content, str) else "")
    return "\n".join(parts)


def user_key_texts(user_keys: pl.Series) -> pl.Series:
    """`prompt_text` of each dedup key (the JSON list of user contents written at ingest)."""
    return user_keys.str.json_decode(pl.List(pl.String)).list.join("\n").fill_null("")


def user_key_text(user_key: str) -> str:
    return "\n".join(json.loads(user_key))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every bit of the result depends on every bit of x."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class Shingles:
    """Each text's shingles as rows (`text` index ascending, `token` hash); every text has
    at least one row, and a bigram repeated in a text has a row each time."""

    text: np.ndarray
    token: np.ndarray
    texts: int

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """Each text's first row."""
        return np.searchsorted(self.text, np.arange(self.texts))


def shingle_table(texts: pl.Series) -> Shingles:
    words = pl.col("text").str.to_lowercase().str.extract_all(_WORD)
    hashed = (
        texts.cast(pl.String)
        .fill_null("")
        .to_frame("text")
        .lazy()
        # a text without words has one empty word, so its one shingle is the empty one
        .select(pl.when(words.list.len() > 0).then(words).otherwise(pl.lit([""])).alias("word"))
        .with_row_index("text")
        .explode("word")
        .select(pl.col("text").cast(pl.Int64), pl.col("word").hash(_WORD_SEED))
        .collect(engine="streaming")
    )
    text = hashed.get_column("text").to_numpy()
    word = hashed.get_column("word").to_numpy()
    if not (text[1:] >= text[:-1]).all():  # the streaming engine keeps the order; be sure
        order = np.argsort(text, kind="stable")
        text, word = text[order], word[order]
    # each word with the next one of its text; a text's only word alone
    follows = np.zeros(len(text), dtype=bool)
    follows[:-1] = text[1:] == text[:-1]
    first = np.ones(len(text), dtype=bool)
    first[1:] = text[1:] != text[:-1]
    alone = first & ~follows
    following = np.zeros(len(text), dtype=np.uint64)
    following[:-1] = word[1:]
    token = _mix(np.where(follows, word * _GOLDEN ^ following, word))
    keep = follows | alone
    return Shingles(text[keep], token[keep], len(texts))


def signatures(shingles: Shingles) -> np.ndarray:
    """One MinHash signature per text: an (n, NUM_PERM) uint32 array."""
    out = np.empty((shingles.texts, NUM_PERM), dtype=np.uint32)
    for column, multiplier in enumerate(_MULTIPLIERS):
        hashed = ((shingles.token * multiplier) >> np.uint64(32)).astype(np.uint32)
        out[:, column] = np.minimum.reduceat(hashed, shingles.starts)
    return out


@functools.cache
def bands(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) for NUM_PERM values as datasketch's `MinHashLSH` picks them,
    for candidates 0.1 below the threshold and false negatives weighted 0.95 against
    false positives 0.05: the pair of least weighted error area."""
    lowered = max(threshold - 0.1, 0.1)
    grid = np.linspace(0.0, 1.0, 1001)

    def area(b: int, r: int, low: float, high: float) -> float:
        s = grid[(grid >= low) & (grid <= high)]
        return float(np.trapezoid(1 - (1 - s**r) ** b, s)) if len(s) > 1 else 0.0

    def error(b: int, r: int) -> float:
        false_positive = area(b, r, 0.0, lowered)
        false_negative = (1.0 - lowered) - area(b, r, lowered, 1.0)
        return 0.05 * false_positive + 0.95 * false_negative

    return min(((b, r) for b in range(1, NUM_PERM + 1) for r in range(1, NUM_PERM // b + 1)), key=lambda p: error(*p))


def _ragged_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of range(start, start + length) for each pair."""
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum())) - offsets + np.repeat(starts, lengths)


def _bucket_pairs(keys: np.ndarray, probes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of positions holding the same key. Without `probes`: every position with its
    bucket's first, and all pairs of buckets up to _ALL_PAIRS_BUCKET positions. With
    `probes` (a mask): every probe with every position of its bucket."""
    # a stable sort: a bucket's first is its earliest position, on every run
    order = pl.DataFrame({"key": keys}).with_row_index().sort("key", maintain_order=True).get_column("index")
    order = order.to_numpy().astype(np.int64)
    sorted_keys = keys[order]
    new = np.ones(len(keys), dtype=bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.r_[starts, len(keys)])
    bucket_of = np.cumsum(new) - 1  # per sorted position
    if probes is not None:
        probing = np.flatnonzero(probes[order])
        buckets = bucket_of[probing]
        return np.repeat(order[probing], sizes[buckets]), order[_ragged_ranges(starts[buckets], sizes[buckets])]
    # each member of a bucket with its first (the pairs of a bucket of two), then all other
    # pairs of the small buckets
    shared = np.flatnonzero(~new & (sizes[bucket_of] > 1))
    left, right = [order[starts[bucket_of[shared]]]], [order[shared]]
    for size in np.unique(sizes[(sizes > 2) & (sizes <= _ALL_PAIRS_BUCKET)]).tolist():
        members = order[starts[sizes == size][:, None] + np.arange(1, size)]  # the first is paired already
        i, j = np.triu_indices(size - 1, k=1)
        left.append(members[:, i].ravel())
        right.append(members[:, j].ravel())
    return np.concatenate(left), np.concatenate(right)


def _candidates(signature: np.ndarray, threshold: float, between: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of texts (a < b) that share a band and whose signatures agree enough;
    `between`: only pairs of a text before that index with one at or after it."""
    n = len(signature)
    b, r = bands(threshold)
    keys = np.zeros((n, b), dtype=np.uint64)
    for row in range(r):
        keys = _mix(keys * _GOLDEN ^ signature[:, row::r][:, :b].astype(np.uint64))
    keys = _mix(keys ^ np.arange(b, dtype=np.uint64))  # the same values in two bands are different keys
    probes = None if between is None else np.repeat(np.arange(n) < between, b)
    i, j = _bucket_pairs(keys.ravel(), probes)
    a, c = i // b, j // b
    pairs = pl.Series(np.minimum(a, c) * n + np.maximum(a, c)).unique().to_numpy()
    a, c = pairs // n, pairs % n
    wanted = a != c if between is None else (a < between) & (c >= between)
    a, c = a[wanted], c[wanted]
    # column by column: gathering whole signature rows per pair costs four times as much
    agree = np.zeros(len(a), dtype=np.uint8)
    columns = np.asfortranarray(signature)
    for column in columns.T:
        agree += column[a] == column[c]
    plausible = agree >= (threshold - _ESTIMATE_MARGIN) * NUM_PERM
    return a[plausible], c[plausible]


def _confirmed(
    shingles: Shingles, a: np.ndarray, b: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs whose exact Jaccard similarity reaches the threshold, with it."""
    involved = np.zeros(shingles.texts, dtype=bool)
    involved[a] = involved[b] = True
    rows = pl.DataFrame({"text": shingles.text, "token": shingles.token}).filter(pl.Series(involved[shingles.text]))
    sets = rows.unique()
    sizes = sets.group_by("text").len("size")
    pairs = pl.DataFrame({"a": a, "b": b})
    shared = (
        pairs.lazy()
        .join(sets.lazy().rename({"text": "a"}), on="a")
        .join(sets.lazy().rename({"text": "b"}), on=["b", "token"], how="semi")
        .group_by("a", "b")
        .len("shared")
    )
    scored = (
        pairs.lazy()
        .join(shared, on=["a", "b"], how="left")
        .join(sizes.lazy().rename({"text": "a", "size": "size_a"}), on="a")
        .join(sizes.lazy().rename({"text": "b", "size": "size_b"}), on="b")
        .select(
            "a",
            "b",
            similarity=pl.col("shared").fill_null(0)
            / (pl.col("size_a") + pl.col("size_b") - pl.col("shared").fill_null(0)),
        )
        .filter(pl.col("similarity") >= threshold - 1e-12)
        .collect()
    )
    return tuple(scored.get_column(c).to_numpy() for c in ("a", "b", "similarity"))


def similar_pairs(
    texts: Sequence[str] | pl.Series, threshold: float = DEFAULT_THRESHOLD, *, between: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of texts (a < b, indices) found near-duplicate, with their Jaccard similarity;
    `between`: only pairs of a text before that index with one at or after it."""
    shingles = shingle_table(pl.Series(texts, dtype=pl.String))
    a, b = _candidates(signatures(shingles), threshold, between)
    return _confirmed(shingles, a, b, threshold)


def similarity(first: str, second: str) -> float:
    """The exact Jaccard similarity of two texts' shingle sets."""
    shingles = shingle_table(pl.Series([first, second]))
    first_set, second_set = (set(shingles.token[shingles.text == i].tolist()) for i in (0, 1))
    return len(first_set & second_set) / len(first_set | second_set)


def near_duplicate_clusters(texts: Sequence[str] | pl.Series, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """For each text, the index of the first text of its near-duplicate cluster (itself
    when it has none). Pass texts earliest first and the earliest record names its cluster."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    n = len(texts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    a, b, _ = similar_pairs(texts, threshold)
    graph = coo_array((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first_of = np.full(component.max() + 1, n, dtype=np.int64)
    np.minimum.at(first_of, component, np.arange(n))
    return first_of[component]


@dataclass(frozen=True)
class LeakedPair:
    eval_id: str
    other_id: str
    similarity: float

    @property
    def kind(self) -> str:
        return "exact" if self.similarity == 1.0 else "near"


def leaked_pairs(
    held_out: Sequence[tuple[str, str]],
    others: Sequence[tuple[str, str]],
    threshold: float = DEFAULT_THRESHOLD,
) -> list[LeakedPair]:
    """Every (held-out id, other id) whose texts are exact or near duplicates, from
    (id, text) pairs: each held-out text against every text it shares a band with."""
    if not held_out or not others:
        return []
    texts = [text for _, text in (*held_out, *others)]
    a, b, similarities = similar_pairs(texts, threshold, between=len(held_out))
    return [
        LeakedPair(held_out[i][0], others[j - len(held_out)][0], round(s, 4))
        for i, j, s in sorted(zip(a.tolist(), b.tolist(), similarities.tolist()))
    ]
