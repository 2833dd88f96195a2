"""The three simulated production workloads: model, system prompts, clients and latency."""

from __future__ import annotations

import math
from typing import NamedTuple


class Workload(NamedTuple):
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


WORKLOADS: dict[str, Workload] = {
    "tool_router": Workload(
        "tool_router",
        "Routes a customer-support request to one of 8 order/shipping/catalog tools.",
        "meta/llama-3.3-70b-instruct",
        "meta/llama-3.1-70b-instruct",
        "You are ShopCo's support router. Call the one tool that handles the request.",
        "You are ShopCo's customer support router. Always answer with exactly one tool call.",
        ("support-web", "support-mobile-ios", "support-ivr"),
        frozenset({"support-web"}),
        math.log(650.0),
        0.35,
        0.0,
        256,
    ),
    "support_chat": Workload(
        "support_chat",
        "Answers customer questions about products and store policies in 1-3 sentences.",
        "meta/llama-3.3-70b-instruct",
        "meta/llama-3.1-405b-instruct",
        "You are ShopCo's helpful support assistant. Answer in at most three sentences.",
        "You are a friendly ShopCo support agent. Answer briefly and accurately.",
        ("helpcenter-web", "mobile-app"),
        frozenset({"helpcenter-web"}),
        math.log(1400.0),
        0.45,
        0.3,
        512,
    ),
    "query_rewrite": Workload(
        "query_rewrite",
        "Rewrites a raw product search query into a cleaned, expanded search query.",
        "meta/llama-3.1-8b-instruct",
        "meta/llama-3.2-3b-instruct",
        "Rewrite the user's product search query: fix spelling, expand abbreviations and "
        "add synonyms. Reply with the rewritten query only.",
        "Clean up and expand this shopping search query. Output only the new query.",
        ("storefront-search", "mobile-app-search", "partner-api"),
        frozenset({"partner-api"}),
        math.log(320.0),
        0.3,
        0.0,
        64,
    ),
}
DEFAULT_WORKLOADS = ("tool_router", "support_chat", "query_rewrite")
WORKLOAD_MIX = {"tool_router": 0.4, "support_chat": 0.3, "query_rewrite": 0.3}
