"""One validated settings object for every ``csl`` entry point.

Sources, first match wins: explicit keyword arguments (the Airflow plugin passes values
it resolved from connections), then the platform's own environment names
(``DATABASE_URL``, ``DATABASE_READ_REPLICA_URL``, ``STORAGE_PROVIDER``, ``MINIO_*``,
``S3_*``, ``SUPABASE_*``, ``CDN_*``). Malformed values are refused when the settings are
built; a missing value is refused when the part that needs it is used, so ``csl migrate``
does not ask for storage credentials. Secrets never appear in ``repr`` or logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from csl.errors import ConfigError

__all__ = [
    "Secret",
    "DatabaseSettings",
    "StorageProviderSettings",
    "EdgeSettings",
    "Settings",
    "load_env_file",
    "mask_url",
]

STORAGE_KINDS = ("minio", "s3", "supabase")
CDN_PROVIDERS = ("cloudflare", "cloudfront", "azure", "varnish")


class Secret:
    """A string that refuses to be printed: ``repr``/``str`` show ``'***'``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


def _postgres_url(setting: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            setting, f"expected a postgresql://user:password@host:port/dbname URL, got scheme {parts.scheme!r}"
        )
    if not parts.hostname or not parts.path.strip("/"):
        raise ConfigError(setting, "expected a postgresql://user:password@host:port/dbname URL with host and database")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ConfigError(setting, f"malformed port ({exc})") from None
    return value


