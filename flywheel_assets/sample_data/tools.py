"""The tools offered to the tool_router workload (OpenAI function-tool definitions), their
drifted variant, and the JSON serialisation of records that carry a tools list."""

from __future__ import annotations

import json
from typing import Any

_TOOLS_SENTINEL = "@@FLYWHEEL_TOOLS_%d@@"


def _function_tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_STRING = {"type": "string"}
TOOL_ROUTER_TOOLS: list[dict[str, Any]] = [
    _function_tool(
        "get_order_status",
        "Look up the current status of a customer's order.",
        {"order_id": {**_STRING, "description": "Order id, e.g. ORD-123456."}},
        ["order_id"],
    ),
    _function_tool(
        "cancel_order",
        "Cancel an order that has not shipped yet.",
        {
            "order_id": {**_STRING, "description": "Order id, e.g. ORD-123456."},
            "reason": {**_STRING, "description": "Why the customer cancels, in their words."},
        },
        ["order_id", "reason"],
    ),
    _function_tool(
        "track_shipment",
        "Get carrier tracking events for a shipped package.",
        {"tracking_number": {**_STRING, "description": "Carrier tracking number, e.g. 1Z12345678."}},
        ["tracking_number"],
    ),
    _function_tool(
        "update_address",
        "Change the shipping address of an order.",
        {
            "order_id": {**_STRING, "description": "Order id, e.g. ORD-123456."},
            "street": {**_STRING, "description": "Street and house number."},
            "city": _STRING,
            "zip": {**_STRING, "description": "5-digit ZIP code."},
        },
        ["order_id", "street", "city", "zip"],
    ),
    _function_tool(
        "issue_refund",
        "Refund an amount in USD for an order.",
        {
            "order_id": {**_STRING, "description": "Order id, e.g. ORD-123456."},
            "amount": {"type": "number", "description": "Amount in USD."},
        },
        ["order_id", "amount"],
    ),
    _function_tool(
        "search_products",
        "Search the product catalog.",
        {
            "query": {**_STRING, "description": "What the customer is looking for."},
            "max_results": {"type": "integer", "minimum": 1, "maximum": 50},
        },
        ["query", "max_results"],
    ),
    _function_tool("find_store", "Find retail store locations in a city.", {"city": _STRING}, ["city"]),
    _function_tool(
        "apply_coupon",
        "Apply a coupon or promo code to an order.",
        {
            "order_id": {**_STRING, "description": "Order id, e.g. ORD-123456."},
            "code": {**_STRING, "description": "Coupon code."},
        },
        ["order_id", "code"],
    ),
]
TOOL_NAMES = [t["function"]["name"] for t in TOOL_ROUTER_TOOLS]

# Drifted traffic (``drift=True``): a tool the flywheel never trained on, offered and called
# on 40% of tool_router requests, and the rest skewed towards refunds and cancellations.
EXCHANGE_TOOL = _function_tool(
    "exchange_item",
    "Exchange an item of an order for another size.",
    {
        "order_id": {**_STRING, "description": "Order id, e.g. ORD-123456."},
        "size": {"type": "string", "enum": ["XS", "S", "M", "L", "XL"]},
    },
    ["order_id", "size"],
)
DRIFTED_TOOLS_CUM = [0.4, 0.65, 0.85, 0.9, 0.93, 0.96, 0.98, 1.0]  # exchange, refund, cancel, the rest
DRIFTED_TOOL_NAMES = [
    "exchange_item",
    "issue_refund",
    "cancel_order",
    "get_order_status",
    "track_shipment",
    "search_products",
    "find_store",
    "apply_coupon",
]

# Tools JSON is serialised once; records carry a sentinel string that is swapped for it.
_TOOL_ORDERS: list[list[dict]] = [
    TOOL_ROUTER_TOOLS,
    list(reversed(TOOL_ROUTER_TOOLS)),
    TOOL_ROUTER_TOOLS[4:] + TOOL_ROUTER_TOOLS[:4],
    sorted(TOOL_ROUTER_TOOLS, key=lambda t: t["function"]["name"]),
]
TOOL_ORDER_VARIANTS = len(_TOOL_ORDERS)  # what near duplicates rotate through
DRIFTED_TOOLS_INDEX = len(_TOOL_ORDERS)
_TOOL_ORDERS.append(TOOL_ROUTER_TOOLS + [EXCHANGE_TOOL])
_TOOLS_JSON = [json.dumps(tools) for tools in _TOOL_ORDERS]
TOOLS_SENTINELS = [_TOOLS_SENTINEL % i for i in range(len(_TOOL_ORDERS))]
_TOOLS_QUOTED = [f'"{s}"' for s in TOOLS_SENTINELS]
TOOLS_TOKENS = len(_TOOLS_JSON[0]) // 4
_SENTINEL_PREFIX = '"@@FLYWHEEL_TOOLS_'


def dumps(obj: Any) -> str:
    """``json.dumps``, with a tools sentinel swapped for its serialised tools list."""
    s = json.dumps(obj)
    at = s.find(_SENTINEL_PREFIX)
    if at >= 0:  # a record holds at most one tools list
        i = int(s[at + len(_SENTINEL_PREFIX)])
        s = s.replace(_TOOLS_QUOTED[i], _TOOLS_JSON[i], 1)
    return s
