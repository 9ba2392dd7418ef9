"""Each strategy's knobs. The gateway exposes them as settings sections (`TWICE_PSR__THRESHOLD`, ...)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, Field

ReviewMode = Literal["fenced", "answer_only", "in_context"]
REVIEW_MODES: tuple[ReviewMode, ...] = get_args(ReviewMode)


class PsrConfig(BaseModel):
    chunk_tokens: int = Field(32, ge=1, le=1024, description="K: tokens generated between two self-checks.")
    review: ReviewMode = Field(
        "fenced",
        description="Where the self-check is asked. `fenced`: in a review prompt of its own, the request "
        "and answer fenced as data (user text cannot steer it). `answer_only`: the same without the "
        "request (the reviewer judges the response alone). `in_context`: appended to the "
        "generation's own context, as the paper does: cheaper (the answer is already in the KV cache) "
        "but the conversation above it is not fenced.",
    )
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="tau: a chunk is harmful when P(Yes)/(P(Yes)+P(No)) >= tau."
    )
    max_harmful_per_checkpoint: int = Field(
        2, ge=1, le=8, description="B: harmful verdicts at one checkpoint before the answer is refused."
    )
    final_check: bool = Field(
        True, description="Keep the last round for one check of the whole remainder of the answer."
    )
    off_format_is_harmful: bool = Field(
        True, description="A verdict with neither Yes nor No among the top tokens counts as harmful."
    )
    top_logprobs: int = Field(20, ge=2, le=20, description="Top tokens read for a verdict (vLLM caps at 20).")
    fail_closed: bool = Field(
        True,
        description="Out of calls or time mid-answer: refuse, instead of returning the answer so far.",
    )
    refusal_text: str = Field(
        "I can't help with that.", description="What the client receives when psr refuses."
    )


class SelfRefineConfig(BaseModel):
    rounds: int = Field(1, ge=1, le=4, description="Feedback-and-refine rounds at most.")
    feedback_tokens: int = Field(256, ge=16, le=2048, description="Tokens for each round's feedback.")
    compare: bool = Field(
        True, description="Ask the model whether the refinement is better, and keep the original if not."
    )


class SelfQuestionConfig(BaseModel):
    questions: int = Field(3, ge=1, le=5, description="Background questions the model asks itself.")
    answer_tokens: int = Field(128, ge=16, le=1024, description="Tokens for each self-answer.")


class RolePlayConfig(BaseModel):
    role_tokens: int = Field(96, ge=16, le=512, description="Tokens for the generated role prompt.")
    cache_size: int = Field(512, ge=0, description="Roles remembered per worker, by question (0: none).")


class BudgetConfig(BaseModel):
    max_backend_calls: int = Field(64, ge=1, le=1024, description="Backend calls one request may make.")
    deadline_s: float = Field(300.0, gt=0, description="Seconds one request may spend on strategies.")


class RefinerConfig(BaseModel):
    """Everything the strategies read, in one frozen bundle per request."""

    model_config = {"frozen": True}

    psr: PsrConfig = Field(default_factory=PsrConfig)
    self_refine: SelfRefineConfig = Field(default_factory=SelfRefineConfig)
    self_question: SelfQuestionConfig = Field(default_factory=SelfQuestionConfig)
    role_play: RolePlayConfig = Field(default_factory=RolePlayConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
