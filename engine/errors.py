"""Errors a user can act on. Every message says what was wrong, where, and how to fix it."""

from __future__ import annotations


class ClinBenchError(Exception):
    """Base class: the message is shown as-is in the CLI and the dashboard."""


class DataError(ClinBenchError):
    """A dataset file or its columns cannot be used."""


class ModelUnavailable(ClinBenchError):
    """A model cannot be found, reached, or loaded."""


class ModelTooLarge(ClinBenchError):
    """A model would not fit in the memory of the chosen device."""


class SpecError(ClinBenchError):
    """An experiment spec is malformed."""


class ArtifactError(ClinBenchError):
    """A stored artifact is missing, foreign, or fails its hash check."""


class Cancelled(ClinBenchError):
    """The user cancelled the work; nothing half-written was kept."""


class DiskFull(ClinBenchError):
    """The disk ran out of space during a write; nothing half-written was kept."""


class LetterError(ClinBenchError):
    """A letter to classify holds nothing to classify (empty, no words) or is not valid Unicode."""
