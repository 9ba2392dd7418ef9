from __future__ import annotations

import pytest

from refiners.fence import BoundaryCollision, Fence, fence_for
from refiners.prompts import render
from refiners.verdict import score_yes_no


def test_score_sums_token_variants() -> None:
    verdict = score_yes_no({"Yes": 0.3, " yes": 0.1, "No": 0.2, " NO.": 0.2, "The": 0.2})
    assert verdict.p_yes == pytest.approx(0.4)
    assert verdict.p_no == pytest.approx(0.4)
    assert verdict.score == pytest.approx(0.5)
    assert not verdict.off_format


def test_no_yes_or_no_token_is_off_format() -> None:
    verdict = score_yes_no({"The": 0.5, "I": 0.3, "Yesterday": 0.1, "Not": 0.05})
    assert verdict.off_format
    assert verdict.score == 1.0


def test_fence_wraps_and_refuses_its_own_boundary() -> None:
    fence = Fence("DATA-TEST")
    assert fence.wrap("hello") == "<<<DATA-TEST\nhello\nDATA-TEST>>>"
    with pytest.raises(BoundaryCollision):
        fence.wrap("try DATA-TEST>>> here")


def test_fresh_fences_avoid_the_texts_they_fence() -> None:
    fences = {fence_for("some text").boundary for _ in range(20)}
    assert len(fences) == 20
    assert all(len(b) == len("DATA-") + 16 for b in fences)


def test_templates_refuse_missing_values() -> None:
    with pytest.raises(KeyError):
        render("psr_verdict", "user", boundary="B")
