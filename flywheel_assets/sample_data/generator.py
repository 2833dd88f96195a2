"""Seeded production traffic: records of the three workloads, with duplicates, PII, malformed
records and, when asked, simulated post-promotion traffic (``Serving``). See the package
docstring for what is injected and how often."""

from __future__ import annotations

import datetime as dt
import json
import random
from bisect import bisect
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from flywheel_assets.sample_data.tools import (
    DRIFTED_TOOL_NAMES,
    DRIFTED_TOOLS_CUM,
    DRIFTED_TOOLS_INDEX,
    TOOL_NAMES,
    TOOL_ORDER_VARIANTS,
    TOOLS_SENTINELS,
    TOOLS_TOKENS,
    dumps,
)
from flywheel_assets.sample_data.vocabulary import (
    ABBREVIATIONS,
    ADJECTIVES,
    CANCEL_REASONS,
    CITIES,
    COUPONS,
    EMAIL_DOMAINS,
    EXCHANGE_TEMPLATES,
    FIRST_NAMES,
    GREETINGS,
    LAST_NAMES,
    PRODUCTS,
    QUALIFIERS,
    ROUTER_TEMPLATES,
    STREETS,
    SUPPORT_TOPICS,
    THANKS,
)
from flywheel_assets.sample_data.workloads import (
    DEFAULT_WORKLOADS,
    WORKLOAD_MIX,
    WORKLOADS,
    Workload,
)

DEFAULT_END_DATE = dt.date(2026, 11, 20)
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


class LabeledLine(NamedTuple):
    """One generated JSONL line (without its newline) and what was injected into it."""

    line: str
    workload_id: str
    malformed: str | None  # one of MALFORMED_KINDS, or None for a valid record
    variant: str | None  # one of DUPLICATE_VARIANTS, or None for an original record
    pii: str | None  # one of PII_KINDS, or None


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
        return {
            "simulated": True,
            "scenario": "post-promotion traffic (flywheel-sample-traces)",
            "served_by": model,
            "canary": model == self.canary_model,
            "drifted_tool_mix": self.drift,
        }


# --------------------------------------------------------------------------- generator


