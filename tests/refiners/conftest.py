"""Runs over the scripted backend (tests/support/scripted_backend.py, a documented fake), and each strategy's
step made for a run as the pipeline makes it."""

from __future__ import annotations

from refiners.backend import ChatMessage, Sampling
from refiners.base import Context, Run
from refiners.config import BudgetConfig, PsrConfig, RefinerConfig
from refiners.ledger import Ledger
from refiners.psr import Psr
from refiners.role_play import RoleCache, RolePlay
from refiners.self_question import SelfQuestion
from refiners.self_refine import SelfRefine
from refiners.settings import PsrSettings, RolePlaySettings, SelfQuestionSettings, SelfRefineSettings
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


def context_of(run: Run) -> Context:
    return Context(run.request(), run.ledger, run.stats)


def psr_for(run: Run) -> Psr:
    return Psr(PsrSettings.of(run.config.psr, run.rounds))


def self_refine_for(run: Run) -> SelfRefine:
    return SelfRefine(SelfRefineSettings.of(run.config.self_refine, run.config.psr))


def self_question_for(run: Run) -> SelfQuestion:
    return SelfQuestion(SelfQuestionSettings.of(run.config.self_question))


def role_play_for(run: Run, roles: RoleCache) -> RolePlay:
    return RolePlay(RolePlaySettings.of(run.config.role_play), roles)
