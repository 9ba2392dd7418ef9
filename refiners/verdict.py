"""Scoring a one-token Yes/No self-check from the model's top next-token probabilities.

s = P(Yes) / (P(Yes) + P(No)), summed over the token variants ("Yes", " yes", "YES", ...). When neither
appears among the top tokens the verdict is off-format: the model answered something else (a sentence, a
refusal), and the caller decides (psr counts it as harmful by default: a judge that rambles must not let
unsafe text through).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

YES = frozenset({"yes", "y"})
NO = frozenset({"no", "n"})
MIN_MASS = 1e-4


@dataclass(frozen=True, slots=True)
class VerdictScore:
    p_yes: float
    p_no: float

    @property
    def off_format(self) -> bool:
        return self.p_yes + self.p_no < MIN_MASS

    @property
    def score(self) -> float:
        """P(Yes) / (P(Yes) + P(No)); 1.0 when off-format (the caller's policy decides what that means)."""
        total = self.p_yes + self.p_no
        return self.p_yes / total if total >= MIN_MASS else 1.0


def _normalise(token: str) -> str:
    return token.strip().strip(".,:;!\"'*").lower()


def score_yes_no(
    top: Mapping[str, float], yes: frozenset[str] = YES, no: frozenset[str] = NO
) -> VerdictScore:
    p_yes = p_no = 0.0
    for token, probability in top.items():
        word = _normalise(token)
        if word in yes:
            p_yes += probability
        elif word in no:
            p_no += probability
    return VerdictScore(p_yes, p_no)
