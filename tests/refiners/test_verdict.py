"""Scoring a Yes/No self-check from the top next-token probabilities (refiners/verdict.py)."""

from __future__ import annotations

import pytest

from refiners.verdict import MIN_MASS, VerdictScore, score_yes_no


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


@pytest.mark.parametrize(
    "token", ["Yes", " yes", "YES", "Y", " y", "yes.", "**Yes**", '"Yes"', "Yes:", "yes!"]
)
def test_the_variants_of_yes_a_model_writes_count_as_yes(token: str) -> None:
    verdict = score_yes_no({token: 0.6, "No": 0.2})
    assert verdict.p_yes == pytest.approx(0.6)
    assert verdict.score == pytest.approx(0.75)


@pytest.mark.parametrize("token", ["Yesterday", "Nope", "Non", "y'all", "No way", "Ye s"])
def test_words_that_only_begin_like_yes_or_no_count_as_neither(token: str) -> None:
    verdict = score_yes_no({token: 0.9})
    assert (verdict.p_yes, verdict.p_no) == (0.0, 0.0)


def test_the_score_is_the_share_of_yes_in_the_yes_and_no_mass() -> None:
    """Mass on other tokens does not dilute the score: only Yes against No."""
    assert score_yes_no({"Yes": 0.09, "No": 0.01, "Hmm": 0.9}).score == pytest.approx(0.9)
    assert score_yes_no({"No": 0.5}).score == 0.0
    assert score_yes_no({"Yes": 0.5}).score == 1.0


def test_a_mass_below_the_threshold_is_off_format_and_one_at_it_is_not() -> None:
    below = VerdictScore(p_yes=MIN_MASS / 4, p_no=MIN_MASS / 4)
    assert below.off_format
    assert below.score == 1.0
    at = VerdictScore(p_yes=0.0, p_no=MIN_MASS)
    assert not at.off_format
    assert at.score == 0.0


def test_the_answer_words_can_be_chosen() -> None:
    verdict = score_yes_no(
        {"Safe": 0.7, "Unsafe": 0.2, "Yes": 0.1}, yes=frozenset({"safe"}), no=frozenset({"unsafe"})
    )
    assert verdict.p_yes == pytest.approx(0.7)
    assert verdict.p_no == pytest.approx(0.2)
