"""Each strategy's settings for one request, made once with the request's plan (refiners/pipeline.py).

The operator's knobs (`refiners/config.py`, the gateway's `TWICE_*` sections) and what varies per request
(psr's granted rounds) meet here as frozen values: a strategy is handed its own settings and reads no other.
"""

from __future__ import annotations

from dataclasses import dataclass

from refiners.config import (
    PsrConfig,
    ReviewMode,
    RolePlayConfig,
    SelfQuestionConfig,
    SelfRefineConfig,
)


@dataclass(frozen=True, slots=True)
class PsrSettings:
    rounds: int
    """N: reflection rounds granted to each guarded generation of the request."""
    chunk_tokens: int
    review: ReviewMode
    threshold: float
    max_harmful_per_checkpoint: int
    final_check: bool
    off_format_is_harmful: bool
    top_logprobs: int
    fail_closed: bool
    refusal_text: str

    @classmethod
    def of(cls, config: PsrConfig, rounds: int) -> PsrSettings:
        return cls(
            rounds=rounds,
            chunk_tokens=config.chunk_tokens,
            review=config.review,
            threshold=config.threshold,
            max_harmful_per_checkpoint=config.max_harmful_per_checkpoint,
            final_check=config.final_check,
            off_format_is_harmful=config.off_format_is_harmful,
            top_logprobs=config.top_logprobs,
            fail_closed=config.fail_closed,
            refusal_text=config.refusal_text,
        )


@dataclass(frozen=True, slots=True)
class SelfRefineSettings:
    rounds: int
    feedback_tokens: int
    compare: bool
    top_logprobs: int
    """Top tokens read for the A/B comparison: psr's setting, as the backend's cap is the same."""

    @classmethod
    def of(cls, config: SelfRefineConfig, psr: PsrConfig) -> SelfRefineSettings:
        return cls(config.rounds, config.feedback_tokens, config.compare, psr.top_logprobs)


@dataclass(frozen=True, slots=True)
class SelfQuestionSettings:
    questions: int
    answer_tokens: int

    @classmethod
    def of(cls, config: SelfQuestionConfig) -> SelfQuestionSettings:
        return cls(config.questions, config.answer_tokens)


@dataclass(frozen=True, slots=True)
class RolePlaySettings:
    role_tokens: int

    @classmethod
    def of(cls, config: RolePlayConfig) -> RolePlaySettings:
        return cls(config.role_tokens)
