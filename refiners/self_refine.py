"""self_refine: SELF-style online refinement (arXiv 2310.00533; Self-Refine, Madaan et al. 2023).

The model writes language feedback on its answer, then a refined answer, for up to `rounds` rounds. It stops
early when the feedback says no change is needed, keeps the current answer when a rewrite is empty, refused
by psr, or judged worse by the model itself (an A/B one-token comparison). Rewrites are generated through the
plan's guard, so psr vets them too. The answer is buffered and sent when final.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from refiners.backend import GenerationRequest, Sampling
from refiners.base import Answer, Context, Generate, collect, last_user_text
from refiners.fence import Fence, fence_for
from refiners.ledger import BudgetExhausted, TraceStep, prompt_of
from refiners.prompts import meta_messages, template
from refiners.settings import SelfRefineSettings
from refiners.verdict import score_yes_no


def needs_no_change(feedback: str) -> bool:
    """True when the feedback's first non-empty line is the "VERDICT: OK" marker."""
    for line in feedback.splitlines():
        if line.strip():
            normalised = line.strip().strip("*# ").upper().replace(" ", "")
            return normalised.startswith("VERDICT:OK")
    return False


def without_echo(rewrite: Answer, fence: Fence) -> Answer:
    """The rewrite without the fence markers the model copied from its prompt (it often opens its reply with
    one, closes it and writes on). Cut-away tokens become hidden work, counted by their share of the text."""
    text, cut = fence.strip_echo(rewrite.text)
    if text == rewrite.text:
        return rewrite
    visible_tokens = round(rewrite.visible_tokens * len(text) / len(rewrite.text))
    return Answer(text, "stop" if cut else rewrite.finish_reason, visible_tokens)


class SelfRefine:
    name: ClassVar[str] = "self_refine"
    stage: ClassVar[Literal["editor"]] = "editor"

    def __init__(self, settings: SelfRefineSettings) -> None:
        self._settings = settings

    async def edit(self, answer: Answer, context: Context, generate: Generate) -> Answer:
        if answer.finish_reason == "content_filter" or not answer.text.strip():
            return answer
        request_text = last_user_text(context.request.messages)
        for round_number in range(1, self._settings.rounds + 1):
            try:
                improved = await self._refine_once(answer, request_text, context, generate, round_number)
            except BudgetExhausted:
                break
            if improved is None:
                break
            answer = improved
        return answer

    async def _refine_once(
        self, answer: Answer, request_text: str, context: Context, generate: Generate, round_number: int
    ) -> Answer | None:
        """The refined answer, or None to stop and keep `answer`."""
        fence = fence_for(request_text, answer.text)
        feedback_request = GenerationRequest(
            meta_messages("self_refine_feedback", fence, {"request": request_text, "answer": answer.text}),
            Sampling(max_tokens=self._settings.feedback_tokens, temperature=0.0),
        )
        feedback = await context.ledger.complete(
            "self_refine", "feedback", feedback_request, round=round_number
        )
        if needs_no_change(feedback.text):
            return None
        fence = fence_for(request_text, answer.text, feedback.text)
        rewrite_messages = meta_messages(
            "self_refine_rewrite",
            fence,
            {"request": request_text, "answer": answer.text, "feedback": feedback.text},
        )
        refined = await collect(generate(rewrite_messages, context))
        if refined.finish_reason == "content_filter":  # psr refused it: no cut may turn that into a "stop"
            return None
        refined = without_echo(refined, fence)
        if not refined.text.strip():
            return None
        if self._settings.compare and not await self._prefers_second(request_text, answer, refined, context):
            return None
        return refined

    async def _prefers_second(
        self, request_text: str, first: Answer, second: Answer, context: Context
    ) -> bool:
        """The model's own A/B judgement; an off-format judgement keeps the refinement."""
        fence = fence_for(request_text, first.text, second.text)
        request = GenerationRequest(
            meta_messages(
                "self_refine_compare",
                fence,
                {"request": request_text, "first": first.text, "second": second.text},
            ),
            Sampling(max_tokens=1, temperature=0.0),
            prefix=template("self_refine_compare", "cue"),
        )
        distribution, seconds = await context.ledger.next_token(
            "self_refine", "compare", request, self._settings.top_logprobs
        )
        verdict = score_yes_no(distribution.top, yes=frozenset({"b"}), no=frozenset({"a"}))
        keep_second = verdict.off_format or verdict.score >= 0.5
        context.ledger.trace(
            TraceStep(
                strategy="self_refine",
                step="compare",
                round=0,
                checkpoint=0,
                prompt=prompt_of(request),
                output="B" if keep_second else "A",
                elapsed_ms=seconds * 1000,
                score=round(verdict.score, 4),
                off_format=verdict.off_format,
            )
        )
        return keep_second
