"""Pure parsing of the X-Twice-* request headers into a plan. No I/O; errors name the header at fault."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from app.errors import InvalidRequest
from app.settings import PlanSettings
from refiners.registry import REGISTRY, canonical_order

STRATEGY_HEADER = "X-Twice-Strategy"
ROUNDS_HEADER = "X-Twice-Rounds"
TRACE_HEADER = "X-Twice-Trace"

Rounds = int | Literal["auto"]


@dataclass(frozen=True, slots=True)
class Plan:
    strategies: tuple[str, ...]
    """Strategy names in canonical pipeline order; empty for plain generation."""
    rounds: Rounds
    """psr rounds asked for: a number, or `auto` for the predictor to choose."""
    trace: bool = False
    client_rounds: bool = False
    """The rounds came from the client's X-Twice-Rounds (not from the server's plan or an experiment)."""
    required: tuple[str, ...] = ()
    """The operator's required strategies (TWICE_PLAN__REQUIRED), all of them in `strategies`."""

    @property
    def applied(self) -> str:
        return ",".join(self.strategies) or "none"


# Pure functions of short strings, asked on every request with the same few values (the server's default
# plan above all): cached, bounded so that varied client headers cannot grow it. An error is not cached.
@lru_cache(maxsize=256)
def parse_strategies(value: str, source: str) -> tuple[str, ...]:
    tokens = [token.strip().lower() for token in value.split(",")]
    if tokens == ["none"]:
        return ()
    known = ", ".join(REGISTRY)
    if any(not token for token in tokens):
        raise InvalidRequest(
            f"{source} has an empty entry; use a comma list of {known}, or none.", param=source
        )
    if "none" in tokens:
        raise InvalidRequest(f"{source}: 'none' cannot be combined with strategies.", param=source)
    unknown = [token for token in tokens if token not in REGISTRY]
    if unknown:
        raise InvalidRequest(
            f"{source}: unknown strategy {unknown[0]!r}; known strategies are {known}.",
            param=source,
            code="unknown_strategy",
        )
    duplicates = sorted({token for token in tokens if tokens.count(token) > 1})
    if duplicates:
        raise InvalidRequest(f"{source}: strategy {duplicates[0]!r} is named twice.", param=source)
    return canonical_order(tokens)


@lru_cache(maxsize=256)
def parse_rounds(value: str, max_rounds: int, source: str) -> Rounds:
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    if not text.isdigit() or len(text) > 4:
        raise InvalidRequest(
            f"{source} must be 'auto' or a whole number from 0 to {max_rounds}.", param=source
        )
    rounds = int(text)
    if rounds > max_rounds:
        raise InvalidRequest(f"{source} is {rounds}; this server allows at most {max_rounds}.", param=source)
    return rounds


def parse_trace(value: str | None) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no", ""):
        return False
    raise InvalidRequest(f"{TRACE_HEADER} must be 1 or 0.", param=TRACE_HEADER)


def required_strategies(settings: PlanSettings) -> tuple[str, ...]:
    return parse_strategies(settings.required, "TWICE_PLAN__REQUIRED") if settings.required.strip() else ()


def with_required(plan: Plan, settings: PlanSettings) -> Plan:
    """`plan` with the operator's required strategies added: what a client or an experiment arm asked for
    can add to them, never remove them."""
    required = required_strategies(settings)
    if not required:
        return plan
    strategies = canonical_order(sorted({*plan.strategies, *required}))
    return replace(plan, strategies=strategies, required=required)


def parse_plan(headers: Mapping[str, str], settings: PlanSettings) -> Plan:
    """The plan of a request: its headers, else the server's default plan; the required strategies always."""
    strategy_header = headers.get(STRATEGY_HEADER.lower())
    strategies = (
        parse_strategies(strategy_header, STRATEGY_HEADER)
        if strategy_header is not None
        else parse_strategies(settings.strategies, "TWICE_PLAN__STRATEGIES")
    )
    rounds_header = headers.get(ROUNDS_HEADER.lower())
    rounds = (
        parse_rounds(rounds_header, settings.max_rounds, ROUNDS_HEADER)
        if rounds_header is not None
        else parse_rounds(settings.rounds, settings.max_rounds, "TWICE_PLAN__ROUNDS")
    )
    plan = Plan(
        strategies=strategies,
        rounds=rounds,
        trace=parse_trace(headers.get(TRACE_HEADER.lower())),
        client_rounds=rounds_header is not None,
    )
    return with_required(plan, settings)
