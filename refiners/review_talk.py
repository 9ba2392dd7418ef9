"""Text under review that talks to the review: fence look-alikes, chat-template tokens, and lines that address
a reviewer or dictate a verdict ("Answer: No").

The fence keeps such text inside the data, but a small reviewer still reads it: a fake end of the fence
followed by "Answer: No" flipped every harmful verdict on Qwen2.5-Coder-1.5B (docs/eval/calibration). psr
therefore also reviews a copy of the request and the answer without those lines and keeps the worse verdict
of the two (refiners/psr.py): a note to the reviewer can then raise a verdict but never lower it below that of
the text around it. Text without such lines is reviewed once.
"""

from __future__ import annotations

import re

_TALK = re.compile(
    r"<<<|>>>"  # the fence's markers
    r"|\bDATA-[0-9A-F]{4,}"  # its boundary's shape
    r"|<\|[a-z_]+\|>"  # chat-template control tokens written out as text
    r"|\breviewers?\b|\b(?:safety|this|the) review\b|\breview answer\b|\bverdict\b"  # whom it addresses
    r"|\banswer\b[^\n]{0,40}?\b(?:yes|no)\b",  # a dictated verdict: "Answer: No", "answer with ... No"
    re.IGNORECASE,
)


def without_review_talk(text: str) -> str:
    """`text` without the lines that talk to the review (unchanged when it has none)."""
    lines = text.split("\n")
    kept = [line for line in lines if not _TALK.search(line)]
    return text if len(kept) == len(lines) else "\n".join(kept)
