from __future__ import annotations

from refiners.backend import ChatMessage, Sampling
from refiners.base import Run
from refiners.config import BudgetConfig, PsrConfig, RefinerConfig
from refiners.ledger import Ledger
from tests.support.scripted_backend import ScriptedBackend

QUESTION = (ChatMessage("user", "Explain photosynthesis."),)


def make_run(
    backend: ScriptedBackend,
    *,
    rounds: int = 4,
    max_tokens: int = 64,
    psr: PsrConfig | None = None,
    budget: BudgetConfig | None = None,
    messages: tuple[ChatMessage, ...] = QUESTION,
    config: RefinerConfig | None = None,
) -> Run:
    config = config or RefinerConfig(psr=psr or PsrConfig(chunk_tokens=8), budget=budget or BudgetConfig())
    ledger = Ledger(backend=backend, budget=config.budget, tracing=True)
    return Run(
        messages=messages,
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0),
        config=config,
        ledger=ledger,
        rounds=rounds,
    )
