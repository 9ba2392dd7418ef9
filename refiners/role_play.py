"""role_play: role-play self-prompting (Kong et al., NAACL 2024, arXiv 2308.07702; Self-Prompt Tuning,
arXiv 2407.08995).

The model writes an expert role prompt for the question (one extra call), then answers with that role as its
system message. Roles are cached per worker by the normalised question, so a repeated question costs no call.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import ClassVar, Literal

from refiners.backend import ChatMessage, GenerationRequest, Sampling
from refiners.base import Conversation, Run, last_user_text
from refiners.config import RefinerConfig
from refiners.fence import fence_for
from refiners.ledger import BudgetExhausted, TraceStep
from refiners.prompts import meta_messages

MAX_ROLE_CHARS = 600


def clean_role(text: str) -> str:
    """The first paragraph of the generated role, bounded; empty when the model wrote nothing usable."""
    paragraph = text.strip().split("\n\n", 1)[0].strip().strip('"')
    return paragraph[:MAX_ROLE_CHARS] if len(paragraph) >= 8 else ""


def topic_key(question: str) -> str:
    return hashlib.sha256(" ".join(question.lower().split()).encode()).hexdigest()


class RolePlay:
    name: ClassVar[str] = "role_play"
    stage: ClassVar[Literal["shaper"]] = "shaper"

    def __init__(self, config: RefinerConfig | None = None) -> None:
        self._capacity = (config or RefinerConfig()).role_play.cache_size
        self._roles: OrderedDict[str, str] = OrderedDict()

    async def shape(self, messages: Conversation, run: Run) -> Conversation:
        request_text = last_user_text(messages)
        key = topic_key(request_text)
        role = self._roles.get(key)
        if role is not None:
            self._roles.move_to_end(key)
            run.ledger.trace(TraceStep("role_play", "role", 0, 0, [], role, 0.0))
        else:
            role = await self._write_role(request_text, run)
            if role and self._capacity:
                self._roles[key] = role
                while len(self._roles) > self._capacity:
                    self._roles.popitem(last=False)
        if not role:
            return messages
        # The role leads the system message; the client's own system text follows it.
        if messages and messages[0].role == "system":
            return (ChatMessage("system", f"{role}\n\n{messages[0].content}"), *messages[1:])
        return (ChatMessage("system", role), *messages)

    @staticmethod
    async def _write_role(request_text: str, run: Run) -> str:
        fence = fence_for(request_text)
        request = GenerationRequest(
            meta_messages("role_play_role", fence, {"request": request_text}),
            Sampling(max_tokens=run.config.role_play.role_tokens, temperature=0.0),
        )
        try:
            written = await run.ledger.complete("role_play", "role", request)
        except BudgetExhausted:
            return ""
        return clean_role(written.text)
