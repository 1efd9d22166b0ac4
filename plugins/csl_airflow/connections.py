"""Airflow connections → ``csl.config`` settings (the only place the two meet).

Connection ids (set by the stack scripts as ``AIRFLOW_CONN_*`` env vars, or in a secrets
backend in production):

- ``csl_db`` / ``csl_db_replica``: ``postgresql://user:password@host:port/dbname``; extra keys
  become libpq query parameters (strings or whole numbers)
- ``csl_storage_primary`` / ``csl_storage_fallback``: type ``aws``; login/password are the
  access key pair; extra ``endpoint_url``, ``region_name``, ``bucket``, ``provider``
  (minio|s3|supabase), ``force_path_style``, ``public_bucket`` (JSON booleans, or the strings
  true/false), ``published_bucket`` (the public copies' bucket; default ``<bucket>-published``),
  ``request_checksum_calculation`` (``when_supported`` | ``when_required``: whether boto3 adds a
  checksum to every upload; default by provider, ``when_required`` for supabase),
  ``listing_order`` (``path`` | ``byte``: the order the provider lists keys in; default by
  provider, ``path`` for minio, ``byte`` for s3 and supabase), ``verifies_checksums`` (a bool:
  the provider checks an upload's SHA-256 checksum and returns it on HEAD; default by provider,
  true for minio and s3, false for supabase)
- ``csl_cdn_edge``: type ``http``; host, port, schema (http/https); extra ``provider``,
  ``cache_ttl`` (whole seconds)

Every value is parsed as ``csl.config`` parses the environment: a malformed port, number or
bool, or an unknown extra key, is one ``ConfigError`` naming the connection and the field.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import quote

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from csl.config import (
    CDN_PROVIDERS,
    CHECKSUM_CALCULATIONS,
    LISTING_ORDERS,
    MAX_CACHE_TTL_S,
    MAX_REPLICA_LAG_S,
    STORAGE_KINDS,
    DatabaseSettings,
    EdgeSettings,
    Secret,
    Settings,
    StorageProviderSettings,
    parse_bool,
    parse_http_url,
    parse_integer,
    parse_number,
)
from csl.errors import ConfigError

__all__ = ["DEFAULT_CONN_IDS", "database_url", "settings_from_connections"]

DEFAULT_CONN_IDS = {
    "db": "csl_db",
    "replica": "csl_db_replica",
    "storage_primary": "csl_storage_primary",
    "storage_fallback": "csl_storage_fallback",
    "edge": "csl_cdn_edge",
}
STORAGE_EXTRA = ("endpoint_url", "region_name", "bucket", "provider", "force_path_style", "public_bucket",
                 "published_bucket", "request_checksum_calculation", "listing_order", "verifies_checksums")
EDGE_EXTRA = ("provider", "cache_ttl")
_HOST_FORBIDDEN = set("@/?#[]:%\\")


def _where(conn, field: str | None = None) -> str:
    return f"Airflow connection {conn.conn_id!r}" + (f" {field}" if field else "")


def _get(conn_id: str, *, required: bool):
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if required:
            raise ConfigError(f"Airflow connection {conn_id!r}", "not defined (set AIRFLOW_CONN_"
                              f"{conn_id.upper()} or add it in Admin → Connections)") from None
        return None


def _extra(conn, allowed: tuple[str, ...] | None) -> dict:
    """The extra as a dict; malformed JSON and (with ``allowed``) unknown keys are refused."""
    raw = conn.extra
    if not raw:
        return {}
    try:
        extra = raw if isinstance(raw, dict) else json.loads(raw)
    except ValueError:
        raise ConfigError(_where(conn, "extra"), "is not valid JSON") from None
    if not isinstance(extra, dict):
        raise ConfigError(_where(conn, "extra"), "must be a JSON object")
    unknown = sorted(set(extra) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ConfigError(_where(conn, "extra"), f"unknown key(s) {', '.join(unknown)} (known: {', '.join(allowed)})")
    return extra


def _host(conn) -> str:
    """The host for a URL: a name or an IPv4/IPv6 address (bracketed), nothing that moves the
    URL's boundaries (``@``, ``/``, ``?``…)."""
    host = conn.host
    if isinstance(host, str) and ":" in host:
        try:
            return f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            pass
    if not isinstance(host, str) or not host or _HOST_FORBIDDEN & set(host) or not host.isprintable() \
            or any(ch.isspace() for ch in host):
        raise ConfigError(_where(conn, "host"), "expected a host name or address")
    return host


def _port(conn) -> str:
    if conn.port in (None, ""):
        return ""
    return f":{parse_integer(_where(conn, 'port'), conn.port, minimum=1, maximum=65535)}"


def database_url(conn) -> str:
    """A libpq URL from a postgres connection (extra keys become query parameters)."""
    if not conn.host or not conn.schema:
        raise ConfigError(_where(conn), "needs a host and a database (schema)")
    auth = quote(conn.login or "", safe="")
    if conn.password:
        auth += ":" + quote(conn.password, safe="")
    query = []
    for key, value in _extra(conn, None).items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(_where(conn, f"extra.{key}"), "expected a string or a whole number")
        query.append(f"{quote(str(key), safe='')}={quote(str(value), safe='')}")
    url = f"postgresql://{auth}@{_host(conn)}{_port(conn)}/{quote(conn.schema, safe='')}"
    return url + (f"?{'&'.join(query)}" if query else "")