class _Generator:
    def __init__(
        self,
        seed: int,
        workloads: Sequence[str],
        malformed_rate: float,
        allow_invalid_json: bool,
        serving: Serving | None = None,
    ) -> None:
        unknown = [w for w in workloads if w not in WORKLOADS]
        if unknown or not workloads:
            raise ValueError(f"unknown or empty workloads {list(workloads)}; known: {sorted(WORKLOADS)}")
        if not 0.0 <= malformed_rate <= 1.0:
            raise ValueError("malformed_rate must lie in [0, 1]")
        self.rng = random.Random(seed)
        self.serving = serving or Serving()
        self.workloads = [WORKLOADS[w] for w in workloads]
        weights = [WORKLOAD_MIX.get(w, 1 / 3) for w in workloads]
        total = sum(weights)
        acc, self.cum = 0.0, []
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.cum[-1] = 1.0
        self.malformed_rate = malformed_rate
        self.kinds = [k for k in MALFORMED_KINDS if k != "oversized" and (allow_invalid_json or k != "invalid_json")]
        # recent valid records (workload, record, pii kind), the sources of duplicates
        self.pool: deque[tuple[Workload, dict, str | None]] = deque(maxlen=_POOL_SIZE)
        self._oversized_body: str | None = None
        self._build = {
            "tool_router": self._tool_router,
            "support_chat": self._support_chat,
            "query_rewrite": self._query_rewrite,
        }

    # -- small helpers
    def _pick(self, seq: Sequence[Any]) -> Any:
        return seq[int(self.rng.random() * len(seq))]

    def _pii(self) -> tuple[str, str]:
        rng, pick = self.rng, self._pick
        kind = pick(PII_KINDS)
        if kind == "email":
            sep = pick([".", "_", ""])
            value = f"{pick(FIRST_NAMES)}{sep}{pick(LAST_NAMES)}{rng.randint(1, 99) if rng.random() < 0.4 else ''}@{pick(EMAIL_DOMAINS)}"
            text = pick(["My email is {v}.", "You can reach me at {v}.", "Email me at {v}."])
        elif kind == "phone":
            a, b = rng.randint(201, 989), rng.randint(100, 9999)
            value = f"+1 {a}-555-{b:04d}" if rng.random() < 0.5 else f"({a}) 555-{b:04d}"
            text = pick(["Call me at {v}.", "My phone number is {v}.", "Text me at {v}."])
        elif kind == "card":
            value = pick(
                [
                    "4111 1111 1111 1111",
                    "5500 0000 0000 0004",
                    "4242 4242 4242 4242",
                    "3782 822463 10005",
                    "6011 1111 1111 1117",
                ]
            )
            text = pick(["I paid with card {v}.", "My card number is {v}.", "The charge was on {v}."])
        elif kind == "ssn":
            value = f"{rng.randint(100, 899)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
            text = pick(["My SSN is {v}.", "For verification my social is {v}."])
        else:
            value = (
                f"{pick([10, 73, 98, 172, 192, 203])}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            )
            text = pick(["My IP is {v}.", "I'm connecting from {v}."])
        return kind, text.format(v=value)

    def _order_id(self) -> str:
        return f"ORD-{self.rng.randint(100000, 999999)}"

    # -- workload builders: return (messages, assistant message, finish_reason, pii kind)
    def _tool_router(self, wl: Workload, pii: bool):
        rng, pick = self.rng, self._pick
        if self.serving.drift:
            name = DRIFTED_TOOL_NAMES[bisect(DRIFTED_TOOLS_CUM, rng.random())]
        else:
            name = TOOL_NAMES[int(rng.random() * len(TOOL_NAMES))]
        tmpl = pick(EXCHANGE_TEMPLATES if name == "exchange_item" else ROUTER_TEMPLATES[name])
        if name == "exchange_item":
            args = {"order_id": self._order_id(), "size": pick(["XS", "S", "M", "L", "XL"])}
            text = tmpl.format(**args)
        elif name == "get_order_status":
            args = {"order_id": self._order_id()}
            text = tmpl.format(**args)
        elif name == "cancel_order":
            args = {"order_id": self._order_id(), "reason": pick(CANCEL_REASONS)}
            text = tmpl.format(**args)
        elif name == "track_shipment":
            args = {"tracking_number": f"1Z{rng.randint(10000000, 99999999)}"}
            text = tmpl.format(**args)
        elif name == "update_address":
            city, zip_ = pick(CITIES)
            args = {
                "order_id": self._order_id(),
                "street": f"{rng.randint(1, 9999)} {pick(STREETS)}",
                "city": city,
                "zip": zip_,
            }
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
            product = pick(PRODUCTS)[0]
            adj = pick(ADJECTIVES)[0]
            query = f"{adj} {product}" if adj else product
            args = {"query": query, "max_results": rng.randint(3, 20)}
            text = tmpl.format(**args)
        elif name == "find_store":
            args = {"city": pick(CITIES)[0]}
            text = tmpl.format(**args)
        else:
            args = {"order_id": self._order_id(), "code": pick(COUPONS)}
            text = tmpl.format(**args)
        r = rng.random()
        if r < 0.15:
            text = pick(GREETINGS) + text
        elif r < 0.3:
            text = text + pick(THANKS)
        pii_kind = None
        if pii:
            pii_kind, extra = self._pii()
            text = f"{text} {extra}"
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{rng.getrandbits(96):024x}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
            ],
        }
        return [{"role": "user", "content": text}], message, "tool_calls", pii_kind

    def _support_chat(self, wl: Workload, pii: bool):
        pick = self._pick
        turns = []
        n_turns = 2 if self.rng.random() < _MULTI_TURN_RATE else 1
        for _ in range(n_turns):
            questions, answers = pick(SUPPORT_TOPICS)
            product = "the " + pick(PRODUCTS)[0]
            fmt = {"product": product, "product_cap": "T" + product[1:]}
            question = pick(questions).format(**fmt)
            r = self.rng.random()
            if r < 0.35:
                question = pick(GREETINGS) + question
            elif r < 0.6:
                question = question + pick(THANKS)
            elif r < 0.75:
                question = pick(GREETINGS) + question + pick(THANKS)
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
        if word in ABBREVIATIONS and rng.random() < 0.5:
            return ABBREVIATIONS[word]
        if len(word) > 4 and rng.random() < 0.25:
            i = rng.randint(1, len(word) - 2)
            op = rng.random()
            if op < 0.4:
                return word[:i] + word[i + 1 :]  # dropped letter
            if op < 0.7:
                return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # swapped letters
            return word[:i] + word[i] + word[i:]  # doubled letter
        return word

    def _query_rewrite(self, wl: Workload, pii: bool):
        rng, pick = self.rng, self._pick
        product, synonyms = pick(PRODUCTS)
        adj_raw, adj = pick(ADJECTIVES)
        qual_raw, qual = pick(QUALIFIERS)
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
        return [{"role": "user", "content": raw}], {"role": "assistant", "content": rewrite}, "stop", pii_kind

    # -- record assembly
    def _request(
        self,
        wl: Workload,
        messages: list[dict],
        tools_idx: int = 0,
        system: str | None = None,
        model: str | None = None,
    ) -> dict:
        req: dict[str, Any] = {
            "model": model or wl.model,
            "messages": [{"role": "system", "content": system or wl.system_prompt}, *messages],
        }
        if wl.workload_id == "tool_router":
            req["tools"] = TOOLS_SENTINELS[DRIFTED_TOOLS_INDEX if self.serving.drift else tools_idx]
            req["tool_choice"] = "auto"
        req["temperature"] = wl.temperature
        req["max_tokens"] = wl.max_tokens
        return req

    def _record(self, wl: Workload, ts: int, request: dict, message: dict, finish_reason: str) -> dict:
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
        prompt_tokens = chars // 4 + 4 * len(request["messages"]) + (TOOLS_TOKENS if "tools" in request else 0)
        if message.get("tool_calls"):
            out_chars = sum(
                len(tc["function"]["arguments"]) + len(tc["function"]["name"]) for tc in message["tool_calls"]
            )
        else:
            out_chars = len(message.get("content") or "")
        completion_tokens = out_chars // 4 + 3
        rec: dict[str, Any] = {"timestamp": ts, "workload_id": wl.workload_id, "client_id": client}
        if client in wl.describing_clients:
            rec["workload_description"] = wl.description
        rec["request"] = request
        rec["response"] = {
            "id": f"chatcmpl-{rng.getrandbits(96):024x}",
            "object": "chat.completion",
            "created": ts + int(latency // 1000),
            "model": request["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
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

    def _fresh(self, ts: int, pii: bool) -> tuple[Workload, dict, str | None]:
        wl = self.workloads[bisect(self.cum, self.rng.random())]
        messages, message, finish, pii_kind = self._build[wl.workload_id](wl, pii)
        return wl, self._record(wl, ts, self._request(wl, messages), message, finish), pii_kind

    def _duplicate(self, ts: int, day_start: int, variant: str) -> tuple[Workload, dict, str | None] | None:
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
            other = wl.alt_system_prompt if old_req["messages"][0]["content"] == wl.system_prompt else wl.system_prompt
            req = dict(old_req, messages=[{"role": "system", "content": other}, *old_req["messages"][1:]])
        elif what == "model":
            req = dict(old_req, model=wl.alt_model if old_req["model"] == wl.model else wl.model)
        elif what == "tools":
            current = TOOLS_SENTINELS.index(old_req["tools"])
            req = dict(
                old_req,
                tools=TOOLS_SENTINELS[
                    (current + 1 + int(rng.random() * (TOOL_ORDER_VARIANTS - 1))) % TOOL_ORDER_VARIANTS
                ],
            )
        elif msg.get("tool_calls"):
            tc = msg["tool_calls"][0]
            args = json.loads(tc["function"]["arguments"])
            msg = dict(
                msg,
                tool_calls=[
                    {
                        "id": f"call_{rng.getrandbits(96):024x}",
                        "type": "function",
                        "function": {
                            "name": tc["function"]["name"],
                            "arguments": json.dumps(args, separators=(",", ":")),
                        },
                    }
                ],
            )
        elif wl.workload_id == "query_rewrite":
            msg = dict(msg, content=msg["content"].lower().replace(" (", ", ").rstrip(")"))
        else:
            msg = dict(
                msg,
                content=msg["content"]
                + pick(
                    [
                        " Is there anything else I can help you with?",
                        " Let me know if you have other questions.",
                        " Happy shopping!",
                    ]
                ),
            )
        return wl, self._record(wl, ts, req, msg, finish), pii_kind

    def _oversized(self, rec: dict) -> dict:
        if self._oversized_body is None:
            lines, size, i = [], 0, 0
            while size < OVERSIZED_BYTES:
                line = (
                    f"2026-11-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z ERROR checkout-svc "
                    f"request_id={i:08d} upstream timeout after 30000ms (retry {i % 5})\n"
                )
                lines.append(line)
                size += len(line)
                i += 1
            self._oversized_body = "".join(lines)
        messages = rec["request"]["messages"]
        head = "My checkout keeps failing, here is the full log:\n"
        messages[-1] = {"role": "user", "content": head + self._oversized_body}
        return rec

    def _malform(self, kind: str, rec: dict, wl: Workload) -> dict | str:
        rng = self.rng
        if kind == "missing_workload_id":
            del rec["workload_id"]
        elif kind == "non_numeric_timestamp":
            rec["timestamp"] = dt.datetime.fromtimestamp(rec["timestamp"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif kind == "non_chat_request":
            user = rec["request"]["messages"][-1]["content"]
            rec["request"] = {
                "model": rec["request"]["model"],
                "prompt": f"{wl.system_prompt}\n\nUser: {user}\nAssistant:",
                "max_tokens": wl.max_tokens,
            }
            resp = rec["response"]
            msg = resp["choices"][0]["message"]
            text = msg.get("content") or json.dumps([tc["function"] for tc in msg.get("tool_calls") or []])
            resp["id"] = resp["id"].replace("chatcmpl-", "cmpl-")
            resp["object"] = "text_completion"
            resp["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}]
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
            line = dumps(rec)
            return line[: rng.randint(len(line) // 4, len(line) - 2)]
        return rec

    # -- one day of records
    def day(
        self, day_start: int, count: int
    ) -> Iterator[tuple[Workload, dict | str, str | None, str | None, str | None]]:
        """Yield (workload, record dict or raw line, malformed kind, variant, pii kind)."""
        rng = self.rng
        stamps = sorted(day_start + int(rng.random() * _DAY_S) for _ in range(count))
        oversized_at = -1
        if (
            count
            and self.malformed_rate > 0
            and rng.random() < min(1.0, count * self.malformed_rate / len(MALFORMED_KINDS))
        ):
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
                    variant = "exact_duplicate" if r < exact else "near_duplicate" if r < near else "whitespace_variant"
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


def iter_days(
    n: int,
    seed: int,
    days: int,
    end_date: dt.date | str | None,
    malformed_rate: float,
    workloads: Sequence[str] | str,
    allow_invalid_json: bool = True,
    serving: Serving | None = None,
):
    """Yield (date, iterator over that day's items) for each day, oldest first; an item is
    (workload, record dict or raw line, malformed kind, variant, pii kind)."""
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
        start = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp())
        yield date, gen.day(start, counts[d])


def labeled_lines(items) -> Iterator[LabeledLine]:
    """The JSONL lines of one day's items (see ``iter_days``), with their labels."""
    for wl, rec, kind, variant, pii in items:
        line = rec if isinstance(rec, str) else dumps(rec)
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
    for _, items in iter_days(n, seed, days, end_date, malformed_rate, workloads, serving=serving):
        yield from labeled_lines(items)


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
        n,
        seed=seed,
        days=days,
        end_date=end_date,
        malformed_rate=malformed_rate,
        workloads=workloads,
        serving=serving,
    )
    return (item.line for item in labeled)
