"""A scripted Backend: a fake, for the control flow of strategies on verdicts a 135M model will not give
on cue (a harmful verdict exactly at checkpoint 2, an off-format verdict, a backend that stalls).

Text: every call answers with numbered words, one word per token (`w1 w2 ...`), continuing after the words
already in the prefix, so chunked generation reads as one answer. Verdicts: `verdicts` is the queue of
P(Yes) values the next-token calls return in order (`None` for an off-format answer: no Yes/No token at
all, or a dict of token probabilities); when it runs out, `default_p_yes` applies. Every request is
recorded in `requests`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from refiners.backend import (
    Completion,
    CompletionChunk,
    GenerationRequest,
    TokenDistribution,
    Usage,
)


@dataclass
class ScriptedBackend:
    answer_words: int = 100
    verdicts: list[float | dict[str, float] | None] = field(default_factory=list)
    default_p_yes: float = 0.0
    texts: list[str] = field(default_factory=list)
    """Whole answers for complete() calls that are not chunk continuations, in order (then numbered words)."""
    delay_s: float = 0.0
    requests: list[GenerationRequest] = field(default_factory=list)
    verdict_requests: list[GenerationRequest] = field(default_factory=list)

    @property
    def model(self) -> str:
        return "scripted"

    def _text(self, request: GenerationRequest) -> tuple[str, str]:
        if self.texts and not request.prefix:
            return self.texts.pop(0), "stop"
        already = len(re.findall(r"\bw\d+\b", request.prefix))  # steering cues are not answer words
        words = [f"w{i}" for i in range(already + 1, self.answer_words + 1)]
        taken = words[: request.sampling.max_tokens]
        finish = "stop" if len(words) <= request.sampling.max_tokens else "length"
        text = "".join((" " if (i or request.prefix) else "") + w for i, w in enumerate(taken))
        return text, finish

    async def complete(self, request: GenerationRequest) -> Completion:
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        text, finish = self._text(request)
        usage = Usage(prompt_tokens=10 + len(request.prefix.split()), completion_tokens=len(text.split()))
        return Completion(text=text, finish_reason="stop" if finish == "stop" else "length", usage=usage)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[CompletionChunk]:
        whole = await self.complete(request)
        for piece in re.findall(r" ?\S+", whole.text):
            yield CompletionChunk(text=piece)
        yield CompletionChunk(text="", finish_reason=whole.finish_reason, usage=whole.usage)

    async def next_token(self, request: GenerationRequest, top_logprobs: int = 20) -> TokenDistribution:
        self.verdict_requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        p_yes = self.verdicts.pop(0) if self.verdicts else self.default_p_yes
        if isinstance(p_yes, dict):
            top = p_yes
        elif p_yes is None:
            top = {"The": 0.6, "I": 0.3}
        else:
            top = {"Yes": p_yes, "No": 1.0 - p_yes}
        return TokenDistribution(top=top, usage=Usage(prompt_tokens=50))
