"""The package's own exceptions: every message names the thing that is wrong."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CslError",
    "DatabaseError",
    "EdgeError",
    "ProviderUnavailable",
    "ReplicaUnavailable",
    "SeedError",
    "StorageError",
]


class CslError(Exception):
    """Base class of every error raised on purpose by ``csl``."""


class ConfigError(CslError, ValueError):
    """A setting is missing or malformed; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class DatabaseError(CslError):
    """A database operation failed in a way the caller must hear about."""


class ReplicaUnavailable(DatabaseError):
    """The read replica does not answer, or lags past the configured bound."""


class StorageError(CslError):
    """A storage provider refused or failed an operation."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"storage provider {provider!r}: {message}")


class ProviderUnavailable(StorageError):
    """A storage provider cannot be reached at all."""


class EdgeError(CslError):
    """The caching edge (CDN) failed or answered unexpectedly."""


class SeedError(CslError):
    """Synthetic data could not be generated or loaded."""