def _http_url(setting: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(setting, f"expected an http(s)://host[:port] URL, got {value!r}")
    try:
        parts.port  # noqa: B018
    except ValueError as exc:
        raise ConfigError(setting, f"malformed port ({exc})") from None
    return value.rstrip("/")


def _bool(setting: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(setting, f"expected true or false, got {value!r}")


def _number(setting: str, value: str, *, minimum: float = 0) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(setting, f"expected a number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(setting, f"expected a number >= {minimum}, got {value!r}")
    return number


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    """Where the platform database lives; the replica is optional."""

    primary_url: str
    replica_url: str | None = None
    max_replica_lag_s: float = 30.0
    connect_timeout_s: int = 3
    application_name: str = "csl"

    def __post_init__(self) -> None:
        _postgres_url("DATABASE_URL", self.primary_url)
        if self.replica_url:
            _postgres_url("DATABASE_READ_REPLICA_URL", self.replica_url)
        if self.max_replica_lag_s < 0:
            raise ConfigError("CSL_MAX_REPLICA_LAG_S", "expected a number >= 0")

    def __repr__(self) -> str:
        replica = mask_url(self.replica_url) if self.replica_url else None
        return (
            f"DatabaseSettings(primary_url={mask_url(self.primary_url)!r}, replica_url={replica!r}, "
            f"max_replica_lag_s={self.max_replica_lag_s})"
        )


@dataclass(frozen=True, kw_only=True)
class StorageProviderSettings:
    """One S3-compatible provider: MinIO, AWS S3 or Supabase Storage's S3 endpoint."""

    name: str  # the role it plays: "primary" or "fallback"
    kind: str  # minio | s3 | supabase
    bucket: str
    access_key: Secret = field(repr=False)
    secret_key: Secret = field(repr=False)
    endpoint_url: str | None = None  # None = AWS's own endpoint for the region
    region: str = "us-east-1"
    force_path_style: bool = True
    public_bucket: bool = False

    def __post_init__(self) -> None:
        prefix = self.kind.upper()
        if self.kind not in STORAGE_KINDS:
            raise ConfigError("STORAGE_PROVIDER", f"expected one of {', '.join(STORAGE_KINDS)}, got {self.kind!r}")
        if self.endpoint_url is not None:
            _http_url(f"{prefix}_ENDPOINT", self.endpoint_url)
        if not self.bucket:
            raise ConfigError(f"{prefix}_BUCKET", "must not be empty")


@dataclass(frozen=True, kw_only=True)
class EdgeSettings:
    """The CDN in front of the public audio bucket (the local Varnish edge in dev/test)."""

    enabled: bool = False
    provider: str = "varnish"
    base_url: str | None = None
    cache_ttl_s: int = 86400

    def __post_init__(self) -> None:
        if self.provider not in CDN_PROVIDERS:
            raise ConfigError("CDN_PROVIDER", f"expected one of {', '.join(CDN_PROVIDERS)}, got {self.provider!r}")
        if self.base_url is not None:
            _http_url("CDN_BASE_URL", self.base_url)
        if self.enabled and not self.base_url:
            raise ConfigError("CDN_BASE_URL", "required when CDN_ENABLED is true")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything ``csl`` needs, validated. Missing parts raise when first needed."""

    database: DatabaseSettings | None = None
    storage: tuple[StorageProviderSettings, ...] = ()
    edge: EdgeSettings = field(default_factory=EdgeSettings)

    def require_database(self) -> DatabaseSettings:
        if self.database is None:
            raise ConfigError("DATABASE_URL", "not set; expected postgresql://user:password@host:port/dbname")
        return self.database

    def provider(self, name: str) -> StorageProviderSettings:
        for provider in self.storage:
            if provider.name == name:
                return provider
        if not self.storage:
            raise ConfigError("STORAGE_PROVIDER", "not set; expected one of " + ", ".join(STORAGE_KINDS))
        known = ", ".join(p.name for p in self.storage)
        raise ConfigError("storage provider", f"no provider named {name!r} (configured: {known})")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **explicit: object) -> Settings:
        """Build from the platform's env names; ``explicit`` parts win over the environment."""
        env = os.environ if env is None else env
        database = explicit.pop("database", None) or _database_from_env(env)
        storage = explicit.pop("storage", None)
        if storage is None:
            storage = _storage_from_env(env)
        edge = explicit.pop("edge", None) or _edge_from_env(env)
        if explicit:
            raise TypeError(f"unknown settings: {', '.join(sorted(explicit))}")
        return cls(database=database, storage=tuple(storage), edge=edge)


def _get(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    return default if value is None or value == "" else value


def _database_from_env(env: Mapping[str, str]) -> DatabaseSettings | None:
    url = _get(env, "DATABASE_URL")
    if url is None:
        return None
    lag = _get(env, "CSL_MAX_REPLICA_LAG_S")
    return DatabaseSettings(
        primary_url=url,
        replica_url=_get(env, "DATABASE_READ_REPLICA_URL"),
        max_replica_lag_s=_number("CSL_MAX_REPLICA_LAG_S", lag) if lag else 30.0,
    )


def _required(env: Mapping[str, str], name: str, why: str) -> str:
    value = _get(env, name)
    if value is None:
        raise ConfigError(name, f"not set; required {why}")
    return value


def provider_from_env(env: Mapping[str, str], *, name: str, kind: str) -> StorageProviderSettings:
    """One provider from the platform's env names for its kind."""
    region = _get(env, "AWS_REGION", "us-east-1")
    why = f"because STORAGE_{'PROVIDER' if name == 'primary' else 'FALLBACK_PROVIDER'}={kind}"
    if kind == "minio":
        return StorageProviderSettings(
            name=name,
            kind=kind,
            endpoint_url=_http_url("MINIO_ENDPOINT", _required(env, "MINIO_ENDPOINT", why)),
            access_key=Secret(_required(env, "MINIO_ACCESS_KEY", why)),
            secret_key=Secret(_required(env, "MINIO_SECRET_KEY", why)),
            bucket=_get(env, "MINIO_BUCKET", "cultural-audio"),
            region=region,
            force_path_style=_bool("MINIO_FORCE_PATH_STYLE", _get(env, "MINIO_FORCE_PATH_STYLE", "true")),
            public_bucket=_bool("MINIO_PUBLIC_BUCKET", _get(env, "MINIO_PUBLIC_BUCKET", "false")),
        )
    if kind == "s3":
        endpoint = _get(env, "S3_ENDPOINT")
        return StorageProviderSettings(
            name=name,
            kind=kind,
            endpoint_url=_http_url("S3_ENDPOINT", endpoint) if endpoint else None,
            access_key=Secret(_required(env, "AWS_ACCESS_KEY_ID", why)),
            secret_key=Secret(_required(env, "AWS_SECRET_ACCESS_KEY", why)),
            bucket=_required(env, "S3_BUCKET", why),
            region=region,
            force_path_style=_bool("S3_FORCE_PATH_STYLE", _get(env, "S3_FORCE_PATH_STYLE", "true" if endpoint else "false")),
            public_bucket=_bool("S3_PUBLIC_BUCKET", _get(env, "S3_PUBLIC_BUCKET", "false")),
        )
    if kind == "supabase":
        base = _http_url("SUPABASE_URL", _required(env, "SUPABASE_URL", why))
        endpoint = _get(env, "SUPABASE_S3_ENDPOINT") or f"{base}/storage/v1/s3"
        return StorageProviderSettings(
            name=name,
            kind=kind,
            endpoint_url=_http_url("SUPABASE_S3_ENDPOINT", endpoint),
            access_key=Secret(_required(env, "SUPABASE_S3_ACCESS_KEY_ID", why)),
            secret_key=Secret(_required(env, "SUPABASE_S3_SECRET_ACCESS_KEY", why)),
            bucket=_get(env, "SUPABASE_AUDIO_BUCKET", "audio-samples"),
            region=_get(env, "SUPABASE_S3_REGION", region),
            force_path_style=True,
        )
    setting = "STORAGE_PROVIDER" if name == "primary" else "STORAGE_FALLBACK_PROVIDER"
    raise ConfigError(setting, f"expected one of {', '.join(STORAGE_KINDS)}, got {kind!r}")


def _storage_from_env(env: Mapping[str, str]) -> list[StorageProviderSettings]:
    providers = []
    primary = _get(env, "STORAGE_PROVIDER")
    if primary:
        providers.append(provider_from_env(env, name="primary", kind=primary))
    fallback = _get(env, "STORAGE_FALLBACK_PROVIDER")
    if fallback:
        if fallback == primary:
            raise ConfigError("STORAGE_FALLBACK_PROVIDER", f"must differ from STORAGE_PROVIDER (both {primary!r})")
        providers.append(provider_from_env(env, name="fallback", kind=fallback))
    return providers


def _edge_from_env(env: Mapping[str, str]) -> EdgeSettings:
    ttl = _get(env, "CDN_CACHE_TTL", "86400")
    return EdgeSettings(
        enabled=_bool("CDN_ENABLED", _get(env, "CDN_ENABLED", "false")),
        provider=_get(env, "CDN_PROVIDER", "varnish"),
        base_url=_get(env, "CDN_BASE_URL"),
        cache_ttl_s=int(_number("CDN_CACHE_TTL", ttl)),
    )


def load_env_file(path: str | os.PathLike[str], *, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines into ``environ`` without overriding what is already set."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    loaded: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{path}:{number}", "expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        loaded[key.strip()] = value
        environ.setdefault(key.strip(), value)
    return loaded
