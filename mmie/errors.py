"""Specific, actionable exceptions. Every message says what went wrong, where, and how to fix it."""


class MMIEError(Exception):
    """Base class of every error mmie raises on purpose."""


class ConfigError(MMIEError):
    """The configuration is invalid or inconsistent."""


class DataError(MMIEError):
    """Input data cannot be read or does not satisfy the data rules (docs/method.md §1)."""


class LIDError(MMIEError):
    """A configured language-identification voter cannot be used."""


class ModelError(MMIEError):
    """A model cannot be loaded, or fails its sanity check."""


class MetricError(MMIEError):
    """A metric cannot be computed (never replaced by a stand-in value)."""


class SAEError(MMIEError):
    """A sparse autoencoder cannot be trained, loaded or used (docs/method.md §7)."""


class TrackingError(MMIEError):
    """A configured run-tracking backend (tracking.backend: wandb or mlflow) could not log a run."""
