"""Seeded generator of realistic production LLM traffic (trace records, one JSON per line).

Modules: ``vocabulary`` (word lists and sentence templates), ``tools`` (tool_router's tool
definitions), ``workloads`` (the three workloads), ``generator`` (records, duplicates, PII,
malformed records and the simulated post-promotion traffic), ``writers`` (one file per
day) and ``cli`` (the ``flywheel-sample-traces`` console script, also
``python -m flywheel_assets.sample_data``).

Every record follows the trace schema of DESIGN.md: ``timestamp`` (int epoch seconds, UTC),
``workload_id``, ``client_id``, ``request`` (an exact OpenAI chat-completions request) and
``response`` (an exact chat-completions response), plus the optional ``latency_ms``,
``feedback`` (on ~20% of records, mostly positive) and ``workload_description`` (sent by
some clients only).

Workloads
---------
``tool_router``
    An agent node of an online shop's customer support: routes a one-sentence request to
    one of 8 tools (``get_order_status``, ``cancel_order``, ``track_shipment``,
    ``update_address``, ``issue_refund``, ``search_products``, ``find_store``,
    ``apply_coupon``). Every response carries exactly one tool call. The tool is signalled
    by distinctive keywords of the message (status / cancel / track / address / refund /
    search / store / coupon) and every argument is copied verbatim from the message (order
    ids, tracking numbers, amounts, cities, zips, reasons, queries), so a small model
    fine-tuned on a few hundred records can learn both.
``support_chat``
    A help-centre QA node: a question about a product or policy, answered in 1-3 sentences
    (template answers keyed on the question topic); ~15% are two-turn conversations.
``query_rewrite``
    Rewrites a noisy user search query (typos, abbreviations, odd casing) into a cleaned,
    expanded one. Chat, no tools.

Noise (all drawn from ``random.Random(seed)``: same seed and arguments, same bytes)
------------------------------------------------------------------------------
* Timestamps are uniform inside each UTC day of the ``days`` days ending at ``end_date``
  (inclusive); a record always lies in its own day's file, and the records of a file are
  sorted by timestamp except double-logged duplicates (below). Per-day volume varies by
  +-15%; the total is exactly ``n`` lines, malformed ones included.
* ``exact_duplicate`` (~5%): the user messages of a recent record re-sent. 30% are the
  very same record of the same day logged twice (byte-identical line, same timestamp,
  later in the file); the others are a re-sent request (identical ``request``, identical assistant
  message) with a new timestamp, response id, latency and possibly another client.
  **Removed** by a dedup keyed on the exact tuple of user-message contents.
* ``near_duplicate`` (~3.5%): *identical user contents* but something else differs: a
  second version of the system prompt, the tools listed in another order, another
  production model (an A/B test), or other response wording (an extra sentence, compact
  tool-call arguments, a lower-cased rewrite). **Removed** by the user-contents dedup key
  (the first occurrence wins).
* ``whitespace_variant`` (~1.5%): the user content of a recent record with a trailing
  space / newline or a doubled inner space. **Not removed** by the exact user-contents key.
* PII (~5% of records): an email, a phone number (``+1 415-555-0134`` or
  ``(415) 555-0134``), a card number (``4111 1111 1111 1111``), an SSN-like
  ``123-45-6789`` or an IPv4 address, as a sentence after (support_chat: before) the user
  message; tool-call arguments never contain it. The labelled API reports which kind.
* Malformed records (``malformed_rate``, default 3%), the kind drawn uniformly among:

  ``invalid_json``
      the serialized line cut at a random point (a writer that crashed mid-line); never
      produced for parquet output.
  ``missing_workload_id``
      the ``workload_id`` key deleted.
  ``non_numeric_timestamp``
      ``timestamp`` is an ISO-8601 string such as ``"2026-11-14T10:22:01Z"`` (a null in
      parquet output, whose ``timestamp`` column is Int64).
  ``non_chat_request``
      a legacy completions call: ``request`` has a ``prompt`` and no ``messages``;
      ``response`` is a ``text_completion`` with ``choices[0].text``.
  ``empty_choices``
      ``response.choices == []``.
  ``empty_message``
      ``choices[0].message`` is ``{"role": "assistant", "content": null}`` (with
      ``tool_calls`` absent or ``[]``), ``finish_reason`` ``"length"``.
  ``oversized``
      a pasted log making the user content larger than 1 MiB. Rare by construction: at most
      one per day file, with probability ``min(1, day_records * malformed_rate / 7)``.

Outputs
-------
``generate_records`` streams JSONL lines (constant memory, fine for n = 1,000,000),
``generate_labeled_records`` streams the same lines with their labels (malformed kind,
duplicate variant, PII kind) and ``write_sample_traces`` writes one file per day,
``traces-YYYY-MM-DD.{jsonl,jsonl.gz,parquet}``, atomically (``flywheel_assets.core.atomic``).
Parquet files hold ``request``, ``response`` and ``feedback`` as JSON-string columns.

Console script: ``flywheel-sample-traces --out DIR [--records N] [--days 7] [--seed 0]
[--malformed-rate 0.03] [--end-date YYYY-MM-DD] [--workloads a,b,c]
[--format jsonl|jsonl.gz|parquet]``, and for simulated post-promotion traffic
``[--served-model NAME] [--canary-model NAME --canary-share 0.5 [--canary-latency-factor 2]]
[--drift]`` (see ``Serving``; every such record carries a ``simulation`` label).
"""

from flywheel_assets.sample_data.cli import main
from flywheel_assets.sample_data.generator import (
    DEFAULT_END_DATE,
    DUPLICATE_VARIANTS,
    MALFORMED_KINDS,
    OVERSIZED_BYTES,
    PII_KINDS,
    LabeledLine,
    Serving,
    generate_labeled_records,
    generate_records,
)
from flywheel_assets.sample_data.tools import TOOL_ROUTER_TOOLS
from flywheel_assets.sample_data.workloads import DEFAULT_WORKLOADS, WORKLOADS
from flywheel_assets.sample_data.writers import FORMATS, write_sample_traces

__all__ = [
    "DEFAULT_END_DATE",
    "DEFAULT_WORKLOADS",
    "DUPLICATE_VARIANTS",
    "FORMATS",
    "MALFORMED_KINDS",
    "OVERSIZED_BYTES",
    "PII_KINDS",
    "TOOL_ROUTER_TOOLS",
    "WORKLOADS",
    "LabeledLine",
    "Serving",
    "generate_labeled_records",
    "generate_records",
    "main",
    "write_sample_traces",
]
