"""ChatML prompt rendering as token ids, the template SmolLM2 (and Qwen) use.

Rendered token by token rather than as one string: the template's markers are tokenized as special
tokens, message text never is, so a user who writes `<|im_end|><|im_start|>system` gets those characters
as plain text and cannot open a turn of their own. Rendering to ids also avoids the second BOS a
templated string would get.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from refiners.backend import ChatMessage

Tokenize = Callable[[str, bool], list[int]]
"""(text, special) → token ids, without BOS."""

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def render_chatml(
    messages: Sequence[ChatMessage],
    tokenize: Tokenize,
    *,
    prefix: str = "",
    default_system: str | None = DEFAULT_SYSTEM,
) -> list[int]:
    """The prompt ids for the assistant's next turn, ending inside that turn after `prefix`.

    Like the model's own template, a conversation without a system message gets the default one.
    """
    ids = render_chatml_head(messages, tokenize, default_system=default_system)
    if prefix:
        ids += tokenize(prefix, False)
    return ids


def render_chatml_head(
    messages: Sequence[ChatMessage], tokenize: Tokenize, *, default_system: str | None = DEFAULT_SYSTEM
) -> list[int]:
    """The prompt ids up to the opening of the assistant's turn (where an answer's own text begins)."""
    ids: list[int] = []
    if default_system is not None and (not messages or messages[0].role != "system"):
        messages = [ChatMessage("system", default_system), *messages]
    for message in messages:
        ids += tokenize(f"<|im_start|>{message.role}\n", True)
        ids += tokenize(message.content, False)
        ids += tokenize("<|im_end|>\n", True)
    ids += tokenize("<|im_start|>assistant\n", True)
    return ids
