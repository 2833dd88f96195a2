"""Seeded generator of realistic production LLM traffic (trace records, one JSON per line).

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
``traces-YYYY-MM-DD.{jsonl,jsonl.gz,parquet}``, atomically (temp file + ``os.replace``).
Parquet files hold ``request``, ``response`` and ``feedback`` as JSON-string columns.

Console script: ``flywheel-sample-traces --out DIR [--records N] [--days 7] [--seed 0]
[--malformed-rate 0.03] [--end-date YYYY-MM-DD] [--workloads a,b,c]
[--format jsonl|jsonl.gz|parquet]``, and for simulated post-promotion traffic
``[--served-model NAME] [--canary-model NAME --canary-share 0.5 [--canary-latency-factor 2]]
[--drift]`` (see ``Serving``; every such record carries a ``simulation`` label).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import math
import os
import random
import sys
import time
from bisect import bisect
from collections import deque
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

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

DEFAULT_END_DATE = dt.date(2026, 11, 20)
FORMATS = ("jsonl", "jsonl.gz", "parquet")
MALFORMED_KINDS = (
    "invalid_json",
    "missing_workload_id",
    "non_numeric_timestamp",
    "non_chat_request",
    "empty_choices",
    "empty_message",
    "oversized",
)
DUPLICATE_VARIANTS = ("exact_duplicate", "near_duplicate", "whitespace_variant")
PII_KINDS = ("email", "phone", "card", "ssn", "ipv4")
OVERSIZED_BYTES = 1024 * 1024 + 64 * 1024  # user content of an oversized record (> 1 MiB)

_EXACT_DUP_RATE = 0.05
_NEAR_DUP_RATE = 0.035
_WS_DUP_RATE = 0.015
_PII_RATE = 0.05
_FEEDBACK_RATE = 0.20
_MULTI_TURN_RATE = 0.15
_POOL_SIZE = 256
_DAY_S = 86400
_TOOLS_SENTINEL = "@@FLYWHEEL_TOOLS_%d@@"


class LabeledLine(NamedTuple):
    """One generated JSONL line (without its newline) and what was injected into it."""

    line: str
    workload_id: str
    malformed: str | None  # one of MALFORMED_KINDS, or None for a valid record
    variant: str | None  # one of DUPLICATE_VARIANTS, or None for an original record
    pii: str | None  # one of PII_KINDS, or None


# --------------------------------------------------------------------------- vocabulary

_FIRST = ["jane", "john", "maria", "wei", "aisha", "carlos", "olga", "sam", "priya", "tom",
          "lena", "omar", "yuki", "noah", "fatima", "liam"]
_LAST = ["doe", "smith", "garcia", "chen", "khan", "lopez", "ivanova", "lee", "patel",
         "brown", "muller", "haddad", "tanaka", "wilson", "ali", "murphy"]
_DOMAINS = ["example.com", "gmail.com", "yahoo.com", "outlook.com", "corp.example.org"]

_CITIES = [
    ("Springfield", "62704"), ("Denver", "80202"), ("Austin", "73301"),
    ("Seattle", "98101"), ("Boston", "02108"), ("Chicago", "60601"),
    ("Portland", "97201"), ("Phoenix", "85001"), ("Atlanta", "30301"),
    ("Miami", "33101"), ("Dallas", "75201"), ("San Diego", "92101"),
    ("Nashville", "37201"), ("Madison", "53703"), ("Raleigh", "27601"),
    ("Omaha", "68102"), ("Tucson", "85701"), ("Buffalo", "14201"),
    ("Sacramento", "94203"), ("Richmond", "23219"), ("Boise", "83702"),
    ("Fresno", "93650"), ("Tampa", "33601"), ("Pittsburgh", "15201"),
    ("Columbus", "43004"), ("Charlotte", "28202"), ("Detroit", "48201"),
    ("Memphis", "37501"), ("Baltimore", "21201"), ("Milwaukee", "53202"),
    ("Albuquerque", "87101"), ("Kansas City", "64101"), ("Oakland", "94601"),
    ("Tulsa", "74103"), ("Cleveland", "44101"), ("Honolulu", "96801"),
    ("Anchorage", "99501"), ("Salt Lake City", "84101"), ("Orlando", "32801"),
    ("Louisville", "40202"),
]
# politeness around a request; they never carry a tool keyword
_GREETINGS = ["Hi! ", "Hello. ", "Hey there! ", "Good morning! ", "Sorry to bother you. ",
              "Quick question. ", "Hi team. "]
_THANKS = [" Thanks!", " Thank you.", " Thanks in advance.", " Appreciate it!",
           " Thanks a lot."]
_STREETS = ["Main St", "Oak Ave", "Maple Dr", "Pine St", "Cedar Ln", "Elm St", "Lake Rd",
            "Hill St", "Park Ave", "River Rd", "Sunset Blvd", "Birch Way", "Church St",
            "Market St", "2nd Ave", "Washington St"]
_CANCEL_REASONS = [
    "I ordered the wrong size", "I found a better price elsewhere",
    "it is taking too long to ship", "I no longer need it", "I ordered it by mistake",
    "the delivery date is too late", "I want a different color",
]
_COUPONS = ["SAVE10", "WELCOME15", "FREESHIP", "HOLIDAY25", "SPRING20", "VIP30", "BACK2SCHOOL",
            "FLASH40", "THANKYOU5", "NEWYEAR50"]

# (product, synonyms) used by search_products, support_chat and query_rewrite
_PRODUCTS = [
    ("wireless earbuds", ["bluetooth earbuds", "true wireless earphones"]),
    ("running shoes", ["jogging sneakers", "road running trainers"]),
    ("laptop backpack", ["computer backpack", "notebook bag"]),
    ("coffee maker", ["drip coffee machine", "coffee brewer"]),
    ("yoga mat", ["exercise mat", "pilates mat"]),
    ("phone case", ["smartphone cover", "protective phone case"]),
    ("desk lamp", ["led task light", "reading lamp"]),
    ("winter jacket", ["insulated coat", "parka"]),
    ("water bottle", ["insulated bottle", "hydration flask"]),
    ("gaming mouse", ["wired gaming mouse", "rgb mouse"]),
    ("air fryer", ["oil-free fryer", "convection fryer"]),
    ("hiking boots", ["trekking boots", "waterproof hiking shoes"]),
    ("mechanical keyboard", ["gaming keyboard", "hot-swappable keyboard"]),
    ("baby stroller", ["pushchair", "travel stroller"]),
    ("standing desk", ["sit-stand desk", "height adjustable desk"]),
    ("electric toothbrush", ["sonic toothbrush", "rechargeable toothbrush"]),
    ("smart watch", ["fitness smartwatch", "activity tracker watch"]),
    ("camping tent", ["backpacking tent", "4 person tent"]),
]
_ADJECTIVES = [("", ""), ("", ""), ("cheap", "affordable"), ("best", "top rated"),
               ("waterproof", "waterproof"), ("kids", "kids"), ("lightweight", "lightweight"),
               ("new", "latest"), ("used", "refurbished")]
_QUALIFIERS = [("", ""), ("", ""), ("for men", "for men"), ("for women", "for women"),
               ("under 50", "price under 50 USD"), ("under 100", "price under 100 USD"),
               ("with free shipping", "with free shipping"), ("for travel", "for travel"),
               ("black", "in black"), ("on sale", "on sale")]
_ABBREV = {"for": "4", "with": "w/", "under": "<", "and": "&", "black": "blk", "shipping": "shpping"}


# --------------------------------------------------------------------------- tool_router

def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_S = {"type": "string"}
TOOL_ROUTER_TOOLS: list[dict[str, Any]] = [
    _fn("get_order_status", "Look up the current status of a customer's order.",
        {"order_id": {**_S, "description": "Order id, e.g. ORD-123456."}}, ["order_id"]),
    _fn("cancel_order", "Cancel an order that has not shipped yet.",
        {"order_id": {**_S, "description": "Order id, e.g. ORD-123456."},
         "reason": {**_S, "description": "Why the customer cancels, in their words."}},
        ["order_id", "reason"]),
    _fn("track_shipment", "Get carrier tracking events for a shipped package.",
        {"tracking_number": {**_S, "description": "Carrier tracking number, e.g. 1Z12345678."}},
        ["tracking_number"]),
    _fn("update_address", "Change the shipping address of an order.",
        {"order_id": {**_S, "description": "Order id, e.g. ORD-123456."},
         "street": {**_S, "description": "Street and house number."},
         "city": _S, "zip": {**_S, "description": "5-digit ZIP code."}},
        ["order_id", "street", "city", "zip"]),
    _fn("issue_refund", "Refund an amount in USD for an order.",
        {"order_id": {**_S, "description": "Order id, e.g. ORD-123456."},
         "amount": {"type": "number", "description": "Amount in USD."}},
        ["order_id", "amount"]),
    _fn("search_products", "Search the product catalog.",
        {"query": {**_S, "description": "What the customer is looking for."},
         "max_results": {"type": "integer", "minimum": 1, "maximum": 50}},
        ["query", "max_results"]),
    _fn("find_store", "Find retail store locations in a city.",
        {"city": _S}, ["city"]),
    _fn("apply_coupon", "Apply a coupon or promo code to an order.",
        {"order_id": {**_S, "description": "Order id, e.g. ORD-123456."},
         "code": {**_S, "description": "Coupon code."}},
        ["order_id", "code"]),
]

_ROUTER_TEMPLATES: dict[str, list[str]] = {
    "get_order_status": [
        "What is the status of order {order_id}?",
        "Can you check the status of my order {order_id}?",
        "Any status update on order {order_id}?",
        "Status check for order {order_id}, please.",
        "My order {order_id} still says processing, what is its status?",
    ],
    "cancel_order": [
        "Please cancel order {order_id} because {reason}.",
        "I need to cancel my order {order_id} because {reason}.",
        "Cancel order {order_id}, {reason}.",
        "Can you cancel {order_id}? Reason: {reason}.",
    ],
    "track_shipment": [
        "Track my package with tracking number {tracking_number}.",
        "Can you track shipment {tracking_number} for me?",
        "Tracking number {tracking_number} has not moved in days, can you track it?",
        "What does the tracking for {tracking_number} say?",
    ],
    "update_address": [
        "Please change the shipping address for order {order_id} to {street}, {city} {zip}.",
        "Update the address on {order_id} to {street}, {city}, {zip}.",
        "I moved, change the address of order {order_id} to {street}, {city} {zip}.",
        "New delivery address for order {order_id}: {street}, {city} {zip}.",
    ],
    "issue_refund": [
        "I want a refund of ${amount} for order {order_id}.",
        "Please refund ${amount} on order {order_id}, the item arrived damaged.",
        "Order {order_id} was overcharged, refund me ${amount}.",
        "Can I get a refund? ${amount} for {order_id}.",
    ],
    "search_products": [
        "Search for {query}, show me {max_results} results.",
        "Search the catalog for {query} and list {max_results} products.",
        "Can you search {query}? Top {max_results} please.",
        "I'm searching for {query}, give me {max_results} options.",
    ],
    "find_store": [
        "Is there a store near {city}?",
        "Find the nearest store in {city}.",
        "What are your store locations in {city}?",
        "Do you have a physical store in {city}?",
    ],
    "apply_coupon": [
        "Apply coupon {code} to order {order_id}.",
        "I forgot to use coupon code {code} on order {order_id}.",
        "Can you add promo code {code} to {order_id}?",
        "Please use coupon {code} for my order {order_id}.",
    ],
}
_TOOL_NAMES = [t["function"]["name"] for t in TOOL_ROUTER_TOOLS]

# Drifted traffic (``drift=True``): a tool the flywheel never trained on, offered and called
# on 40% of tool_router requests, and the rest skewed towards refunds and cancellations.
EXCHANGE_TOOL = _fn("exchange_item", "Exchange an item of an order for another size.",
                    {"order_id": {**_S, "description": "Order id, e.g. ORD-123456."},
                     "size": {"type": "string", "enum": ["XS", "S", "M", "L", "XL"]}},
                    ["order_id", "size"])
_EXCHANGE_TEMPLATES = [
    "I'd like to exchange the item from order {order_id} for size {size}.",
    "Exchange my order {order_id} for a size {size}, it doesn't fit.",
    "Could you swap order {order_id} for size {size}?",
]
_DRIFTED_TOOLS_CUM = [0.4, 0.65, 0.85, 0.9, 0.93, 0.96, 0.98, 1.0]  # exchange, refund, cancel, the rest
_DRIFTED_TOOL_NAMES = ["exchange_item", "issue_refund", "cancel_order", "get_order_status",
                       "track_shipment", "search_products", "find_store", "apply_coupon"]


# --------------------------------------------------------------------------- support_chat

_SUPPORT_TOPICS: list[tuple[list[str], list[str]]] = [
    (["What is your return policy for {product}?", "Can I return {product} I bought last week?",
      "How many days do I have to return {product}?"],
     ["You can return {product} within 30 days of delivery for a full refund, as long as it "
      "is unused and in its original packaging. Start the return from Orders in your account.",
      "Returns of {product} are accepted within 30 days of delivery. Print the prepaid label "
      "from your account and drop the package at any carrier location."]),
    (["How long does standard shipping take?", "When will my {product} arrive with standard "
      "shipping?", "How fast is your shipping?"],
     ["Standard shipping takes 3-5 business days within the continental US. Express shipping "
      "arrives in 1-2 business days.",
      "Most orders arrive in 3-5 business days with standard shipping. You get a tracking "
      "link by email as soon as the package leaves our warehouse."]),
    (["Do you ship {product} internationally?", "Can I get {product} shipped to Canada?",
      "Which countries do you ship to?"],
     ["We ship to over 40 countries, including Canada, the UK and most of the EU. Duties and "
      "taxes are calculated at checkout.",
      "Yes, we ship internationally to more than 40 countries. Delivery usually takes 7-14 "
      "business days."]),
    (["What payment methods do you accept for {product}?", "Can I pay for {product} with PayPal?",
      "Do you accept Apple Pay for {product}?"],
     ["We accept Visa, Mastercard, American Express, PayPal, Apple Pay and Google Pay. "
      "Gift cards can be combined with any of them.",
      "You can pay with all major credit cards, PayPal, Apple Pay or Google Pay."]),
    (["What does the warranty on {product} cover?", "Is {product} covered by a warranty?",
      "How do I make a warranty claim for {product}?"],
     ["{product_cap} comes with a one-year limited warranty covering manufacturing defects. "
      "Open a claim from the product page in your order history.",
      "Our one-year warranty covers defects in materials and workmanship of {product}. It "
      "does not cover accidental damage."]),
    (["Do you price match on {product}?", "I saw {product} cheaper elsewhere, will you match the price?",
      "Is there a price match guarantee?"],
     ["Yes, we match the price of major US retailers for identical items in stock. Contact "
      "us within 14 days of purchase with a link to the lower price.",
      "We offer price matching on identical items from major retailers within 14 days of "
      "purchase."]),
    (["Do gift cards expire?", "Can I use a gift card to buy {product}?",
      "Can I pay for {product} with a gift card?",
      "How do I check my gift card balance?"],
     ["Our gift cards never expire and can be used on any product, including {product}. "
      "Check the balance under Account > Gift cards.",
      "Gift cards have no expiration date or fees. You can check the balance at checkout or "
      "in your account."]),
    (["How do I delete my account?", "Can you close my account and remove my data?",
      "How can I delete my personal data?", "I bought {product} once, how do I delete my "
      "account now?"],
     ["You can delete your account under Account > Privacy > Delete account. Your data is "
      "removed within 30 days, except what we must keep for tax purposes.",
      "Go to Account > Privacy and choose Delete account. We confirm by email once your data "
      "has been erased."]),
    (["Can I change the color of {product} after ordering?", "Can I modify my order before "
      "it ships?", "How do I add an item to an order I already placed?"],
     ["Orders can be changed within one hour of purchase from Orders > Edit order. After "
      "that, you can return the item and place a new order.",
      "You can edit an order for up to one hour after placing it. Once it is packed, changes "
      "are no longer possible."]),
    (["What are the benefits of the Plus membership?", "Is the Plus membership worth it for "
      "buying {product}?", "How much does Plus membership cost?"],
     ["Plus costs $49 per year and includes free 2-day shipping, early access to sales and "
      "extended 60-day returns.",
      "Plus members get free 2-day shipping, 60-day returns and member-only discounts for "
      "$49 a year."]),
]


# --------------------------------------------------------------------------- workloads

class _Workload(NamedTuple):
    workload_id: str
    description: str
    model: str
    alt_model: str
    system_prompt: str
    alt_system_prompt: str
    clients: tuple[str, ...]
    describing_clients: frozenset[str]  # clients that send workload_description
    latency_mu: float  # lognormal, milliseconds
    latency_sigma: float
    temperature: float
    max_tokens: int


WORKLOADS: dict[str, _Workload] = {
    "tool_router": _Workload(
        "tool_router",
        "Routes a customer-support request to one of 8 order/shipping/catalog tools.",
        "meta/llama-3.3-70b-instruct", "meta/llama-3.1-70b-instruct",
        "You are ShopCo's support router. Call the one tool that handles the request.",
        "You are ShopCo's customer support router. Always answer with exactly one tool call.",
        ("support-web", "support-mobile-ios", "support-ivr"),
        frozenset({"support-web"}),
        math.log(650.0), 0.35, 0.0, 256),
    "support_chat": _Workload(
        "support_chat",
        "Answers customer questions about products and store policies in 1-3 sentences.",
        "meta/llama-3.3-70b-instruct", "meta/llama-3.1-405b-instruct",
        "You are ShopCo's helpful support assistant. Answer in at most three sentences.",
        "You are a friendly ShopCo support agent. Answer briefly and accurately.",
        ("helpcenter-web", "mobile-app"),
        frozenset({"helpcenter-web"}),
        math.log(1400.0), 0.45, 0.3, 512),
    "query_rewrite": _Workload(
        "query_rewrite",
        "Rewrites a raw product search query into a cleaned, expanded search query.",
        "meta/llama-3.1-8b-instruct", "meta/llama-3.2-3b-instruct",
        "Rewrite the user's product search query: fix spelling, expand abbreviations and "
        "add synonyms. Reply with the rewritten query only.",
        "Clean up and expand this shopping search query. Output only the new query.",
        ("storefront-search", "mobile-app-search", "partner-api"),
        frozenset({"partner-api"}),
        math.log(320.0), 0.3, 0.0, 64),
}
DEFAULT_WORKLOADS = ("tool_router", "support_chat", "query_rewrite")
_DEFAULT_MIX = {"tool_router": 0.4, "support_chat": 0.3, "query_rewrite": 0.3}

# Tools JSON is serialised once; records carry a sentinel string that is swapped for it.
_TOOL_ORDERS: list[list[dict]] = [
    TOOL_ROUTER_TOOLS,
    list(reversed(TOOL_ROUTER_TOOLS)),
    TOOL_ROUTER_TOOLS[4:] + TOOL_ROUTER_TOOLS[:4],
    sorted(TOOL_ROUTER_TOOLS, key=lambda t: t["function"]["name"]),
]
_TOOL_ORDER_VARIANTS = len(_TOOL_ORDERS)  # what near duplicates rotate through
_DRIFTED_TOOLS_IDX = len(_TOOL_ORDERS)
_TOOL_ORDERS.append(TOOL_ROUTER_TOOLS + [EXCHANGE_TOOL])
_TOOLS_JSON = [json.dumps(tools) for tools in _TOOL_ORDERS]
_TOOLS_SENTINELS = [_TOOLS_SENTINEL % i for i in range(len(_TOOL_ORDERS))]
_TOOLS_QUOTED = [f'"{s}"' for s in _TOOLS_SENTINELS]
_TOOLS_TOKENS = len(_TOOLS_JSON[0]) // 4


_SENTINEL_PREFIX = '"@@FLYWHEEL_TOOLS_'


def _dumps(obj: Any) -> str:
    s = json.dumps(obj)
    at = s.find(_SENTINEL_PREFIX)
    if at >= 0:  # a record holds at most one tools list
        i = int(s[at + len(_SENTINEL_PREFIX)])
        s = s.replace(_TOOLS_QUOTED[i], _TOOLS_JSON[i], 1)
    return s


# --------------------------------------------------------------------------- serving

class Serving(NamedTuple):
    """Who serves the traffic: by default the workload's production model. Post-promotion
    traffic (simulated, and labelled so in every record's ``simulation`` field): every
    request served by ``served_model`` (the promoted candidate's served name), a
    ``canary_share`` of them by ``canary_model`` with latencies times
    ``canary_latency_factor``, and with ``drift`` a tool_router mix the flywheel never
    trained on (the new tool ``exchange_item`` on 40% of requests)."""

    served_model: str | None = None
    canary_model: str | None = None
    canary_share: float = 0.0
    canary_latency_factor: float = 1.0
    drift: bool = False

    @property
    def simulated(self) -> bool:
        return self != Serving()

    def check(self) -> None:
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError("canary_share must lie in [0, 1]")
        if self.canary_share and not self.canary_model:
            raise ValueError("canary_share needs canary_model")
        if self.canary_latency_factor <= 0:
            raise ValueError("canary_latency_factor must be > 0")

    def label(self, model: str) -> dict[str, Any]:
        return {"simulated": True, "scenario": "post-promotion traffic (flywheel-sample-traces)",
                "served_by": model, "canary": model == self.canary_model, "drifted_tool_mix": self.drift}


# --------------------------------------------------------------------------- generator

class _Generator:
    def __init__(self, seed: int, workloads: Sequence[str], malformed_rate: float,
                 allow_invalid_json: bool, serving: Serving | None = None) -> None:
        unknown = [w for w in workloads if w not in WORKLOADS]
        if unknown or not workloads:
            raise ValueError(f"unknown or empty workloads {list(workloads)}; "
                             f"known: {sorted(WORKLOADS)}")
        if not 0.0 <= malformed_rate <= 1.0:
            raise ValueError("malformed_rate must lie in [0, 1]")
        self.rng = random.Random(seed)
        self.serving = serving or Serving()
        self.workloads = [WORKLOADS[w] for w in workloads]
        weights = [_DEFAULT_MIX.get(w, 1 / 3) for w in workloads]
        total = sum(weights)
        acc, self.cum = 0.0, []
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.cum[-1] = 1.0
        self.malformed_rate = malformed_rate
        self.kinds = [k for k in MALFORMED_KINDS
                      if k != "oversized" and (allow_invalid_json or k != "invalid_json")]
        # recent valid records (workload, record, pii kind), the sources of duplicates
        self.pool: deque[tuple[_Workload, dict, str | None]] = deque(maxlen=_POOL_SIZE)
        self._oversized_body: str | None = None
        self._build = {"tool_router": self._tool_router, "support_chat": self._support_chat,
                       "query_rewrite": self._query_rewrite}

    # -- small helpers
    def _pick(self, seq: Sequence[Any]) -> Any:
        return seq[int(self.rng.random() * len(seq))]

    def _pii(self) -> tuple[str, str]:
        rng, pick = self.rng, self._pick
        kind = pick(PII_KINDS)
        if kind == "email":
            sep = pick([".", "_", ""])
            value = f"{pick(_FIRST)}{sep}{pick(_LAST)}{rng.randint(1, 99) if rng.random() < .4 else ''}@{pick(_DOMAINS)}"
            text = pick(["My email is {v}.", "You can reach me at {v}.", "Email me at {v}."])
        elif kind == "phone":
            a, b = rng.randint(201, 989), rng.randint(100, 9999)
            value = (f"+1 {a}-555-{b:04d}" if rng.random() < .5 else f"({a}) 555-{b:04d}")
            text = pick(["Call me at {v}.", "My phone number is {v}.", "Text me at {v}."])
        elif kind == "card":
            value = pick(["4111 1111 1111 1111", "5500 0000 0000 0004", "4242 4242 4242 4242",
                          "3782 822463 10005", "6011 1111 1111 1117"])
            text = pick(["I paid with card {v}.", "My card number is {v}.",
                         "The charge was on {v}."])
        elif kind == "ssn":
            value = f"{rng.randint(100, 899)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
            text = pick(["My SSN is {v}.", "For verification my social is {v}."])
        else:
            value = (f"{pick([10, 73, 98, 172, 192, 203])}.{rng.randint(0, 255)}."
                     f"{rng.randint(0, 255)}.{rng.randint(1, 254)}")
            text = pick(["My IP is {v}.", "I'm connecting from {v}."])
        return kind, text.format(v=value)

    def _order_id(self) -> str:
        return f"ORD-{self.rng.randint(100000, 999999)}"

    # -- workload builders: return (messages, assistant message, finish_reason, pii kind)
    def _tool_router(self, wl: _Workload, pii: bool):
        rng, pick = self.rng, self._pick
        if self.serving.drift:
            name = _DRIFTED_TOOL_NAMES[bisect(_DRIFTED_TOOLS_CUM, rng.random())]
        else:
            name = _TOOL_NAMES[int(rng.random() * len(_TOOL_NAMES))]
        tmpl = pick(_EXCHANGE_TEMPLATES if name == "exchange_item" else _ROUTER_TEMPLATES[name])
        if name == "exchange_item":
            args = {"order_id": self._order_id(), "size": pick(["XS", "S", "M", "L", "XL"])}
            text = tmpl.format(**args)
        elif name == "get_order_status":
            args = {"order_id": self._order_id()}
            text = tmpl.format(**args)
        elif name == "cancel_order":
            args = {"order_id": self._order_id(), "reason": pick(_CANCEL_REASONS)}
            text = tmpl.format(**args)
        elif name == "track_shipment":
            args = {"tracking_number": f"1Z{rng.randint(10000000, 99999999)}"}
            text = tmpl.format(**args)
        elif name == "update_address":
            city, zip_ = pick(_CITIES)
            args = {"order_id": self._order_id(),
                    "street": f"{rng.randint(1, 9999)} {pick(_STREETS)}", "city": city,
                    "zip": zip_}
            text = tmpl.format(**args)
        elif name == "issue_refund":
            dollars = rng.randint(5, 499)
            if rng.random() < 0.5:
                amount: float | int = dollars
                shown = str(dollars)
            else:
                cents = pick([c for c in range(1, 100) if c % 10])
                shown = f"{dollars}.{cents:02d}"
                amount = float(shown)
            args = {"order_id": self._order_id(), "amount": amount}
            text = tmpl.format(order_id=args["order_id"], amount=shown)
        elif name == "search_products":
            product = pick(_PRODUCTS)[0]
            adj = pick(_ADJECTIVES)[0]
            query = f"{adj} {product}" if adj else product
            args = {"query": query, "max_results": rng.randint(3, 20)}
            text = tmpl.format(**args)
        elif name == "find_store":
            args = {"city": pick(_CITIES)[0]}
            text = tmpl.format(**args)
        else:
            args = {"order_id": self._order_id(), "code": pick(_COUPONS)}
            text = tmpl.format(**args)
        r = rng.random()
        if r < 0.15:
            text = pick(_GREETINGS) + text
        elif r < 0.3:
            text = text + pick(_THANKS)
        pii_kind = None
        if pii:
            pii_kind, extra = self._pii()
            text = f"{text} {extra}"
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{
                "id": f"call_{rng.getrandbits(96):024x}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }],
        }
        return [{"role": "user", "content": text}], message, "tool_calls", pii_kind

    def _support_chat(self, wl: _Workload, pii: bool):
        pick = self._pick
        turns = []
        n_turns = 2 if self.rng.random() < _MULTI_TURN_RATE else 1
        for _ in range(n_turns):
            questions, answers = pick(_SUPPORT_TOPICS)
            product = "the " + pick(_PRODUCTS)[0]
            fmt = {"product": product, "product_cap": "T" + product[1:]}
            question = pick(questions).format(**fmt)
            r = self.rng.random()
            if r < 0.35:
                question = pick(_GREETINGS) + question
            elif r < 0.6:
                question = question + pick(_THANKS)
            elif r < 0.75:
                question = pick(_GREETINGS) + question + pick(_THANKS)
            turns.append((question, pick(answers).format(**fmt)))
        pii_kind = None
        if pii:
            pii_kind, extra = self._pii()
            q, a = turns[-1]
            turns[-1] = (f"{extra} {q}", a)
        messages: list[dict] = []
        for q, a in turns[:-1]:
            messages.append({"role": "user", "content": q})
            messages.append({"role": "assistant", "content": a})
        messages.append({"role": "user", "content": turns[-1][0]})
        return messages, {"role": "assistant", "content": turns[-1][1]}, "stop", pii_kind

    def _noisy(self, word: str) -> str:
        rng = self.rng
        if word in _ABBREV and rng.random() < 0.5:
            return _ABBREV[word]
        if len(word) > 4 and rng.random() < 0.25:
            i = rng.randint(1, len(word) - 2)
            op = rng.random()
            if op < 0.4:
                return word[:i] + word[i + 1:]  # dropped letter
            if op < 0.7:
                return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swapped letters
            return word[:i] + word[i] + word[i:]  # doubled letter
        return word

    def _query_rewrite(self, wl: _Workload, pii: bool):
        rng, pick = self.rng, self._pick
        product, synonyms = pick(_PRODUCTS)
        adj_raw, adj = pick(_ADJECTIVES)
        qual_raw, qual = pick(_QUALIFIERS)
        raw_words = " ".join(p for p in (adj_raw, product, qual_raw) if p).split()
        raw = " ".join(self._noisy(w) for w in raw_words)
        r = rng.random()
        if r < 0.15:
            raw = raw.upper()
        elif r < 0.3:
            raw = raw.capitalize()
        clean = " ".join(p for p in (adj, product, qual) if p)
        syn = ", ".join(f"{s} {qual}".strip() for s in synonyms)
        rewrite = f"{clean} ({syn})"
        pii_kind = None
        if pii:
            pii_kind, extra = self._pii()
            raw = f"{raw} {extra}"
        return [{"role": "user", "content": raw}], {"role": "assistant", "content": rewrite}, \
            "stop", pii_kind

    # -- record assembly
    def _request(self, wl: _Workload, messages: list[dict], tools_idx: int = 0,
                 system: str | None = None, model: str | None = None) -> dict:
        req: dict[str, Any] = {
            "model": model or wl.model,
            "messages": [{"role": "system", "content": system or wl.system_prompt}, *messages],
        }
        if wl.workload_id == "tool_router":
            req["tools"] = _TOOLS_SENTINELS[_DRIFTED_TOOLS_IDX if self.serving.drift else tools_idx]
            req["tool_choice"] = "auto"
        req["temperature"] = wl.temperature
        req["max_tokens"] = wl.max_tokens
        return req

    def _record(self, wl: _Workload, ts: int, request: dict, message: dict,
                finish_reason: str) -> dict:
        rng = self.rng
        client = wl.clients[int(rng.random() * len(wl.clients))]
        latency = round(rng.lognormvariate(wl.latency_mu, wl.latency_sigma), 1)
        serving = self.serving
        if serving.served_model or serving.canary_model:
            canary = bool(serving.canary_model) and rng.random() < serving.canary_share
            model = serving.canary_model if canary else (serving.served_model or request["model"])
            request = dict(request, model=model)
            if canary:
                latency = round(latency * serving.canary_latency_factor, 1)
        chars = sum(len(m["content"] or "") for m in request["messages"])
        prompt_tokens = chars // 4 + 4 * len(request["messages"]) + (
            _TOOLS_TOKENS if "tools" in request else 0)
        if message.get("tool_calls"):
            out_chars = sum(len(tc["function"]["arguments"]) + len(tc["function"]["name"])
                            for tc in message["tool_calls"])
        else:
            out_chars = len(message.get("content") or "")
        completion_tokens = out_chars // 4 + 3
        rec: dict[str, Any] = {"timestamp": ts, "workload_id": wl.workload_id,
                               "client_id": client}
        if client in wl.describing_clients:
            rec["workload_description"] = wl.description
        rec["request"] = request
        rec["response"] = {
            "id": f"chatcmpl-{rng.getrandbits(96):024x}",
            "object": "chat.completion",
            "created": ts + int(latency // 1000),
            "model": request["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        rec["latency_ms"] = latency
        if serving.simulated:
            rec["simulation"] = serving.label(request["model"])
        if rng.random() < _FEEDBACK_RATE:
            if rng.random() < 0.5:
                rec["feedback"] = {"thumbs": "up" if rng.random() < 0.85 else "down"}
            else:
                rec["feedback"] = {"rating": 1 + bisect(_RATING_CUM, rng.random())}
        return rec

    def _fresh(self, ts: int, pii: bool) -> tuple[_Workload, dict, str | None]:
        wl = self.workloads[bisect(self.cum, self.rng.random())]
        messages, message, finish, pii_kind = self._build[wl.workload_id](wl, pii)
        return wl, self._record(wl, ts, self._request(wl, messages), message, finish), pii_kind

    def _duplicate(self, ts: int, day_start: int, variant: str) -> tuple[_Workload, dict, str | None] | None:
        if not self.pool:
            return None
        rng, pick = self.rng, self._pick
        wl, old, pii_kind = self.pool[int(rng.random() * len(self.pool))]
        old_req = old["request"]
        old_msg = old["response"]["choices"][0]["message"]
        finish = old["response"]["choices"][0]["finish_reason"]
        if variant == "exact_duplicate":
            if rng.random() < 0.3 and old["timestamp"] >= day_start:
                return wl, old, pii_kind  # logged twice (same day): byte-identical line
            return wl, self._record(wl, ts, old_req, old_msg, finish), pii_kind
        if variant == "whitespace_variant":
            msgs = [dict(m) for m in old_req["messages"]]
            last = msgs[-1]
            r = rng.random()
            if r < 0.4:
                last["content"] = last["content"] + " "
            elif r < 0.7:
                last["content"] = last["content"] + "\n"
            else:
                last["content"] = last["content"].replace(" ", "  ", 1)
            req = dict(old_req, messages=msgs)
            return wl, self._record(wl, ts, req, old_msg, finish), pii_kind
        # near duplicate: identical user contents, something else differs
        # drifted traffic keeps its one tools list: another order would drop exchange_item
        reorder = "tools" in old_req and not self.serving.drift
        options = ["system", "model", "wording"] + (["tools"] if reorder else [])
        what = pick(options)
        req, msg = old_req, old_msg
        if what == "system":
            other = (wl.alt_system_prompt if old_req["messages"][0]["content"] == wl.system_prompt
                     else wl.system_prompt)
            req = dict(old_req, messages=[{"role": "system", "content": other},
                                          *old_req["messages"][1:]])
        elif what == "model":
            req = dict(old_req, model=wl.alt_model if old_req["model"] == wl.model else wl.model)
        elif what == "tools":
            current = _TOOLS_SENTINELS.index(old_req["tools"])
            req = dict(old_req, tools=_TOOLS_SENTINELS[
                (current + 1 + int(rng.random() * (_TOOL_ORDER_VARIANTS - 1)))
                % _TOOL_ORDER_VARIANTS])
        elif msg.get("tool_calls"):
            tc = msg["tool_calls"][0]
            args = json.loads(tc["function"]["arguments"])
            msg = dict(msg, tool_calls=[{
                "id": f"call_{rng.getrandbits(96):024x}", "type": "function",
                "function": {"name": tc["function"]["name"],
                             "arguments": json.dumps(args, separators=(",", ":"))}}])
        elif wl.workload_id == "query_rewrite":
            msg = dict(msg, content=msg["content"].lower().replace(" (", ", ").rstrip(")"))
        else:
            msg = dict(msg, content=msg["content"] + pick(
                [" Is there anything else I can help you with?",
                 " Let me know if you have other questions.", " Happy shopping!"]))
        return wl, self._record(wl, ts, req, msg, finish), pii_kind

    def _oversized(self, rec: dict) -> dict:
        if self._oversized_body is None:
            lines, size, i = [], 0, 0
            while size < OVERSIZED_BYTES:
                line = (f"2026-11-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z ERROR checkout-svc "
                        f"request_id={i:08d} upstream timeout after 30000ms (retry {i % 5})\n")
                lines.append(line)
                size += len(line)
                i += 1
            self._oversized_body = "".join(lines)
        messages = rec["request"]["messages"]
        head = "My checkout keeps failing, here is the full log:\n"
        messages[-1] = {"role": "user", "content": head + self._oversized_body}
        return rec

    def _malform(self, kind: str, rec: dict, wl: _Workload) -> dict | str:
        rng = self.rng
        if kind == "missing_workload_id":
            del rec["workload_id"]
        elif kind == "non_numeric_timestamp":
            rec["timestamp"] = dt.datetime.fromtimestamp(
                rec["timestamp"], dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif kind == "non_chat_request":
            user = rec["request"]["messages"][-1]["content"]
            rec["request"] = {"model": rec["request"]["model"],
                              "prompt": f"{wl.system_prompt}\n\nUser: {user}\nAssistant:",
                              "max_tokens": wl.max_tokens}
            resp = rec["response"]
            msg = resp["choices"][0]["message"]
            text = msg.get("content") or json.dumps(
                [tc["function"] for tc in msg.get("tool_calls") or []])
            resp["id"] = resp["id"].replace("chatcmpl-", "cmpl-")
            resp["object"] = "text_completion"
            resp["choices"] = [{"index": 0, "text": text, "logprobs": None,
                                "finish_reason": "stop"}]
        elif kind == "empty_choices":
            rec["response"]["choices"] = []
        elif kind == "empty_message":
            msg: dict[str, Any] = {"role": "assistant", "content": None}
            if rng.random() < 0.5:
                msg["tool_calls"] = []
            rec["response"]["choices"] = [{"index": 0, "message": msg, "finish_reason": "length"}]
        elif kind == "oversized":
            rec = self._oversized(rec)
        elif kind == "invalid_json":
            line = _dumps(rec)
            return line[: rng.randint(len(line) // 4, len(line) - 2)]
        return rec

    # -- one day of records
    def day(self, day_start: int, count: int
            ) -> Iterator[tuple[_Workload, dict | str, str | None, str | None, str | None]]:
        """Yield (workload, record dict or raw line, malformed kind, variant, pii kind)."""
        rng = self.rng
        stamps = sorted(day_start + int(rng.random() * _DAY_S) for _ in range(count))
        oversized_at = -1
        if count and self.malformed_rate > 0 and rng.random() < min(
                1.0, count * self.malformed_rate / len(MALFORMED_KINDS)):
            oversized_at = int(rng.random() * count)
        exact = _EXACT_DUP_RATE
        near = exact + _NEAR_DUP_RATE
        ws = near + _WS_DUP_RATE
        pool = self.pool
        for i, ts in enumerate(stamps):
            kind: str | None = None
            if i == oversized_at:
                kind = "oversized"
            elif rng.random() < self.malformed_rate:
                kind = self.kinds[int(rng.random() * len(self.kinds))]
            variant = None
            if kind is None:
                r = rng.random()
                if r < ws:
                    variant = ("exact_duplicate" if r < exact else
                               "near_duplicate" if r < near else "whitespace_variant")
                    dup = self._duplicate(ts, day_start, variant)
                    if dup is not None:
                        wl, rec, pii_kind = dup
                        yield wl, rec, None, variant, pii_kind
                        continue
                    variant = None
            pii = rng.random() < _PII_RATE
            wl, rec, pii_kind = self._fresh(ts, pii)
            if kind is None:
                pool.append((wl, rec, pii_kind))
                yield wl, rec, None, None, pii_kind
            else:
                yield wl, self._malform(kind, rec, wl), kind, None, pii_kind


_RATING_CUM = [0.03, 0.08, 0.20, 0.55]  # P(rating <= 1..4); 5 otherwise


def _day_counts(rng: random.Random, n: int, days: int) -> list[int]:
    weights = [1.0 + rng.uniform(-0.15, 0.15) for _ in range(days)]
    total = sum(weights)
    raw = [n * w / total for w in weights]
    counts = [int(x) for x in raw]
    order = sorted(range(days), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _parse_date(value: dt.date | str | None) -> dt.date:
    if value is None:
        return DEFAULT_END_DATE
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)


def _iter_days(n: int, seed: int, days: int, end_date: dt.date | str | None,
               malformed_rate: float, workloads: Sequence[str] | str,
               allow_invalid_json: bool = True, serving: Serving | None = None):
    """Yield (date, iterator over that day's items) for each day, oldest first."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if days < 1:
        raise ValueError("days must be >= 1")
    if isinstance(workloads, str):
        workloads = [w.strip() for w in workloads.split(",") if w.strip()]
    end = _parse_date(end_date)
    if serving:
        serving.check()
    gen = _Generator(seed, list(workloads), malformed_rate, allow_invalid_json, serving)
    counts = _day_counts(gen.rng, n, days)
    for d in range(days):
        date = end - dt.timedelta(days=days - 1 - d)
        start = int(dt.datetime(date.year, date.month, date.day,
                                tzinfo=dt.timezone.utc).timestamp())
        yield date, gen.day(start, counts[d])


def _labeled(items) -> Iterator[LabeledLine]:
    for wl, rec, kind, variant, pii in items:
        line = rec if isinstance(rec, str) else _dumps(rec)
        yield LabeledLine(line, wl.workload_id, kind, variant, pii)


def generate_labeled_records(
    n: int,
    *,
    seed: int = 0,
    days: int = 7,
    end_date: dt.date | str | None = DEFAULT_END_DATE,
    malformed_rate: float = 0.03,
    workloads: Sequence[str] | str = DEFAULT_WORKLOADS,
    serving: Serving | None = None,
) -> Iterator[LabeledLine]:
    """Stream ``n`` JSONL lines (no newline) with their labels, oldest day first."""
    for _, items in _iter_days(n, seed, days, end_date, malformed_rate, workloads, serving=serving):
        yield from _labeled(items)


def generate_records(
    n: int,
    *,
    seed: int = 0,
    days: int = 7,
    end_date: dt.date | str | None = DEFAULT_END_DATE,
    malformed_rate: float = 0.03,
    workloads: Sequence[str] | str = DEFAULT_WORKLOADS,
    serving: Serving | None = None,
) -> Iterator[str]:
    """Stream ``n`` JSONL lines (without the trailing newline), oldest day first.

    Streaming: memory stays constant in ``n`` (one day's timestamps and a small pool of
    recent records for duplicates), so ``n = 1_000_000`` is fine.
    """
    labeled = generate_labeled_records(
        n, seed=seed, days=days, end_date=end_date, malformed_rate=malformed_rate, workloads=workloads,
        serving=serving,
    )
    return (item.line for item in labeled)


# --------------------------------------------------------------------------- writers

def _atomic_target(path: Path):
    """A new hidden temp file next to ``path`` (mode from the umask), to os.replace later."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
        try:
            return open(tmp, "xb"), tmp
        except FileExistsError:  # pragma: no cover - astronomically rare
            continue


def _write_lines(path: Path, items, gz: bool) -> None:
    raw, tmp = _atomic_target(path)
    try:
        with raw:
            out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                compresslevel=6) if gz else raw
            buf: list[str] = []
            for item in _labeled(items):
                buf.append(item.line)
                if len(buf) >= 2048:
                    out.write(("\n".join(buf) + "\n").encode())
                    buf.clear()
            if buf:
                out.write(("\n".join(buf) + "\n").encode())
            if gz:
                out.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _parquet_schema():
    import pyarrow as pa

    return pa.schema([
        ("timestamp", pa.int64()), ("workload_id", pa.string()), ("client_id", pa.string()),
        ("workload_description", pa.string()), ("request", pa.string()),
        ("response", pa.string()), ("latency_ms", pa.float64()), ("feedback", pa.string()),
    ])


def _write_parquet(path: Path, items) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema()
    cols: dict[str, list] = {name: [] for name in schema.names}

    def flush(writer) -> None:
        writer.write_table(pa.table(cols, schema=schema))
        for v in cols.values():
            v.clear()

    raw, tmp = _atomic_target(path)
    try:
        with raw, pq.ParquetWriter(raw, schema, compression="zstd") as writer:
            for _, rec, _, _, _ in items:
                ts = rec.get("timestamp")
                cols["timestamp"].append(ts if isinstance(ts, int) else None)
                cols["workload_id"].append(rec.get("workload_id"))
                cols["client_id"].append(rec.get("client_id"))
                cols["workload_description"].append(rec.get("workload_description"))
                cols["request"].append(_dumps(rec["request"]))
                cols["response"].append(_dumps(rec["response"]))
                cols["latency_ms"].append(rec.get("latency_ms"))
                fb = rec.get("feedback")
                cols["feedback"].append(json.dumps(fb) if fb is not None else None)
                if len(cols["request"]) >= 8192:
                    flush(writer)
            flush(writer)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_sample_traces(
    out_dir: str | os.PathLike[str],
    n: int = 3000,
    *,
    seed: int = 0,
    days: int = 7,
    end_date: dt.date | str | None = DEFAULT_END_DATE,
    malformed_rate: float = 0.03,
    workloads: Sequence[str] | str = DEFAULT_WORKLOADS,
    fmt: str = "jsonl",
    serving: Serving | None = None,
) -> list[Path]:
    """Write ``n`` records as one file per day, ``traces-YYYY-MM-DD.<fmt>``, into ``out_dir``.

    Every day of the range gets a file (possibly empty). Each file is written to a temp
    file in ``out_dir`` and moved into place with ``os.replace``. Returns the paths, oldest
    day first. ``fmt`` is ``jsonl``, ``jsonl.gz`` (deterministic gzip, mtime 0) or
    ``parquet`` (no ``invalid_json`` records; a non-numeric timestamp becomes null).
    ``serving``: simulated post-promotion traffic (see ``Serving``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for date, items in _iter_days(n, seed, days, end_date, malformed_rate, workloads,
                                  allow_invalid_json=fmt != "parquet", serving=serving):
        path = out / f"traces-{date.isoformat()}.{fmt}"
        if fmt == "parquet":
            _write_parquet(path, items)
        else:
            _write_lines(path, items, gz=fmt == "jsonl.gz")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- CLI

def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flywheel-sample-traces",
        description="Write seeded, realistic production LLM traces (one file per day).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--records", type=int, default=3000, help="number of records (3000)")
    p.add_argument("--days", type=int, default=7, help="days covered, ending at --end-date (7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--malformed-rate", type=float, default=0.03)
    p.add_argument("--end-date", default=DEFAULT_END_DATE.isoformat(),
                   help=f"last day, YYYY-MM-DD ({DEFAULT_END_DATE.isoformat()})")
    p.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                   help="comma-separated workload ids")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="jsonl")
    sim = p.add_argument_group(
        "simulated post-promotion traffic (each record carries a `simulation` label)")
    sim.add_argument("--served-model", help="model name serving every request, e.g. the promoted "
                     "candidate's (its name, model_id or served_as)")
    sim.add_argument("--canary-model", help="model name serving a canary share of the requests")
    sim.add_argument("--canary-share", type=float, default=0.0, help="share served by the canary (0)")
    sim.add_argument("--canary-latency-factor", type=float, default=1.0,
                     help="canary latencies times this (1: no real difference)")
    sim.add_argument("--drift", action="store_true",
                     help="drifted tool_router mix with a tool never trained on (exchange_item)")
    return p


def _describe(serving: Serving) -> list[str]:
    parts = [f"served by {serving.served_model}"] if serving.served_model else []
    if serving.canary_model:
        parts.append(f"{serving.canary_share:.0%} by canary {serving.canary_model} "
                     f"at {serving.canary_latency_factor:g}x latency")
    return parts + (["drifted tool mix"] if serving.drift else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        serving = Serving(args.served_model, args.canary_model, args.canary_share,
                          args.canary_latency_factor, args.drift)
        paths = write_sample_traces(
            args.out, args.records, seed=args.seed, days=args.days, end_date=args.end_date,
            malformed_rate=args.malformed_rate, workloads=args.workloads, fmt=args.fmt,
            serving=serving)
    except ValueError as exc:
        print(f"flywheel-sample-traces: error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    kind = f"SIMULATED post-promotion records ({', '.join(_describe(serving))})" \
        if serving.simulated else "records"
    print(f"wrote {args.records} {kind} to {len(paths)} files in {args.out} "
          f"({elapsed:.2f}s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
