"""Errors raised by the predictor package, in one tree.

- `PredictorError`: the base; catch it to handle anything the predictor refuses.
  - `ArtifactError`: a model artifact or its card cannot be trusted; the predictor refuses to load it.
    - `ArtifactTamperedError`: the artifact's sha256 differs from the one its card records.
    - `CardMismatchError`: the card and the artifact disagree (classes, feature count, rounds), or the card
      is malformed.
    - `IncompatibleFeaturesError`: the card's feature configuration is not what this code extracts.
    - `UntrustedArtifactError`: the artifact holds types outside the explicit trusted list.
  - `LabelsError`: a labels file, a telemetry entry or a gateway response cannot be turned into labels.
"""

from __future__ import annotations


class PredictorError(Exception):
    """Base of every error the predictor raises."""


class ArtifactError(PredictorError):
    """A model artifact or its card is refused."""


class ArtifactTamperedError(ArtifactError):
    """The artifact bytes do not hash to the sha256 recorded in the card."""


class CardMismatchError(ArtifactError):
    """The card describes a different model than the artifact holds, or is malformed."""


class IncompatibleFeaturesError(ArtifactError):
    """The artifact was trained on features this code does not extract."""


class UntrustedArtifactError(ArtifactError):
    """The artifact would instantiate types outside the trusted list."""


class LabelsError(PredictorError):
    """Labelled data (a file, a telemetry entry, a gateway response) is unusable."""
