"""Safe partition keys for user-supplied workload ids (no Dagster import: curation uses it).

Workload ids come from traffic, so they can hold anything: `../x`, `a|b` (Dagster's
multi-partition separator), spaces, unicode, 300 characters. A key must be usable both as
a Dagster partition key and as one path component, and two ids must never share a key.
An id that is already safe is its own key (readable in the UI): lowercase letters, digits,
`-`, `_` and dots (`support.router`; not leading or trailing, no `..`). Any other id becomes
a readable slug plus a short hash of the original, which is kept in metadata.

Before dots were allowed, an id with a dot became a slug (`support-router-694f0b2819`). The
landing keeps the key an id already has (`core.ingest`'s workload key registry), so data
landed before keeps its partitions; only workloads first seen since get the dotted key.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

# candidate names and namespaces: these reach NeMo and Kubernetes names, where dots are not safe
SAFE_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SAFE_WORKLOAD_KEY = re.compile(r"^(?!.*\.\.)[a-z0-9][a-z0-9._-]{0,63}(?<!\.)$")
_SLUG_CHARS = re.compile(r"[^a-z0-9_-]+")
_SLUG_LEN = 40
_DIGEST_LEN = 10
# what a hashed key ends with; an id ending like this is hashed too, so it cannot take
# the key of another (hashed) id
_HASHED_SUFFIX = re.compile(rf"-[0-9a-f]{{{_DIGEST_LEN}}}$")


@functools.lru_cache(maxsize=65536)  # called once per record while landing
def workload_key(workload_id: str) -> str:
    """The partition key (and file name) for a workload id; stable and collision-resistant."""
    # fullmatch: `$` also matches before a trailing newline
    if SAFE_WORKLOAD_KEY.fullmatch(workload_id) and not _HASHED_SUFFIX.search(workload_id):
        return workload_id
    ascii_id = unicodedata.normalize("NFKD", workload_id).encode("ascii", "ignore").decode()
    slug = _SLUG_CHARS.sub("-", ascii_id.lower()).strip("-_")[:_SLUG_LEN] or "workload"
    # surrogatepass: an id decoded from JSON can hold a lone surrogate (`"\\ud800"`)
    raw = workload_id.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:_DIGEST_LEN]
    return f"{slug}-{digest}"
