"""What a psr request's prefill costs across N vLLM replicas, with and without per-request affinity.

    .venv/bin/python -m bench.affinity [--requests 12] [--rounds 4] [--chunk-tokens 8] [--max-tokens 64]

Each configuration gets fresh loopback vLLM stand-ins (tests/support/vllm_stub.py; each keeps its own prefix
cache and reports `usage.prompt_tokens_details.cached_tokens` in 16-token blocks, as vLLM's automatic prefix
caching does) and runs the same psr requests in process through `refiners.pipeline` over `VllmBackend` with
`vllm.upstreams`:
- affinity: every call carries the request's routing key, so the pool's consistent hashing keeps a request on
  one replica;
- no affinity: every call carries a fresh random key, so each lands on a replica at random, as a plain
  Kubernetes Service spreads connections. (Strict round-robin would flatter it: psr alternates generation and
  verdict calls, so with two replicas each kind would keep to one replica.)
Each request's prompt starts with its own text, so requests share no prefix with one another: what is
measured is per-request affinity (sharing a system prompt across requests is what the router's prefix-aware
routing is for). Prefill tokens = prompt tokens - cached tokens, summed over every call of every request. The
stand-in's tokenizer is whitespace words, so absolute numbers are small: compare the columns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from app.backends.vllm import VllmBackend
from app.settings import VllmSettings
from refiners.backend import (
    ChatMessage,
    Completion,
    CompletionChunk,
    GenerationRequest,
    Sampling,
    TokenDistribution,
)
from refiners.base import Run, collect
from refiners.config import BudgetConfig, PsrConfig, RefinerConfig
from refiners.ledger import Ledger
from refiners.pipeline import run_plan
from refiners.registry import build_strategies
from tests.support.vllm_stub import StubState, running_stub

CONTEXT = (
    "Answer for a reader of a public library in plain language, cite no sources you cannot name, keep the "
    "answer short and structured, and say so when the question cannot be answered from what is known. "
) * 3
QUESTIONS = (
    "How do tides work?",
    "Why did the Roman Republic fall?",
    "What makes a sonnet different from a haiku?",
    "How does a vaccine train the immune system?",
    "Why is the sky blue during the day and red at sunset?",
    "What caused the Dust Bowl in the 1930s?",
)


class ScatteringBackend:
    """Gives every call a fresh routing key: no two calls of a request are kept together."""

    def __init__(self, inner: VllmBackend) -> None:
        self._inner = inner

    @property
    def model(self) -> str:
        return self._inner.model

    async def complete(self, request: GenerationRequest) -> Completion:
        return await self._inner.complete(replace(request, routing_key=uuid.uuid4().hex))

    def stream(self, request: GenerationRequest) -> AsyncIterator[CompletionChunk]:
        return self._inner.stream(replace(request, routing_key=uuid.uuid4().hex))

    async def next_token(self, request: GenerationRequest, top_logprobs: int = 20) -> TokenDistribution:
        return await self._inner.next_token(replace(request, routing_key=uuid.uuid4().hex), top_logprobs)


@dataclass
class Cost:
    calls: int = 0
    prompt: int = 0
    cached: int = 0

    @property
    def prefill(self) -> int:
        return self.prompt - self.cached


async def run_config(replicas: int, affinity: bool, args: argparse.Namespace) -> Cost:
    config = RefinerConfig(
        psr=PsrConfig(chunk_tokens=args.chunk_tokens), budget=BudgetConfig(max_backend_calls=256)
    )
    strategies = build_strategies(config)
    cost = Cost()
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(running_stub(StubState(keep_received=False)))[0] for _ in range(replicas)]
        backend = VllmBackend(VllmSettings(upstreams=urls, model="stub-model", health_interval_s=60))
        await backend.start()
        try:
            for index in range(args.requests):
                question = QUESTIONS[index % len(QUESTIONS)]
                ledger = Ledger(
                    backend=backend if affinity else ScatteringBackend(backend),
                    budget=config.budget,
                    routing_key=f"chatcmpl-bench-{index}",
                    model="stub-model",
                )
                run = Run(
                    messages=(ChatMessage("user", f"Request {index}: {question} {CONTEXT}"),),
                    sampling=Sampling(max_tokens=args.max_tokens),
                    config=config,
                    ledger=ledger,
                    rounds=args.rounds,
                )
                await collect(run_plan(["psr"], strategies, run))
                cost.calls += ledger.calls
                cost.prompt += ledger.usage.prompt_tokens
                cost.cached += ledger.usage.cached_tokens
        finally:
            await backend.close()
    return cost


async def main(args: argparse.Namespace) -> None:
    print(f"psr, {args.rounds} rounds, chunk {args.chunk_tokens} tokens, {args.requests} requests per row\n")
    print("| replicas | calls | prefill tokens, no affinity | prefill tokens, affinity | saved |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for replicas in args.replicas:
        scattered = await run_config(replicas, affinity=False, args=args)
        kept = await run_config(replicas, affinity=True, args=args)
        saved = 1 - kept.prefill / scattered.prefill if scattered.prefill else 0.0
        print(
            f"| {replicas} | {kept.calls} | {scattered.prefill} ({scattered.cached} cached) "
            f"| {kept.prefill} ({kept.cached} cached) | {saved:.0%} |"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--chunk-tokens", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
