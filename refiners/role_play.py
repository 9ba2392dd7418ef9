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
from refiners.base import Context, Conversation, last_user_text
from refiners.fence import fence_for
from refiners.ledger import BudgetExhausted, TraceStep
from refiners.prompts import meta_messages
from refiners.settings import RolePlaySettings

MAX_ROLE_CHARS = 600


def clean_role(text: str) -> str:
    """The first paragraph of the generated role, bounded; empty when the model wrote nothing usable."""
    paragraph = text.strip().split("\n\n", 1)[0].strip().strip('"')
    return paragraph[:MAX_ROLE_CHARS] if len(paragraph) >= 8 else ""


def topic_key(question: str) -> str:
    return hashlib.sha256(" ".join(question.lower().split()).encode()).hexdigest()


class RoleCache:
    """Roles by question, the least recently used dropped past `capacity` (0: none kept). One per worker,
    shared by its requests."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._roles: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str) -> str | None:
        role = self._roles.get(key)
        if role is not None:
            self._roles.move_to_end(key)
        return role

    def put(self, key: str, role: str) -> None:
        if not self._capacity:
            return
        self._roles[key] = role
        while len(self._roles) > self._capacity:
            self._roles.popitem(last=False)


class RolePlay:
    name: ClassVar[str] = "role_play"
    stage: ClassVar[Literal["shaper"]] = "shaper"

    def __init__(self, settings: RolePlaySettings, roles: RoleCache) -> None:
        self._settings = settings
        self._roles = roles

    async def shape(self, messages: Conversation, context: Context) -> Conversation:
        request_text = last_user_text(messages)
        key = topic_key(request_text)
        role = self._roles.get(key)
        if role is not None:
            context.ledger.trace(TraceStep("role_play", "role", 0, 0, [], role, 0.0))
        else:
            role = await self._write_role(request_text, context)
            if role:
                self._roles.put(key, role)
        if not role:
            return messages
        # The role leads the system message; the client's own system text follows it.
        if messages and messages[0].role == "system":
            return (ChatMessage("system", f"{role}\n\n{messages[0].content}"), *messages[1:])
        return (ChatMessage("system", role), *messages)

    async def _write_role(self, request_text: str, context: Context) -> str:
        fence = fence_for(request_text)
        request = GenerationRequest(
            meta_messages("role_play_role", fence, {"request": request_text}),
            Sampling(max_tokens=self._settings.role_tokens, temperature=0.0),
        )
        try:
            written = await context.ledger.complete("role_play", "role", request)
        except BudgetExhausted:
            return ""
        return clean_role(written.text)