def _database(primary, replica, max_replica_lag_s: float) -> DatabaseSettings:
    urls = {}
    for role, conn in (("primary", primary), ("replica", replica)):
        if conn is None:
            continue
        url = database_url(conn)
        try:  # the URL's own checks, reported under the connection's name (they never echo the URL)
            DatabaseSettings(primary_url=url)
        except ConfigError as exc:
            raise ConfigError(_where(conn), exc.problem) from None
        urls[role] = url
    return DatabaseSettings(primary_url=urls["primary"], replica_url=urls.get("replica"),
                            max_replica_lag_s=max_replica_lag_s, application_name="csl-airflow")


def _storage(conn, name: str) -> StorageProviderSettings:
    extra = _extra(conn, STORAGE_EXTRA)
    if not extra.get("bucket") or not isinstance(extra["bucket"], str):
        raise ConfigError(_where(conn), "extra.bucket is required (a bucket name)")
    if not conn.login or not conn.password:
        raise ConfigError(_where(conn), "login and password (the access key pair) are required")
    for key in ("provider", "region_name", "endpoint_url", "published_bucket", "request_checksum_calculation",
                "listing_order"):
        if key in extra and (not isinstance(extra[key], str) or not extra[key]):
            raise ConfigError(_where(conn, f"extra.{key}"), "expected a non-empty string")
    kind = extra.get("provider", "s3")
    if kind not in STORAGE_KINDS:
        raise ConfigError(_where(conn, "extra.provider"), f"expected one of {', '.join(STORAGE_KINDS)}, got {kind!r}")
    checksums = extra.get("request_checksum_calculation")
    if checksums is not None and checksums not in CHECKSUM_CALCULATIONS:
        raise ConfigError(_where(conn, "extra.request_checksum_calculation"),
                          f"expected one of {', '.join(CHECKSUM_CALCULATIONS)}, got {checksums!r}")
    order = extra.get("listing_order")
    if order is not None and order not in LISTING_ORDERS:
        raise ConfigError(_where(conn, "extra.listing_order"),
                          f"expected one of {', '.join(LISTING_ORDERS)}, got {order!r}")
    verifies = extra.get("verifies_checksums")
    endpoint = extra.get("endpoint_url")
    return StorageProviderSettings(
        name=name,
        kind=kind,
        bucket=extra["bucket"],
        access_key=Secret(conn.login),
        secret_key=Secret(conn.password),
        endpoint_url=parse_http_url(_where(conn, "extra.endpoint_url"), endpoint) if endpoint else None,
        region=extra.get("region_name", "us-east-1"),
        force_path_style=parse_bool(_where(conn, "extra.force_path_style"), extra.get("force_path_style", True)),
        public_bucket=parse_bool(_where(conn, "extra.public_bucket"), extra.get("public_bucket", False)),
        published_bucket=extra.get("published_bucket"),
        request_checksum_calculation=extra.get("request_checksum_calculation"),
        listing_order=order,
        verifies_checksums=None if verifies is None else parse_bool(_where(conn, "extra.verifies_checksums"),
                                                                    verifies),
    )


def _edge(conn) -> EdgeSettings:
    extra = _extra(conn, EDGE_EXTRA)
    scheme = conn.schema or "http"
    if scheme not in ("http", "https"):
        raise ConfigError(_where(conn, "schema"), f"expected http or https, got {scheme!r}")
    provider = extra.get("provider", "varnish")
    if provider not in CDN_PROVIDERS:
        raise ConfigError(_where(conn, "extra.provider"),
                          f"expected one of {', '.join(CDN_PROVIDERS)}, got {provider!r}")
    ttl = parse_integer(_where(conn, "extra.cache_ttl"), extra.get("cache_ttl", 86400), minimum=0,
                        maximum=MAX_CACHE_TTL_S)
    return EdgeSettings(enabled=True, provider=provider, cache_ttl_s=ttl,
                        base_url=parse_http_url(_where(conn), f"{scheme}://{_host(conn)}{_port(conn)}"))


def settings_from_connections(conn_ids: dict[str, str] | None = None, *,
                              max_replica_lag_s: float | str = 30.0) -> Settings:
    """Settings from Airflow connections; the replica, fallback and edge are optional.

    ``max_replica_lag_s`` may be the rendered template string of a Param: it is parsed here.
    """
    lag = parse_number("max_replica_lag_s", max_replica_lag_s, minimum=0, maximum=MAX_REPLICA_LAG_S)
    ids = {**DEFAULT_CONN_IDS, **(conn_ids or {})}
    database = _database(_get(ids["db"], required=True), _get(ids["replica"], required=False), lag)
    storage = []
    for name in ("primary", "fallback"):
        conn = _get(ids[f"storage_{name}"], required=name == "primary")
        if conn is not None:
            storage.append(_storage(conn, name))
    edge_conn = _get(ids["edge"], required=False)
    edge = _edge(edge_conn) if edge_conn else EdgeSettings()
    return Settings(database=database, storage=tuple(storage), edge=edge)
