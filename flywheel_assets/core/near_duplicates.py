"""Near-duplicate prompts: MinHash signatures and LSH (datasketch), clusters, leakage pairs.

A prompt's text is its user messages' contents. It is lowercased and cut into words; its
shingles are the word bigrams (a one-word prompt: the word). Two prompts are near-duplicates
when the Jaccard similarity of their shingle sets reaches the threshold (default 0.8: one
word changed in a 20-word prompt still counts, "status of order A" vs "... order B" does
not). Whitespace, case and punctuation variants have the same shingles (similarity 1).

Curation clusters a whole workload (`near_duplicate_clusters`): the records' signatures are
banded as datasketch's `MinHashLSH` bands them (its bands x rows, tuned for recall), records
sharing a band value are candidates, a candidate pair is confirmed by the exact Jaccard
similarity of its shingle sets, and clusters are the connected components of the confirmed
pairs. The split's leakage check (`leaked_pairs`) is small (hundreds of records), so it
queries a `MinHashLSH` index of the other side and confirms every candidate the same way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import xxhash

if TYPE_CHECKING:
    from datasketch import MinHash, MinHashLSH

# datasketch and scipy are imported where they are used: importing them takes about half a
# second, and the code location (every run's process) imports this module

DEFAULT_THRESHOLD = 0.8
# 64 permutations: the estimate's standard error at J = 0.8 is 0.05, half the cost of 128
NUM_PERM = 64
_WORD = re.compile(r"\w+")
# three standard errors of a 64-value signature's estimate near J = 0.8
_ESTIMATE_MARGIN = 0.15


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


def user_key_prompt(column: str = "user_key") -> pl.Expr:
    """`prompt_text` of each dedup key in `column` (the JSON list of user contents written
    at ingest), decoded by polars in one pass."""
    return pl.col(column).str.json_decode(pl.List(pl.String)).list.join("\n")


def shingles(text: str) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < 2:
        return {w.encode() for w in words} or {b""}
    return {f"{a} {b}".encode() for a, b in zip(words, words[1:])}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def _minhash() -> MinHash:
    # xxh32: stable across versions and machines (the split's bytes depend on it), 4x sha1's speed
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, hashfunc=xxhash.xxh32_intdigest)


def _minhashes(shingle_sets: Iterable[set[bytes]]) -> Iterable[MinHash]:
    from datasketch import MinHash

    return MinHash.generator(shingle_sets, num_perm=NUM_PERM, hashfunc=xxhash.xxh32_intdigest)


def signatures(texts: Sequence[str]) -> np.ndarray:
    """One MinHash signature per text: an (n, NUM_PERM) uint32 array. One sketch is cleared
    and refilled per text: building a sketch per text costs as much as filling it."""
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    sketch = _minhash()
    for i, text in enumerate(texts):
        sketch.clear()
        sketch.update_batch(shingles(text))
        out[i] = sketch.hashvalues
    return out


def _lsh(threshold: float) -> MinHashLSH:
    """An index whose candidates are confirmed afterwards: banded for 0.1 below the
    threshold and for recall over precision, because a missed pair can leak into training
    while a false candidate only costs a comparison (recall 0.99 at J = 0.8 with 64
    permutations: 12 bands x 5 rows)."""
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=max(threshold - 0.1, 0.1), num_perm=NUM_PERM, weights=(0.05, 0.95))


# LSH buckets up to this size are compared pair by pair, larger ones (templated traffic)
# against their first record only, so the comparisons grow with the records, not their square
_ALL_PAIRS_BUCKET = 64
_CHUNK = 1 << 18  # pairs compared at once: 64 MiB of signature values


@functools.cache
def _pairs_of(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(size, k=1)


def _bucket_pairs(bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i < j) of records sharing a band value: every record with its
    bucket's first record, and all pairs of the small buckets."""
    order = np.argsort(bucket, kind="stable")
    sorted_bucket = bucket[order]
    starts = np.flatnonzero(np.r_[True, sorted_bucket[1:] != sorted_bucket[:-1]])
    sizes = np.diff(np.r_[starts, len(bucket)])
    left, right = [np.repeat(order[starts], sizes)], [order]
    small = (sizes > 2) & (sizes <= _ALL_PAIRS_BUCKET)
    for start, size in zip(starts[small].tolist(), sizes[small].tolist()):
        members = order[start : start + size]
        i, j = _pairs_of(size)
        left.append(members[i])
        right.append(members[j])
    a, b = np.concatenate(left), np.concatenate(right)
    keep = a != b
    return np.minimum(a, b)[keep], np.maximum(a, b)[keep]


def near_duplicate_clusters(texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """For each text, the index of the first text of its near-duplicate cluster (itself
    when it has none). Pass texts earliest first and the earliest record names its cluster."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    n = len(texts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sig = signatures(texts)
    lsh = _lsh(threshold)
    left, right = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for band in range(lsh.b):
        keys = (
            np.ascontiguousarray(sig[:, band * lsh.r : (band + 1) * lsh.r])
            .view(np.dtype((np.void, lsh.r * sig.itemsize)))
            .ravel()
        )
        a, b = _bucket_pairs(np.unique(keys, return_inverse=True)[1].ravel())
        # signatures agreeing on far fewer values than the threshold are not worth an exact
        # look; compared in chunks, so a band of templated traffic never holds all its pairs
        for start in range(0, len(a), _CHUNK):
            ca, cb = a[start : start + _CHUNK], b[start : start + _CHUNK]
            plausible = (sig[ca] == sig[cb]).mean(axis=1) >= threshold - _ESTIMATE_MARGIN
            left.append(ca[plausible])
            right.append(cb[plausible])
    # each pair once (a band's pairs recur in others), as one integer: a 1-d unique is fast
    pairs = np.unique(np.concatenate(left) * n + np.concatenate(right))
    pairs = np.stack([pairs // n, pairs % n], axis=1)
    shingle_sets: dict[int, set[bytes]] = {}

    def shingles_of(i: int) -> set[bytes]:
        if i not in shingle_sets:
            shingle_sets[i] = shingles(texts[i])
        return shingle_sets[i]

    similar = np.array([jaccard(shingles_of(a), shingles_of(b)) >= threshold for a, b in pairs.tolist()], dtype=bool)
    src, dst = pairs[similar, 0], pairs[similar, 1]
    graph = coo_array((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
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
    (id, text) pairs. Candidates come from LSH; each is confirmed by its exact Jaccard
    similarity, so none is reported from a signature collision."""
    if not held_out or not others:
        return []
    other_shingles = [shingles(text) for _, text in others]
    index = _lsh(threshold)
    with index.insertion_session() as session:
        for position, minhash in enumerate(_minhashes(other_shingles)):
            session.insert(position, minhash, check_duplication=False)
    found = []
    held_shingles = [shingles(text) for _, text in held_out]
    for (eval_id, _), mine, minhash in zip(held_out, held_shingles, _minhashes(held_shingles)):
        for position in sorted(index.query(minhash)):
            similarity = jaccard(mine, other_shingles[position])
            if similarity >= threshold:
                found.append(LeakedPair(eval_id, others[position][0], round(similarity, 4)))
    return found
