"""The package's own exceptions: every message names the thing that is wrong.

Every one derives from one of three kinds, and the CLI (``csl.cli``) and the Airflow glue
(``csl_airflow.base``) each map the kinds in one place:

- ``BadInput`` — a parameter, setting or request refused before any work (or a refusal such as
  a cap): CLI exit 2, the task fails without retry (the same input would be refused again);
- ``ProblemFound`` — the work ran and found something wrong (a failed gate, a build that did
  not validate, data that cannot be settled): CLI exit 1, the task fails without retry;
- ``Transient`` — something may work on the next try (a provider or replica down, a busy lock,
  a race with the old platform): CLI exit 1, the task is retried.
"""

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


class BadInput(CslError):
    """Refused before any work: bad input, configuration or a refusal (exit 2, no retry)."""


class ProblemFound(CslError):
    """The work ran and found a problem (exit 1, no retry)."""


class Transient(CslError):
    """May succeed when tried again (exit 1, retried)."""


class ConfigError(BadInput, ValueError):
    """A setting is missing or malformed; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class DatabaseError(ProblemFound):
    """A database operation failed in a way the caller must hear about."""


class ReplicaUnavailable(DatabaseError, Transient):
    """The read replica does not answer, or lags past the configured bound."""


class StorageError(ProblemFound):
    """A storage provider refused or failed an operation."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"storage provider {provider!r}: {message}")


class ProviderUnavailable(StorageError, Transient):
    """A storage provider cannot be reached at all."""


class EdgeError(Transient):
    """The caching edge (CDN) failed or answered unexpectedly."""


class SeedError(BadInput):
    """Synthetic data could not be generated or loaded."""
