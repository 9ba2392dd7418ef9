"""Wire models of the admin API (/admin/experiments) and of POST /v1/feedback. Pure pydantic."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.experiments.spec import VARIANT_PATTERN, ExperimentSpec


class ExperimentRecord(ExperimentSpec):
    """A definition as stored, with the version its last change got."""

    version: int


class ExperimentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ExperimentRecord]


class ExperimentPatch(BaseModel):
    """A partial change: new weights by variant name, pause or resume, a new description."""

    model_config = ConfigDict(extra="forbid")

    weights: (
        dict[Annotated[str, Field(pattern=VARIANT_PATTERN)], Annotated[float, Field(ge=0, le=1_000_000)]]
        | None
    ) = None
    paused: bool | None = None
    description: Annotated[str, Field(max_length=500)] | None = None
    expected_version: int | None = Field(
        None, description="Refuse (409) unless the experiment is still at this version."
    )


class Deleted(BaseModel):
    name: str
    version: int
    deleted: Literal[True] = True


class HistoryEntry(BaseModel):
    version: int
    action: str
    at: float
    spec: ExperimentSpec | None


class FeedbackRequest(BaseModel):
    """An outcome for a request served in an experiment: a score in [0, 1], or thumbs up (1) / down (0)."""

    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    score: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    thumbs: Literal["up", "down"] | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackRequest:
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("give exactly one of 'score' (0 to 1) and 'thumbs' (up or down)")
        return self

    @property
    def value(self) -> float:
        if self.score is not None:
            return self.score
        return 1.0 if self.thumbs == "up" else 0.0


class FeedbackRecorded(BaseModel):
    request_id: str
    experiment: str
    variant: str
    score: float
