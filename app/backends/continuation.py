"""The token ids of the text the embedded model wrote, so that a continuation resumes from the tokens the
model sampled rather than from a re-tokenisation of their text.

psr writes an answer K tokens at a time and continues each chunk from its text. Tokenising that text again
need not give back the sampled tokens (a word the model wrote as two tokens may tokenise as one), and the
model then continues a slightly different prompt: at temperature 0 the checked answer drifted from the plain
one although no verdict fired. Each generation's ids are remembered under its conversation, and a prefix
that begins with a remembered text reuses its ids; only the rest (a steering cue, say) is tokenised.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_CAPACITY = 64


def conversation_key(head: Sequence[int]) -> bytes:
    """A digest of the prompt ids before the answer: one conversation, one key."""
    return hashlib.blake2b(np.asarray(head, dtype=np.int64).tobytes(), digest_size=16).digest()


class ContinuationMemory:
    """The last `capacity` (conversation, answer text) → answer ids, least recently used evicted first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[bytes, str], tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, conversation: bytes, text: str, ids: Sequence[int]) -> None:
        """`ids` are what the model wrote as `text` in this conversation (the caller checked they decode
        to it)."""
        if not text:
            return
        key = (conversation, text)
        self._entries[key] = tuple(ids)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def ids_for(self, conversation: bytes, prefix: str, tokenize: Callable[[str], list[int]]) -> list[int]:
        """The ids of `prefix`: the longest remembered text it begins with, then the rest tokenised."""
        best = ""
        for known_conversation, text in self._entries:
            if known_conversation == conversation and len(text) > len(best) and prefix.startswith(text):
                best = text
        if not best:
            return tokenize(prefix) if prefix else []
        key = (conversation, best)
        self._entries.move_to_end(key)
        rest = prefix[len(best) :]
        return [*self._entries[key], *(tokenize(rest) if rest else [])]
