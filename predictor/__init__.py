"""The reflection-round predictor: how many psr rounds a request gets (see docs/predictor.md)."""

from predictor.errors import (
    ArtifactError,
    ArtifactTamperedError,
    CardMismatchError,
    IncompatibleFeaturesError,
    LabelsError,
    PredictorError,
    UntrustedArtifactError,
)
from predictor.features import FeatureConfig, FeatureVector, extract
from predictor.model import RoundPredictor

__all__ = [
    "ArtifactError",
    "ArtifactTamperedError",
    "CardMismatchError",
    "FeatureConfig",
    "FeatureVector",
    "IncompatibleFeaturesError",
    "LabelsError",
    "PredictorError",
    "RoundPredictor",
    "UntrustedArtifactError",
    "extract",
]
