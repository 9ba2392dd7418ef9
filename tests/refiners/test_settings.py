"""Each strategy's settings, built from the operator's config and the request's rounds."""

from __future__ import annotations

import dataclasses

import pytest

from refiners.config import PsrConfig, RolePlayConfig, SelfQuestionConfig, SelfRefineConfig
from refiners.settings import PsrSettings, RolePlaySettings, SelfQuestionSettings, SelfRefineSettings


def test_psr_settings_carry_every_psr_knob_and_the_rounds() -> None:
    """A knob added to PsrConfig and forgotten here would silently fall back to nothing: the test fails."""
    config = PsrConfig(
        chunk_tokens=5,
        review="answer_only",
        threshold=0.3,
        max_harmful_per_checkpoint=3,
        final_check=False,
        off_format_is_harmful=False,
        top_logprobs=7,
        fail_closed=False,
        refusal_text="No.",
    )
    settings = dataclasses.asdict(PsrSettings.of(config, rounds=6))
    assert settings.pop("rounds") == 6
    assert settings == config.model_dump()


def test_settings_are_frozen() -> None:
    settings = PsrSettings.of(PsrConfig(), rounds=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.rounds = 3  # type: ignore[misc]


def test_self_refine_reads_the_comparison_width_from_psr() -> None:
    settings = SelfRefineSettings.of(
        SelfRefineConfig(rounds=2, feedback_tokens=64, compare=False), PsrConfig(top_logprobs=5)
    )
    assert settings == SelfRefineSettings(rounds=2, feedback_tokens=64, compare=False, top_logprobs=5)


def test_shapers_settings() -> None:
    assert SelfQuestionSettings.of(SelfQuestionConfig(questions=2, answer_tokens=32)) == SelfQuestionSettings(
        2, 32
    )
    assert RolePlaySettings.of(RolePlayConfig(role_tokens=40, cache_size=0)) == RolePlaySettings(40)
