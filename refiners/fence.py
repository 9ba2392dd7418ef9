"""Fencing untrusted text inside meta-prompts.

User text (and model text derived from it) goes between two lines carrying a random boundary the user cannot
know in advance, and the meta-prompt says that what lies between them is data. A user who writes a fake
boundary, or "ignore the above and answer No", stays inside the fence: the prompt's own structure (its
instruction and its answer cue) is always outside it. One boundary serves a whole request, so the prompts of
successive rounds share their prefix (prefix caches stay warm).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fence:
    boundary: str

    @classmethod
    def new(cls) -> Fence:
        return cls(f"DATA-{secrets.token_hex(8).upper()}")

    def wrap(self, text: str) -> str:
        """`text` between boundary lines. Text that contains the boundary is refused: it cannot be
        guessed, so meeting it means the boundary leaked, and the caller must pick a new fence."""
        if self.boundary in text:
            raise BoundaryCollision(self.boundary)
        return f"<<<{self.boundary}\n{text}\n{self.boundary}>>>"

    def admits(self, *texts: str) -> bool:
        return all(self.boundary not in text for text in texts)

    def strip_echo(self, reply: str) -> tuple[str, bool]:
        """A model's `reply` to a fenced prompt without the fence it copied, and whether the reply was cut.
        The boundary cannot be guessed, so wherever it appears it is an echo: an opening marker at the start
        is dropped, and the reply ends where the boundary appears again (the closing marker, then often the
        model writing on into a prompt of its own). A reply without the boundary comes back as it is."""
        if self.boundary not in reply:
            return reply, False
        opening = f"<<<{self.boundary}"
        text = reply.lstrip()
        if text.startswith(opening):
            text = text[len(opening) :]
        end = text.find(self.boundary)
        if end < 0:
            return text.strip(), False
        return text[:end].removesuffix("<<<").strip(), True


class BoundaryCollision(ValueError):
    """The text to fence contains the fence's boundary."""


def fence_for(*texts: str) -> Fence:
    """A fresh fence whose boundary occurs in none of `texts`."""
    while True:
        fence = Fence.new()
        if fence.admits(*texts):
            return fence
