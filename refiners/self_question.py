"""self_question: self-questioning before answering ("Introspective Growth", 2025).

The model writes the background questions it would need answered (default 3, at most 5), answers each
itself, and then answers the user with those Q&A pairs as context in a system message. When the budget runs
out, whatever Q&A pairs exist are used.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from refiners.backend import ChatMessage, GenerationRequest, Sampling
from refiners.base import Context, Conversation, last_user_text
from refiners.fence import fence_for
from refiners.ledger import BudgetExhausted
from refiners.prompts import meta_messages, render, template
from refiners.settings import SelfQuestionSettings

QUESTION_TOKENS = 48
_FENCE_LINE = re.compile(r"<<<|>>|\bdata-[0-9a-f]{8,}", re.IGNORECASE)
_NUMBERING = re.compile(r"^\s*(?:[-*•]|\(?\d+[.):]|Q\d*[.:)])\s*", re.IGNORECASE)


def parse_questions(text: str, limit: int, echoed: tuple[str, ...] = ()) -> list[str]:
    """Non-empty lines with their list markers stripped, at most `limit` of them. Lines that merely echo
    the prompt (the fence's marker lines, in any case, or one of `echoed`) are not questions."""
    skip = {" ".join(e.lower().split()) for e in echoed}
    questions: list[str] = []
    for line in text.splitlines():
        question = _NUMBERING.sub("", line).strip()
        if _FENCE_LINE.search(question) or " ".join(question.lower().split()) in skip:
            continue
        if len(question) > 3:
            questions.append(question[:300])
        if len(questions) == limit:
            break
    return questions


def with_system_note(messages: Conversation, note: str) -> Conversation:
    """The conversation with `note` added to its system message (a new one first if it has none)."""
    if messages and messages[0].role == "system":
        return (ChatMessage("system", f"{messages[0].content}\n\n{note}"), *messages[1:])
    return (ChatMessage("system", note), *messages)


class SelfQuestion:
    name: ClassVar[str] = "self_question"
    stage: ClassVar[Literal["shaper"]] = "shaper"

    def __init__(self, settings: SelfQuestionSettings) -> None:
        self._settings = settings

    async def shape(self, messages: Conversation, context: Context) -> Conversation:
        settings, ledger = self._settings, context.ledger
        request_text = last_user_text(messages)
        fence = fence_for(request_text)
        notes: list[str] = []
        try:
            asked = await ledger.complete(
                "self_question",
                "questions",
                GenerationRequest(
                    meta_messages(
                        "self_question_ask", fence, {"request": request_text}, count=settings.questions
                    ),
                    Sampling(max_tokens=QUESTION_TOKENS * settings.questions, temperature=0.0),
                ),
            )
            for number, question in enumerate(
                parse_questions(asked.text, settings.questions, echoed=(request_text,)), start=1
            ):
                answer = await ledger.complete(
                    "self_question",
                    "answer",
                    GenerationRequest(
                        (
                            ChatMessage("system", template("self_question_answer", "system")),
                            ChatMessage("user", render("self_question_answer", "user", question=question)),
                        ),
                        Sampling(max_tokens=settings.answer_tokens, temperature=0.0),
                    ),
                    round=number,
                )
                notes.append(f"Q{number}: {question}\nA{number}: {answer.text.strip()}")
        except BudgetExhausted:
            pass
        if not notes:
            return messages
        return with_system_note(messages, render("self_question_context", "system", notes="\n\n".join(notes)))
