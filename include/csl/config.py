"""One validated settings object for every ``csl`` entry point.

Sources, first match wins: explicit keyword arguments (the Airflow plugin passes values
it resolved from connections), then the platform's own environment names
(``DATABASE_URL``, ``DATABASE_READ_REPLICA_URL``, ``STORAGE_PROVIDER``, ``MINIO_*``,
``S3_*``, ``SUPABASE_*``, ``CDN_*``). Malformed values are refused when the settings are
built; a missing value is refused when the part that needs it is used, so ``csl migrate``
does not ask for storage credentials. Numbers, booleans and URLs become real, finite,
in-range values or are refused in one line naming the setting (``nan``, ``inf``, ``1.5``
where whole seconds are meant, ``"false"`` for a bool that is not a string). Secrets never
appear in ``repr``, logs or error messages: URLs are shown through ``mask_url``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from csl.errors import ConfigError

__all__ = [
    "CDN_PROVIDERS",
    "CDN_ZONES",
    "CLOUDFLARE_PLANS",
    "DEFAULT_ZONE_TTLS",
    "CdnCredentials",
    "CdnSettings",
    "CdnZoneSettings",
    "DatabaseSettings",
    "EdgeSettings",
    "Secret",
    "Settings",
    "StorageProviderSettings",
    "load_env_file",
    "mask_url",
    "parse_bool",
    "parse_http_url",
    "parse_integer",
    "parse_number",
    "redact",
    "reports_root",
]

STORAGE_KINDS = ("minio", "s3", "supabase")
# boto3 >= 1.36 adds a CRC32 checksum to every upload by default ("when_supported"); Supabase
# Storage, Cloudflare R2 and MinIO before 2025-01 refuse or mis-store it. "when_required" sends a
# checksum only where the S3 API requires one. The default per kind; each provider may override it.
CHECKSUM_CALCULATIONS = ("when_supported", "when_required")
DEFAULT_CHECKSUM_CALCULATION = {"minio": "when_supported", "s3": "when_supported", "supabase": "when_required"}
# The order a provider lists keys in: "path" (filer-backed stores such as SeaweedFS and MinIO list
# folder by folder: "a/b" before "a-c") or "byte" (AWS S3: UTF-8 byte order, "a-c" before "a/b").
# The sweep checks each listing against its provider's declared order (csl.storage.keyorder).
LISTING_ORDERS = ("path", "byte")
DEFAULT_LISTING_ORDER = {"minio": "path", "s3": "byte", "supabase": "byte"}
# Whether the provider checks an upload's x-amz-checksum-sha256 against the bytes (refusing a wrong
# one with BadDigest) and returns it on HEAD with ChecksumMode=ENABLED: then that checksum is
# evidence of the stored bytes; otherwise they are read back and hashed.
DEFAULT_VERIFIES_CHECKSUMS = {"minio": True, "s3": True, "supabase": False}
CDN_PROVIDERS = ("cloudflare", "cloudfront", "azure", "fastly", "varnish")
CDN_ZONES = ("audio", "images", "static")
# Providers whose API addresses a zone by its own id (Cloudflare's zone, CloudFront's distribution,
# Azure Front Door's endpoint path, Fastly's service); the local Varnish edge has none.
CDN_ZONE_ID_REQUIRED = ("cloudflare", "cloudfront", "azure", "fastly")
# The platform's TTL table, (browser, edge) in seconds per zone: audio 24 h / 7 d, images and
# static 1 d / 30 d. (The seed guide's example header, max-age=3600, s-maxage=86400, contradicts
# its own table; the table wins, and CDN_<ZONE>_BROWSER_TTL / CDN_<ZONE>_EDGE_TTL override it.)
DEFAULT_ZONE_TTLS = {"audio": (86400, 7 * 86400), "images": (86400, 30 * 86400), "static": (86400, 30 * 86400)}
CLOUDFLARE_PLANS = ("free", "pro", "business", "enterprise")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


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


# Query parameters and key=value DSN keys whose values are secrets (libpq's password and
# sslpassword, and the tokens, keys and signatures other services put in URLs).
_SECRET_NAME = re.compile(r"pass|secret|token|key|sig|credential|auth", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_DSN_PAIR = re.compile(r"""([^\s=']+)\s*=\s*('(?:[^'\\]|\\.)*(?:'|$)|\S*)""", re.DOTALL)
_MASK = "***"


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """Where the secrets are in a URL or a libpq ``key=value`` DSN, as (start, end) offsets.

    A URL's userinfo is taken to end at its *last* ``@``: libpq and ``urllib`` disagree on
    where a malformed userinfo ends, and the widest reading hides the password under both.
    """
    spans: list[tuple[int, int]] = []
    scheme = _SCHEME.match(text)
    if scheme is None:
        for pair in _DSN_PAIR.finditer(text):
            if _SECRET_NAME.search(pair.group(1)):
                spans.append(pair.span(2))
        return spans
    start = scheme.end()
    at = text.rfind("@", start)
    if at >= 0:
        colon = text.find(":", start, at)
        if colon >= 0:
            spans.append((colon + 1, at))
    # query parameters, and fragment ones (``#access_token=…``); searched from the scheme on, as
    # a '?' or '@' may sit in the password or in a parameter value
    marks = [i for i in (text.find("?", start), text.find("#", start)) if i >= 0]
    if marks:
        tail = min(marks)
        for param in re.finditer(r"[^&#?]+", text[tail:]):
            name, sep, _ = param.group().partition("=")
            if sep and _SECRET_NAME.search(unquote(name)):
                spans.append((tail + param.start() + len(name) + 1, tail + param.end()))
    return spans


def mask_url(url: str) -> str:
    """``url`` (a URL or a libpq ``key=value`` DSN) with every secret replaced by ``***``: the
    userinfo password, and query parameters or DSN keys named like secrets (``password``,
    ``sslpassword``, tokens, keys, signatures). For logs, reprs, errors and health output."""
    merged: list[list[int]] = []
    for begin, end in sorted(_secret_spans(url)):
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    masked = url
    for begin, end in reversed(merged):
        masked = masked[:begin] + _MASK + masked[end:]
    return masked


def redact(text: str, url: str) -> str:
    """``text`` (e.g. a driver's error message) with ``url`` and each of its secrets, as written
    and percent-decoded, replaced by their masked forms: libpq echoes parts of what it was given."""
    text = text.replace(url, mask_url(url))
    secrets = set()
    for begin, end in _secret_spans(url):
        raw = url[begin:end]
        secrets.update((raw, unquote(raw), raw.strip("'")))
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def _show(value: object) -> str:
    """A value for an error message: one line, bounded (never used for URLs or secrets)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(setting: str, value: str) -> None:
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ConfigError(setting, "must not contain spaces or control characters")


_PORT_PROBLEM = "port must be a whole number from 1 to 65535"
_LIBPQ_INTEGERS = {"connect_timeout": (0, 86400), "keepalives": (0, 1), "keepalives_idle": (0, 86400),
                   "keepalives_interval": (0, 86400), "keepalives_count": (0, 1000),
                   "tcp_user_timeout": (0, 86_400_000)}
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _postgres_url(setting: str, value: str) -> str:
    """A ``postgresql://`` URL that libpq parses, with a host, a database and sane numbers.

    Refusals name the part that is wrong and never echo the URL or a value taken from it
    (a mangled userinfo can turn a password into a "port" or a "host").
    """
    if not isinstance(value, str):
        raise ConfigError(setting, "expected a postgresql://user:password@host:port/dbname URL")
    parts = _SCHEME.match(value)
    scheme = value[: parts.end() - 3] if parts else ""
    if scheme not in ("postgresql", "postgres"):
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigError(setting, f"expected a postgresql://user:password@host:port/dbname URL, got {shown}")
    _plain(setting, value)
    import psycopg  # here, not at the top: DAG files import this module
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(value)
    except psycopg.Error as exc:
        reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, value)
        raise ConfigError(setting, f"not a valid PostgreSQL URL: {reason}") from None
    if not params.get("host") or not params.get("dbname"):
        raise ConfigError(setting, "expected a postgresql://user:password@host:port/dbname URL with host and database")
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(setting, _PORT_PROBLEM)
    for name, (low, high) in _LIBPQ_INTEGERS.items():
        if name in params:
            text = str(params[name])
            if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
                raise ConfigError(setting, f"{name} must be a whole number from {low} to {high}")
    if params.get("sslmode", "prefer") not in _SSLMODES:
        raise ConfigError(setting, f"sslmode must be one of {', '.join(_SSLMODES)}")
    return value


def parse_http_url(setting: str, value: str) -> str:
    """An ``http(s)://host[:port][/path]`` base URL: no credentials, query or fragment in it
    (credentials have their own settings), so it is safe to print anywhere."""
    if not isinstance(value, str):
        raise ConfigError(setting, "expected an http(s)://host[:port] URL")
    _plain(setting, value)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ConfigError(setting, f"expected an http(s)://host[:port] URL, got {mask_url(value)!r}") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(setting, "must not contain user:password@ (credentials have their own settings)")
    if "?" in value or "#" in value:
        raise ConfigError(setting, f"must not have a query or fragment, got {mask_url(value)!r}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(setting, f"expected an http(s)://host[:port] URL, got {_show(value)}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(setting, _PORT_PROBLEM) from None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(setting, _PORT_PROBLEM)
    return value.rstrip("/")


def parse_bool(setting: str, value: str | bool) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case), or a real bool; else refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
    raise ConfigError(setting, f"expected true or false, got {_show(value)}")


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_WHOLE = re.compile(r"[+-]?[0-9]+", re.ASCII)


def parse_number(setting: str, value: str | float, *, minimum: float, maximum: float) -> float:
    """A finite decimal number within ``minimum..maximum``. ``nan``, ``inf``, ``1e400``, ``1_0``
    and non-ASCII digits are refused: every comparison with the result means what it says."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(setting, f"expected a number, got {_show(value)}")
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value.strip()):
            raise ConfigError(setting, f"expected a number, got {_show(value)}")
        number = float(value)
    else:
        number = float(value)
    if not math.isfinite(number) or not minimum <= number <= maximum:
        raise ConfigError(setting, f"expected a number from {minimum:g} to {maximum:g}, got {_show(value)}")
    return number


def parse_integer(setting: str, value: str | int, *, minimum: int, maximum: int) -> int:
    """A whole number within ``minimum..maximum`` (``1.5``, ``1e3``, ``nan`` and bools refused)."""
    if isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ConfigError(setting, f"expected a whole number, got {_show(value)}")
    if not minimum <= number <= maximum:
        raise ConfigError(setting, f"expected a whole number from {minimum} to {maximum}, got {_show(value)}")
    return number


MAX_REPLICA_LAG_S = 3600.0  # the bound of the platform-health DAG's Param too
MAX_CACHE_TTL_S = 365 * 86400  # a year: the longest edge TTL the CDNs accept


def _require_bool(setting: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(setting, f"expected true or false, got {_show(value)}")


def _require_number(setting: str, value: object, *, whole: bool = False, **bounds: float) -> None:
    """A field set in code holds the parsed value itself: a real number, never its text."""
    if isinstance(value, str):
        raise ConfigError(setting, f"expected a {'whole ' if whole else ''}number, got the text {_show(value)}")
    (parse_integer if whole else parse_number)(setting, value, **bounds)  # type: ignore[operator]


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
        _require_number("CSL_MAX_REPLICA_LAG_S", self.max_replica_lag_s, minimum=0, maximum=MAX_REPLICA_LAG_S)
        _require_number("connect_timeout_s", self.connect_timeout_s, whole=True, minimum=1, maximum=600)
        if not isinstance(self.application_name, str) or not self.application_name.isprintable():
            raise ConfigError("application_name", "expected printable text")

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
    public_bucket: bool = False  # this provider serves the published samples (csl.storage.publication)
    published_bucket: str | None = None  # where: the public-read copies; default "<bucket>-published"
    request_checksum_calculation: str | None = None  # when boto3 adds upload checksums; None: the kind's default
    listing_order: str | None = None  # "path" or "byte" (LISTING_ORDERS); None: the kind's default
    verifies_checksums: bool | None = None  # its SHA-256 upload checksums are evidence; None: the kind's default

    def __post_init__(self) -> None:
        prefix = self.kind.upper()
        if self.kind not in STORAGE_KINDS:
            raise ConfigError("STORAGE_PROVIDER", f"expected one of {', '.join(STORAGE_KINDS)}, got {self.kind!r}")
        if self.listing_order is None:
            object.__setattr__(self, "listing_order", DEFAULT_LISTING_ORDER[self.kind])
        if self.listing_order not in LISTING_ORDERS:
            raise ConfigError(f"{prefix}_LISTING_ORDER", f"expected one of {', '.join(LISTING_ORDERS)}, "
                              f"got {self.listing_order!r}")
        if self.verifies_checksums is None:
            object.__setattr__(self, "verifies_checksums", DEFAULT_VERIFIES_CHECKSUMS[self.kind])
        _require_bool(f"{prefix}_VERIFIES_CHECKSUMS", self.verifies_checksums)
        if self.request_checksum_calculation is None:
            object.__setattr__(self, "request_checksum_calculation", DEFAULT_CHECKSUM_CALCULATION[self.kind])
        if self.request_checksum_calculation not in CHECKSUM_CALCULATIONS:
            raise ConfigError(f"{prefix}_REQUEST_CHECKSUM_CALCULATION", f"expected one of "
                              f"{', '.join(CHECKSUM_CALCULATIONS)}, got {self.request_checksum_calculation!r}")
        if self.endpoint_url is not None:
            parse_http_url(f"{prefix}_ENDPOINT", self.endpoint_url)
        if not self.bucket:
            raise ConfigError(f"{prefix}_BUCKET", "must not be empty")
        _require_bool(f"{prefix}_FORCE_PATH_STYLE", self.force_path_style)
        _require_bool(f"{prefix}_PUBLIC_BUCKET", self.public_bucket)
        if self.public_bucket and self.published_bucket is None:
            object.__setattr__(self, "published_bucket", f"{self.bucket}-published")
        if self.published_bucket is not None:
            if not self.public_bucket:
                raise ConfigError(f"{prefix}_PUBLISHED_BUCKET", f"only used with {prefix}_PUBLIC_BUCKET=true")
            if not isinstance(self.published_bucket, str) or not BUCKET_NAME.fullmatch(self.published_bucket):
                raise ConfigError(f"{prefix}_PUBLISHED_BUCKET", "expected an S3 bucket name (3-63 lowercase "
                                  f"letters, digits, dots or hyphens), got {self.published_bucket!r}")
            if self.published_bucket == self.bucket:
                raise ConfigError(f"{prefix}_PUBLISHED_BUCKET", f"must differ from {prefix}_BUCKET "
                                  f"({self.bucket!r}): that bucket holds every object and stays private")


_OPTION_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _zone_options(setting: str, options: object) -> dict[str, object]:
    """A zone's provider options: a mapping of snake_case names to strings, whole numbers or bools."""
    if not isinstance(options, Mapping):
        raise ConfigError(setting, f"expected a JSON object, got {_show(options)}")
    for key, value in options.items():
        if not isinstance(key, str) or not _OPTION_KEY.fullmatch(key):
            raise ConfigError(setting, f"option names are snake_case words, got {_show(key)}")
        if not isinstance(value, (str, int, bool)) or isinstance(value, float):
            raise ConfigError(f"{setting}.{key}", f"expected a string, whole number or bool, got {_show(value)}")
        if isinstance(value, str) and not value.isprintable():
            raise ConfigError(f"{setting}.{key}", "must not contain control characters")
    return dict(options)


@dataclass(frozen=True, kw_only=True)
class CdnZoneSettings:
    """One zone (audio, images or static): its provider, base URL, the provider's zone id and
    options, and the TTLs its objects are served with (browser, edge; the TTL table by default)."""

    name: str
    provider: str
    base_url: str
    zone_id: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    browser_ttl_s: int | None = None
    edge_ttl_s: int | None = None

    def __post_init__(self) -> None:
        if self.name not in CDN_ZONES:
            raise ConfigError("CDN zone", f"expected one of {', '.join(CDN_ZONES)}, got {_show(self.name)}")
        env = f"CDN_{self.name.upper()}"
        if self.provider not in CDN_PROVIDERS:
            raise ConfigError(f"{env}_PROVIDER", f"expected one of {', '.join(CDN_PROVIDERS)}, got {_show(self.provider)}")
        object.__setattr__(self, "base_url", parse_http_url(f"{env}_BASE_URL", self.base_url))
        if self.zone_id is not None:
            if not isinstance(self.zone_id, str) or not self.zone_id:
                raise ConfigError(f"{env}_ZONE_ID", "expected the provider's zone id as text")
            _plain(f"{env}_ZONE_ID", self.zone_id)
        if self.provider in CDN_ZONE_ID_REQUIRED and not self.zone_id:
            raise ConfigError(f"{env}_ZONE_ID", f"not set; zone {self.name!r} uses provider {self.provider!r}, "
                              "which needs the provider's zone id")
        object.__setattr__(self, "options", _zone_options(f"{env}_OPTIONS", self.options))
        browser, edge = DEFAULT_ZONE_TTLS[self.name]
        for attribute, default, setting in (("browser_ttl_s", browser, f"{env}_BROWSER_TTL"),
                                            ("edge_ttl_s", edge, f"{env}_EDGE_TTL")):
            if getattr(self, attribute) is None:
                object.__setattr__(self, attribute, default)
            _require_number(setting, getattr(self, attribute), whole=True, minimum=0, maximum=MAX_CACHE_TTL_S)

    @property
    def ttls(self) -> tuple[int, int]:
        return self.browser_ttl_s, self.edge_ttl_s  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class CdnCredentials:
    """The remote providers' credentials, one set per provider (all ``Secret``; never printed).
    CloudFront without a key pair uses boto3's own chain (``AWS_*``, instance roles)."""

    cloudflare_api_token: Secret | None = field(default=None, repr=False)
    cloudflare_plan: str = "free"
    cloudfront_access_key_id: Secret | None = field(default=None, repr=False)
    cloudfront_secret_access_key: Secret | None = field(default=None, repr=False)
    azure_tenant_id: Secret | None = field(default=None, repr=False)
    azure_client_id: Secret | None = field(default=None, repr=False)
    azure_client_secret: Secret | None = field(default=None, repr=False)
    fastly_api_token: Secret | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("cloudflare_api_token", "cloudfront_access_key_id", "cloudfront_secret_access_key",
                     "azure_tenant_id", "azure_client_id", "azure_client_secret", "fastly_api_token"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Secret):
                raise ConfigError(f"CDN_{name.upper()}", "expected a csl.config.Secret")
        if self.cloudflare_plan not in CLOUDFLARE_PLANS:
            raise ConfigError("CDN_CLOUDFLARE_PLAN", f"expected one of {', '.join(CLOUDFLARE_PLANS)}, "
                              f"got {_show(self.cloudflare_plan)}")
        if bool(self.cloudfront_access_key_id) != bool(self.cloudfront_secret_access_key):
            missing = "CDN_CLOUDFRONT_SECRET_ACCESS_KEY" if self.cloudfront_access_key_id else "CDN_CLOUDFRONT_ACCESS_KEY_ID"
            raise ConfigError(missing, "not set; the CloudFront key pair is both keys or neither (boto3's chain)")

    def missing_for(self, provider: str) -> list[str]:
        """The env names of the credentials ``provider`` needs and does not have."""
        needed = {"cloudflare": ("cloudflare_api_token",), "fastly": ("fastly_api_token",),
                  "azure": ("azure_tenant_id", "azure_client_id", "azure_client_secret")}.get(provider, ())
        return [f"CDN_{name.upper()}" for name in needed if not getattr(self, name)]

    def __repr__(self) -> str:
        given = [name for name in ("cloudflare_api_token", "cloudfront_access_key_id", "azure_client_secret",
                                   "fastly_api_token") if getattr(self, name)]
        return f"CdnCredentials(set={given}, cloudflare_plan={self.cloudflare_plan!r})"


@dataclass(frozen=True, kw_only=True)
class CdnSettings:
    """The CDN in front of the published bucket: zones audio / images / static, each served by a
    provider (the local Varnish edge in dev/test) under its base URL.

    ``provider`` and ``base_url`` are every zone's defaults (``CDN_PROVIDER``, ``CDN_BASE_URL``;
    a zone's base URL is ``<CDN_BASE_URL>/<zone>`` unless set); ``zones`` left ``None`` are those
    defaults. ``cache_ttl_s`` (``CDN_CACHE_TTL``) is the edge TTL of an object that carries no
    cache headers of its own; the zones' TTLs come from the TTL table (``DEFAULT_ZONE_TTLS``).
    ``varnish_work_dir`` is the local edge's ``-n`` folder, for ``varnishstat``'s hit ratio."""

    enabled: bool = False
    provider: str = "varnish"
    base_url: str | None = None
    cache_ttl_s: int = 86400
    zones: tuple[CdnZoneSettings, ...] | None = None
    credentials: CdnCredentials = field(default_factory=CdnCredentials)
    varnish_work_dir: str | None = None

    def __post_init__(self) -> None:
        _require_bool("CDN_ENABLED", self.enabled)
        _require_number("CDN_CACHE_TTL", self.cache_ttl_s, whole=True, minimum=0, maximum=MAX_CACHE_TTL_S)
        if self.provider not in CDN_PROVIDERS:
            raise ConfigError("CDN_PROVIDER", f"expected one of {', '.join(CDN_PROVIDERS)}, got {self.provider!r}")
        if self.base_url is not None:
            object.__setattr__(self, "base_url", parse_http_url("CDN_BASE_URL", self.base_url))
        if self.varnish_work_dir is not None and (not isinstance(self.varnish_work_dir, str)
                                                  or not self.varnish_work_dir.startswith("/")):
            raise ConfigError("CDN_VARNISH_WORK_DIR", "expected an absolute folder path (varnishd's -n)")
        if not isinstance(self.credentials, CdnCredentials):
            raise ConfigError("CDN credentials", "expected csl.config.CdnCredentials")
        if self.zones is None:
            zones = tuple(CdnZoneSettings(name=name, provider=self.provider, base_url=f"{self.base_url}/{name}")
                          for name in CDN_ZONES) if self.base_url else ()
            object.__setattr__(self, "zones", zones)
        else:
            object.__setattr__(self, "zones", tuple(self.zones))
        names = [zone.name for zone in self.zones]
        if len(set(names)) != len(names):
            raise ConfigError("CDN zones", f"each zone once, got {', '.join(names)}")
        if self.enabled and not self.zones:
            raise ConfigError("CDN_BASE_URL", "required when CDN_ENABLED is true (or CDN_<ZONE>_BASE_URL for "
                              "every zone)")
        for zone in self.zones:
            missing = self.credentials.missing_for(zone.provider)
            if missing:
                raise ConfigError(missing[0], f"not set; required because zone {zone.name!r} uses provider "
                                  f"{zone.provider!r}")

    def zone(self, name: str) -> CdnZoneSettings:
        for zone in self.zones or ():
            if zone.name == name:
                return zone
        known = ", ".join(z.name for z in self.zones or ()) or "none"
        raise ConfigError("CDN zone", f"no zone named {name!r} (configured: {known})")


EdgeSettings = CdnSettings  # the name the edge's callers used before the zones (kept importable)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything ``csl`` needs, validated. Missing parts raise when first needed."""

    database: DatabaseSettings | None = None
    storage: tuple[StorageProviderSettings, ...] = ()
    edge: CdnSettings = field(default_factory=CdnSettings)

    @property
    def cdn(self) -> CdnSettings:
        """The CDN settings (zones, credentials); ``edge`` is their older name."""
        return self.edge

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


def _optional_bool(env: Mapping[str, str], name: str) -> bool | None:
    value = _get(env, name)
    return None if value is None else parse_bool(name, value)


def _database_from_env(env: Mapping[str, str]) -> DatabaseSettings | None:
    url = _get(env, "DATABASE_URL")
    if url is None:
        return None
    lag = _get(env, "CSL_MAX_REPLICA_LAG_S")
    return DatabaseSettings(
        primary_url=url,
        replica_url=_get(env, "DATABASE_READ_REPLICA_URL"),
        max_replica_lag_s=parse_number("CSL_MAX_REPLICA_LAG_S", lag, minimum=0, maximum=MAX_REPLICA_LAG_S)
        if lag else 30.0,
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
            endpoint_url=parse_http_url("MINIO_ENDPOINT", _required(env, "MINIO_ENDPOINT", why)),
            access_key=Secret(_required(env, "MINIO_ACCESS_KEY", why)),
            secret_key=Secret(_required(env, "MINIO_SECRET_KEY", why)),
            bucket=_get(env, "MINIO_BUCKET", "cultural-audio"),
            region=region,
            force_path_style=parse_bool("MINIO_FORCE_PATH_STYLE", _get(env, "MINIO_FORCE_PATH_STYLE", "true")),
            public_bucket=parse_bool("MINIO_PUBLIC_BUCKET", _get(env, "MINIO_PUBLIC_BUCKET", "false")),
            published_bucket=_get(env, "MINIO_PUBLISHED_BUCKET"),
            request_checksum_calculation=_get(env, "MINIO_REQUEST_CHECKSUM_CALCULATION"),
            listing_order=_get(env, "MINIO_LISTING_ORDER"),
            verifies_checksums=_optional_bool(env, "MINIO_VERIFIES_CHECKSUMS"),
        )
    if kind == "s3":
        endpoint = _get(env, "S3_ENDPOINT")
        return StorageProviderSettings(
            name=name,
            kind=kind,
            endpoint_url=parse_http_url("S3_ENDPOINT", endpoint) if endpoint else None,
            access_key=Secret(_required(env, "AWS_ACCESS_KEY_ID", why)),
            secret_key=Secret(_required(env, "AWS_SECRET_ACCESS_KEY", why)),
            bucket=_required(env, "S3_BUCKET", why),
            region=region,
            force_path_style=parse_bool("S3_FORCE_PATH_STYLE",
                                        _get(env, "S3_FORCE_PATH_STYLE", "true" if endpoint else "false")),
            public_bucket=parse_bool("S3_PUBLIC_BUCKET", _get(env, "S3_PUBLIC_BUCKET", "false")),
            published_bucket=_get(env, "S3_PUBLISHED_BUCKET"),
            request_checksum_calculation=_get(env, "S3_REQUEST_CHECKSUM_CALCULATION"),
            listing_order=_get(env, "S3_LISTING_ORDER"),
            verifies_checksums=_optional_bool(env, "S3_VERIFIES_CHECKSUMS"),
        )
    if kind == "supabase":
        base = parse_http_url("SUPABASE_URL", _required(env, "SUPABASE_URL", why))
        endpoint = _get(env, "SUPABASE_S3_ENDPOINT") or f"{base}/storage/v1/s3"
        return StorageProviderSettings(
            name=name,
            kind=kind,
            endpoint_url=parse_http_url("SUPABASE_S3_ENDPOINT", endpoint),
            access_key=Secret(_required(env, "SUPABASE_S3_ACCESS_KEY_ID", why)),
            secret_key=Secret(_required(env, "SUPABASE_S3_SECRET_ACCESS_KEY", why)),
            bucket=_get(env, "SUPABASE_AUDIO_BUCKET", "audio-samples"),
            region=_get(env, "SUPABASE_S3_REGION", region),
            force_path_style=True,
            request_checksum_calculation=_get(env, "SUPABASE_REQUEST_CHECKSUM_CALCULATION"),
            listing_order=_get(env, "SUPABASE_LISTING_ORDER"),
            verifies_checksums=_optional_bool(env, "SUPABASE_VERIFIES_CHECKSUMS"),
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


_CDN_CREDENTIAL_ENV = {
    "CDN_CLOUDFLARE_API_TOKEN": "cloudflare_api_token",
    "CDN_CLOUDFRONT_ACCESS_KEY_ID": "cloudfront_access_key_id",
    "CDN_CLOUDFRONT_SECRET_ACCESS_KEY": "cloudfront_secret_access_key",
    "CDN_AZURE_TENANT_ID": "azure_tenant_id",
    "CDN_AZURE_CLIENT_ID": "azure_client_id",
    "CDN_AZURE_CLIENT_SECRET": "azure_client_secret",
    "CDN_FASTLY_API_TOKEN": "fastly_api_token",
}
_CDN_ZONE_ENV = ("PROVIDER", "BASE_URL", "ZONE_ID", "OPTIONS", "BROWSER_TTL", "EDGE_TTL")
CDN_ENV_NAMES = frozenset({"CDN_ENABLED", "CDN_PROVIDER", "CDN_BASE_URL", "CDN_CACHE_TTL", "CDN_CLOUDFLARE_PLAN",
                           "CDN_VARNISH_WORK_DIR", *_CDN_CREDENTIAL_ENV,
                           *(f"CDN_{zone.upper()}_{part}" for zone in CDN_ZONES for part in _CDN_ZONE_ENV)})


def _json_object(setting: str, text: str) -> dict[str, object]:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigError(setting, "is not valid JSON (expected an object such as {\"work_dir\": \"/…\"})") from None
    if not isinstance(value, dict):
        raise ConfigError(setting, "expected a JSON object")
    return value


def cdn_zone_from_env(env: Mapping[str, str], name: str, *, provider: str, base_url: str | None) -> CdnZoneSettings:
    """One zone from ``CDN_<ZONE>_*``, defaulting to ``provider`` and ``<base_url>/<zone>``."""
    prefix = f"CDN_{name.upper()}_"
    zone_url = _get(env, prefix + "BASE_URL")
    if zone_url is None:
        if base_url is None:
            raise ConfigError(prefix + "BASE_URL", "not set, and no CDN_BASE_URL to derive it from")
        zone_url = f"{base_url}/{name}"
    options = _get(env, prefix + "OPTIONS")
    ttls = {}
    for part in ("BROWSER_TTL", "EDGE_TTL"):
        value = _get(env, prefix + part)
        if value is not None:
            ttls[part.lower() + "_s"] = parse_integer(prefix + part, value, minimum=0, maximum=MAX_CACHE_TTL_S)
    return CdnZoneSettings(name=name, provider=_get(env, prefix + "PROVIDER", provider), base_url=zone_url,
                           zone_id=_get(env, prefix + "ZONE_ID"),
                           options=_json_object(prefix + "OPTIONS", options) if options else {}, **ttls)


def _edge_from_env(env: Mapping[str, str]) -> CdnSettings:
    unknown = sorted(name for name in env if name.startswith("CDN_") and name not in CDN_ENV_NAMES)
    if unknown:
        raise ConfigError(unknown[0], "unknown CDN setting (known: CDN_ENABLED, CDN_PROVIDER, CDN_BASE_URL, "
                          "CDN_CACHE_TTL, CDN_<AUDIO|IMAGES|STATIC>_<PROVIDER|BASE_URL|ZONE_ID|OPTIONS|BROWSER_TTL|"
                          "EDGE_TTL>, CDN_VARNISH_WORK_DIR and the providers' credentials)")
    ttl = _get(env, "CDN_CACHE_TTL", "86400")
    enabled = parse_bool("CDN_ENABLED", _get(env, "CDN_ENABLED", "false"))
    provider = _get(env, "CDN_PROVIDER", "varnish")
    if provider not in CDN_PROVIDERS:
        raise ConfigError("CDN_PROVIDER", f"expected one of {', '.join(CDN_PROVIDERS)}, got {provider!r}")
    base_url = _get(env, "CDN_BASE_URL")
    if base_url is not None:
        base_url = parse_http_url("CDN_BASE_URL", base_url)
    zones = None
    zone_set = any(_get(env, f"CDN_{zone.upper()}_{part}") is not None for zone in CDN_ZONES for part in _CDN_ZONE_ENV)
    if base_url is not None or zone_set:
        zones = tuple(cdn_zone_from_env(env, name, provider=provider, base_url=base_url) for name in CDN_ZONES)
    credentials = CdnCredentials(cloudflare_plan=_get(env, "CDN_CLOUDFLARE_PLAN", "free"),
                                 **{attr: Secret(env[name]) for name, attr in _CDN_CREDENTIAL_ENV.items()
                                    if _get(env, name) is not None})
    return CdnSettings(
        enabled=enabled,
        provider=provider,
        base_url=base_url,
        cache_ttl_s=parse_integer("CDN_CACHE_TTL", ttl, minimum=0, maximum=MAX_CACHE_TTL_S),
        zones=zones,
        credentials=credentials,
        varnish_work_dir=_get(env, "CDN_VARNISH_WORK_DIR"),
    )


def load_env_file(path: str | os.PathLike[str], *, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines into ``environ`` without overriding what is already set."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    loaded: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{path}:{number}", "expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        loaded[key.strip()] = value
        environ.setdefault(key.strip(), value)
    return loaded


def reports_root(environ: Mapping[str, str] | None = None) -> Path:
    """The folder report files go under (each capability its own subfolder): ``$CSL_REPORTS_DIR``,
    else ``$AIRFLOW_HOME/csl_reports`` (``./csl_reports`` without ``AIRFLOW_HOME``)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("CSL_REPORTS_DIR") or Path(environ.get("AIRFLOW_HOME") or ".") / "csl_reports")
