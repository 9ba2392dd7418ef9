"""psr: Progressive Self-Reflection (Phan, Li, Lei, EMNLP Findings 2025, arXiv 2510.01270).

The answer is generated K tokens at a time. While reflection rounds remain, each chunk is held back and the
model is asked, in a review prompt of its own where the request and the answer so far are fenced data,
whether the answer so far is harmful; one token is requested and scored s = P(Yes) / (P(Yes) + P(No)).
- safe (s < tau): the chunk joins the answer and is released to the client;
- harmful: the chunk is discarded (backtrack to the last safe checkpoint) and regenerated after a hidden
  self-correction cue. The answer ends in a refusal with finish_reason "content_filter" after B harmful
  verdicts at one checkpoint, or when no round is left to check the regeneration: text generated after a
  harmful verdict is never released unchecked.
With `final_check`, the last round covers the whole rest of the answer. Once the rounds are spent with every
verdict safe, the rest streams unchecked, so N = 0 is exactly plain generation. Each guarded generation (the
answer, and each self_refine rewrite) gets the request's N rounds of its own. Out of calls or time, psr
fails closed. Text the client already received is never taken back: a refusal follows it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

from refiners.backend import ChatMessage, GenerationRequest, Sampling
from refiners.base import Context, Conversation, Finished, GenerationEvent, TextPiece, last_user_text
from refiners.fence import BoundaryCollision, Fence, fence_for
from refiners.generation import answer_request, stream_answer
from refiners.ledger import BudgetExhausted, TraceStep, prompt_of
from refiners.prompts import meta_messages, render, template
from refiners.review_talk import without_review_talk
from refiners.settings import PsrSettings
from refiners.verdict import score_yes_no


@dataclass
class _Progress:
    """How far one guarded answer has got."""

    request_text: str
    fence: Fence = field(default_factory=Fence.new)
    visible: str = ""
    """What the client has received."""
    continued_from: str = ""
    """What the model continues: the visible text plus any hidden steering cue."""
    visible_tokens: int = 0
    checkpoint: int = 1
    harmful_here: int = 0
    rounds_used: int = 0
    """Rounds this generation has used (the request's total is in `RunStats.rounds_used`)."""

    def accept(self, text: str, tokens: int) -> None:
        self.visible += text
        self.continued_from += text
        self.visible_tokens += tokens
        self.checkpoint += 1
        self.harmful_here = 0


class Psr:
    name: ClassVar[str] = "psr"
    stage: ClassVar[Literal["guard"]] = "guard"

    def __init__(self, settings: PsrSettings) -> None:
        self._settings = settings

    def generate(self, messages: Conversation, context: Context) -> AsyncIterator[GenerationEvent]:
        return self._generate(messages, context)

    async def _generate(self, messages: Conversation, context: Context) -> AsyncIterator[GenerationEvent]:
        # The fence guards the client's own request, whatever conversation this generation answers.
        progress = _Progress(request_text=last_user_text(context.request.messages))
        progress.fence = fence_for(progress.request_text)
        while True:
            remaining = context.request.sampling.max_tokens - progress.visible_tokens
            if remaining <= 0:
                yield Finished("length", progress.visible_tokens)
                return
            if progress.rounds_used >= self._settings.rounds:
                async for event in self._unchecked_rest(messages, remaining, progress, context):
                    yield event
                return
            async for event in self._checkpoint(messages, remaining, progress, context):
                yield event
                if isinstance(event, Finished):
                    return

    async def _checkpoint(
        self, messages: Conversation, remaining: int, progress: _Progress, context: Context
    ) -> AsyncIterator[GenerationEvent]:
        """Generate one chunk and check it: release it, backtrack, or refuse. Ends with Finished when done."""
        settings, ledger, stats = self._settings, context.ledger, context.stats
        final = settings.rounds - progress.rounds_used == 1 and settings.final_check
        size = remaining if final else min(settings.chunk_tokens, remaining)
        request = GenerationRequest(
            messages,
            replace(context.request.sampling, max_tokens=size),
            prefix=progress.continued_from,
            extra=context.request.extra,
        )
        try:
            chunk = await ledger.complete("generate", "generate", request, checkpoint=progress.checkpoint)
            if not chunk.text:
                yield Finished(chunk.finish_reason, progress.visible_tokens)
                return
            harmful = await self._judge(progress, messages, chunk.text, context)
        except BudgetExhausted:
            for event in self._out_of_budget(context, progress.visible, progress.visible_tokens):
                yield event
            return
        if harmful:
            stats.backtracks += 1
            ledger.observer.backtrack()
            ledger.mark_last_discarded("generate")
            progress.harmful_here += 1
            no_round_to_check_a_regeneration = progress.rounds_used >= settings.rounds
            if (
                progress.harmful_here >= settings.max_harmful_per_checkpoint
                or no_round_to_check_a_regeneration
            ):
                yield self._refusal(context, progress.visible, "harmful")
                yield Finished("content_filter", progress.visible_tokens)
            elif progress.harmful_here == 1:
                progress.continued_from += template("psr_steer", "cue")
            return
        progress.accept(chunk.text, chunk.usage.completion_tokens)
        yield TextPiece(chunk.text)
        if chunk.finish_reason == "stop" or final:
            yield Finished(chunk.finish_reason, progress.visible_tokens)

    def _unchecked_rest(
        self, messages: Conversation, remaining: int, progress: _Progress, context: Context
    ) -> AsyncIterator[GenerationEvent]:
        """The rounds are spent and every verdict was safe: the rest streams as plain generation does.
        Running out of calls or time here fails closed like every other step of psr."""
        sampling = replace(context.request.sampling, max_tokens=remaining)
        request = (
            GenerationRequest(messages, sampling, prefix=progress.continued_from, extra=context.request.extra)
            if progress.continued_from
            else answer_request(messages, sampling, context.request.extra)
        )
        return stream_answer(
            request,
            context.ledger,
            visible=progress.visible,
            visible_tokens=progress.visible_tokens,
            on_budget_spent=lambda visible, tokens: self._out_of_budget(context, visible, tokens),
        )

    async def _judge(self, progress: _Progress, messages: Conversation, chunk: str, context: Context) -> bool:
        """One round: the answer so far reviewed in each of its views (review_views); harmful when any view
        is. Each view is one verdict call, traced on its own."""
        settings, ledger = self._settings, context.ledger
        fence, request_text, checkpoint = progress.fence, progress.request_text, progress.checkpoint
        answer_text = (
            progress.continued_from + chunk if settings.review == "in_context" else progress.visible + chunk
        )
        try:
            views = review_views(settings.review, messages, request_text, answer_text, fence)
        except BoundaryCollision:
            return True  # the boundary leaked into the answer: fail closed
        round_number = context.stats.rounds_used + 1
        harmful = off_format = False
        for view, request in enumerate(views):
            distribution, seconds = await ledger.next_token("psr", "verdict", request, settings.top_logprobs)
            verdict = score_yes_no(distribution.top)
            this_harmful = (
                settings.off_format_is_harmful if verdict.off_format else verdict.score >= settings.threshold
            )
            harmful, off_format = harmful or this_harmful, off_format or verdict.off_format
            top_token = max(distribution.top, key=distribution.top.__getitem__, default="")
            ledger.trace(
                TraceStep(
                    strategy="psr",
                    step="verdict" if view == 0 else "verdict_without_review_talk",
                    round=round_number,
                    checkpoint=checkpoint,
                    prompt=prompt_of(request),
                    output=top_token,
                    elapsed_ms=seconds * 1000,
                    score=round(verdict.score, 4),
                    harmful=this_harmful,
                    off_format=verdict.off_format,
                )
            )
        progress.rounds_used += 1
        context.stats.round_judged(progress.rounds_used, harmful=harmful)
        ledger.observer.verdict("off_format" if off_format else ("harmful" if harmful else "safe"))
        return harmful

    def _refusal(self, context: Context, visible: str, reason: str) -> TextPiece:
        context.stats.refused = True
        context.ledger.observer.refusal(reason)
        separator = "\n\n" if visible and not visible[-1].isspace() else ""
        return TextPiece(separator + self._settings.refusal_text)

    def _out_of_budget(self, context: Context, visible: str, visible_tokens: int) -> list[GenerationEvent]:
        """Out of calls or time mid-answer: refuse (fail closed) or stop where the answer is (fail open)."""
        if self._settings.fail_closed:
            return [self._refusal(context, visible, "budget"), Finished("content_filter", visible_tokens)]
        return [Finished("length", visible_tokens)]


def review_views(
    review: str, messages: Conversation, request_text: str, answer_text: str, fence: Fence
) -> tuple[GenerationRequest, ...]:
    """The self-checks one round asks (also what `twice calibrate` scores): the texts as they are and, in the
    fenced and answer-only reviews, the texts without the lines that talk to the review when they have any
    (refiners/review_talk.py). The round's verdict is the worse of them."""
    as_is = review_request(review, messages, request_text, answer_text, fence)
    if review == "in_context":
        return (as_is,)
    request_quiet, answer_quiet = without_review_talk(request_text), without_review_talk(answer_text)
    if request_quiet == request_text and answer_quiet == answer_text:
        return (as_is,)
    return (as_is, review_request(review, messages, request_quiet, answer_quiet, fence))


def review_request(
    review: str, messages: Conversation, request_text: str, answer_text: str, fence: Fence
) -> GenerationRequest:
    """The self-check of `answer_text` in the given review mode (also what `twice calibrate` scores)."""
    if review == "in_context":
        return _in_context_review(messages, answer_text, fence)
    if review == "answer_only":
        return _answer_review(answer_text, fence)
    return _fenced_review(request_text, answer_text, fence)


def _fenced_review(request_text: str, answer_text: str, fence: Fence) -> GenerationRequest:
    """The self-check in a prompt of its own: the request and the answer so far are fenced data."""
    return GenerationRequest(
        meta_messages("psr_verdict", fence, {"request": request_text, "answer": answer_text}),
        Sampling(max_tokens=1, temperature=0.0),
        prefix=template("psr_verdict", "cue"),
    )


def _answer_review(answer_text: str, fence: Fence) -> GenerationRequest:
    """The fenced self-check without the request: only the answer so far is data to review."""
    return GenerationRequest(
        meta_messages("psr_verdict_answer", fence, {"answer": answer_text}),
        Sampling(max_tokens=1, temperature=0.0),
        prefix=template("psr_verdict_answer", "cue"),
    )


def _in_context_review(messages: Conversation, answer_text: str, fence: Fence) -> GenerationRequest:
    """The self-check appended to the generation's own context (the paper's setting): the prompt shares
    everything up to the end of the answer with the generation, so only the question is new work. The
    question carries the request's random marker, which no text above it can contain."""
    if fence.boundary in answer_text:
        raise BoundaryCollision(fence.boundary)
    question = render("psr_reflect", "user", marker=fence.boundary)
    return GenerationRequest(
        (*messages, ChatMessage("assistant", answer_text), ChatMessage("user", question)),
        Sampling(max_tokens=1, temperature=0.0),
        prefix=template("psr_reflect", "cue"),
    )
