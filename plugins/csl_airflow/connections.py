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
- ``csl_cdn_edge``: type ``http``; host, port, schema (http/https): the CDN's base URL, every
  zone's default (``<base>/<zone>``); extra ``provider``, ``cache_ttl`` (whole seconds: the edge
  TTL of an object without cache headers of its own), ``work_dir`` (the local Varnish edge's
  ``-n`` folder, for ``varnishstat``'s hit ratio)
- ``csl_cdn_audio`` / ``csl_cdn_images`` / ``csl_cdn_static`` (optional, one per zone): type
  ``http``; host = the zone's base URL (``https://cdn.example.com/audio``), or a host name with
  schema and port; login = CloudFront's access key id or Azure's client id; password = the
  provider's token or secret; extra ``provider`` (cloudflare|cloudfront|azure|fastly|varnish),
  ``zone_id``, ``plan`` (Cloudflare's), ``tenant_id`` (Azure's), ``options`` (a JSON object),
  ``browser_ttl`` / ``edge_ttl`` (whole seconds; the TTL table by default), ``work_dir``.
  One set of credentials per provider: two zones of one provider with different ones are refused.

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
    CDN_ZONE_ID_REQUIRED,
    CDN_ZONES,
    CHECKSUM_CALCULATIONS,
    CLOUDFLARE_PLANS,
    LISTING_ORDERS,
    MAX_CACHE_TTL_S,
    MAX_REPLICA_LAG_S,
    STORAGE_KINDS,
    CdnCredentials,
    CdnSettings,
    CdnZoneSettings,
    DatabaseSettings,
    Secret,
    Settings,
    StorageProviderSettings,
    parse_bool,
    parse_http_url,
    parse_integer,
    parse_number,
)
from csl.errors import ConfigError

__all__ = ["DEFAULT_CONN_IDS", "cdn_from_connections", "database_url", "settings_from_connections"]

DEFAULT_CONN_IDS = {
    "db": "csl_db",
    "replica": "csl_db_replica",
    "storage_primary": "csl_storage_primary",
    "storage_fallback": "csl_storage_fallback",
    "edge": "csl_cdn_edge",
    **{f"cdn_{zone}": f"csl_cdn_{zone}" for zone in CDN_ZONES},
}
STORAGE_EXTRA = ("endpoint_url", "region_name", "bucket", "provider", "force_path_style", "public_bucket",
                 "published_bucket", "request_checksum_calculation", "listing_order", "verifies_checksums")
EDGE_EXTRA = ("provider", "cache_ttl", "work_dir")
CDN_ZONE_EXTRA = ("provider", "zone_id", "plan", "tenant_id", "options", "browser_ttl", "edge_ttl", "work_dir")
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


def _base_url(conn) -> str:
    """``host`` as a whole base URL (``https://cdn.example.com/audio``), or scheme://host:port."""
    host = conn.host
    if isinstance(host, str) and "://" in host:
        if conn.port not in (None, ""):
            raise ConfigError(_where(conn, "port"), "give the port inside the host URL, not both")
        return parse_http_url(_where(conn, "host"), host)
    scheme = conn.schema or "http"
    if scheme not in ("http", "https"):
        raise ConfigError(_where(conn, "schema"), f"expected http or https, got {scheme!r}")
    return parse_http_url(_where(conn), f"{scheme}://{_host(conn)}{_port(conn)}")


def _text(conn, extra: dict, key: str) -> str | None:
    value = extra.get(key)
    if value is not None and (not isinstance(value, str) or not value or not value.isprintable()):
        raise ConfigError(_where(conn, f"extra.{key}"), "expected a non-empty string")
    return value


def _provider(conn, extra: dict) -> str:
    provider = extra.get("provider", "varnish")
    if provider not in CDN_PROVIDERS:
        raise ConfigError(_where(conn, "extra.provider"),
                          f"expected one of {', '.join(CDN_PROVIDERS)}, got {provider!r}")
    return provider


def _edge(conn) -> tuple[str, str, int, str | None]:
    """(base URL, provider, cache TTL, Varnish work folder) from ``csl_cdn_edge``."""
    extra = _extra(conn, EDGE_EXTRA)
    provider = _provider(conn, extra)
    ttl = parse_integer(_where(conn, "extra.cache_ttl"), extra.get("cache_ttl", 86400), minimum=0,
                        maximum=MAX_CACHE_TTL_S)
    return _base_url(conn), provider, ttl, _text(conn, extra, "work_dir")


# provider → (credential fields taken from login, password, extra.tenant_id)
_ZONE_CREDENTIALS = {
    "cloudflare": (None, "cloudflare_api_token", None),
    "fastly": (None, "fastly_api_token", None),
    "cloudfront": ("cloudfront_access_key_id", "cloudfront_secret_access_key", None),
    "azure": ("azure_client_id", "azure_client_secret", "azure_tenant_id"),
    "varnish": (None, None, None),
}


def _zone(conn, name: str, credentials: dict, sources: dict) -> CdnZoneSettings:
    """One zone from ``csl_cdn_<zone>``; its credentials are added to ``credentials`` (a field
    given by two connections must agree: ``sources`` remembers who gave it)."""
    extra = _extra(conn, CDN_ZONE_EXTRA)
    provider = _provider(conn, extra)
    options = extra.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(_where(conn, "extra.options"), "expected a JSON object")
    work_dir = _text(conn, extra, "work_dir")
    if work_dir:
        options = {**options, "work_dir": work_dir}
    login_field, password_field, tenant_field = _ZONE_CREDENTIALS[provider]
    given = {login_field: conn.login, password_field: conn.password, tenant_field: _text(conn, extra, "tenant_id")}
    if provider == "cloudflare" and extra.get("plan") is not None:
        given["cloudflare_plan"] = _text(conn, extra, "plan")
        if given["cloudflare_plan"] not in CLOUDFLARE_PLANS:
            raise ConfigError(_where(conn, "extra.plan"), f"expected one of {', '.join(CLOUDFLARE_PLANS)}, "
                              f"got {given['cloudflare_plan']!r}")
    if provider == "cloudfront" and bool(conn.login) != bool(conn.password):
        raise ConfigError(_where(conn, "password" if conn.login else "login"),
                          "not set; CloudFront's key pair is login + password, or neither (boto3's chain)")
    for field_name, value in given.items():
        if field_name is None or not value:
            continue
        if field_name in credentials and credentials[field_name] != value:
            raise ConfigError(_where(conn), f"{field_name} differs from connection {sources[field_name]!r}'s: "
                              f"one set of credentials per provider")
        credentials[field_name], sources[field_name] = value, conn.conn_id
    ttls = {}
    for key in ("browser_ttl", "edge_ttl"):
        if key in extra:
            ttls[f"{key}_s"] = parse_integer(_where(conn, f"extra.{key}"), extra[key], minimum=0,
                                             maximum=MAX_CACHE_TTL_S)
    try:
        return CdnZoneSettings(name=name, provider=provider, base_url=_base_url(conn),
                               zone_id=_text(conn, extra, "zone_id"), options=options, **ttls)
    except ConfigError as exc:  # named after the connection's field, not the env var
        part = exc.setting.removeprefix(f"CDN_{name.upper()}_")
        field_name = {"ZONE_ID": "extra.zone_id", "BASE_URL": "host", "PROVIDER": "extra.provider"}.get(
            part, "extra.options" if part.startswith("OPTIONS") else exc.setting)
        raise ConfigError(_where(conn, field_name), exc.problem) from None


def cdn_from_connections(edge_conn, zone_conns: dict) -> CdnSettings:
    """``CdnSettings`` from ``csl_cdn_edge`` (the defaults) and the zones' connections."""
    if edge_conn is None and not zone_conns:
        return CdnSettings()
    base_url, provider, ttl, work_dir = _edge(edge_conn) if edge_conn is not None else (None, "varnish", 86400, None)
    credentials: dict = {}
    sources: dict = {}
    zones = []
    for name in CDN_ZONES:
        conn = zone_conns.get(name)
        if conn is not None:
            zones.append(_zone(conn, name, credentials, sources))
        elif base_url is not None:
            if provider in CDN_ZONE_ID_REQUIRED:
                raise ConfigError(_where(edge_conn, "extra.provider"), f"{provider!r} needs a zone id and credentials "
                                  f"per zone: define csl_cdn_{name} (or keep provider varnish here)")
            zones.append(CdnZoneSettings(name=name, provider=provider, base_url=f"{base_url}/{name}"))
    plan = credentials.pop("cloudflare_plan", "free")
    secrets = {key: Secret(value) for key, value in credentials.items()}
    try:
        creds = CdnCredentials(cloudflare_plan=plan, **secrets)
    except ConfigError as exc:
        where = ", ".join(sorted(set(sources.values()))) or "csl_cdn_*"
        raise ConfigError(f"Airflow connection(s) {where} {_CREDENTIAL_FIELDS.get(exc.setting, exc.setting)}",
                          exc.problem) from None
    for name in CDN_ZONES:
        conn = zone_conns.get(name)
        missing = creds.missing_for(conn and _provider(conn, _extra(conn, CDN_ZONE_EXTRA)) or "varnish")
        if missing:
            raise ConfigError(_where(conn, _CREDENTIAL_FIELDS[missing[0]]),
                              f"not set; zone {name!r}'s provider needs it ({missing[0]})")
    return CdnSettings(enabled=True, provider=provider, base_url=base_url, cache_ttl_s=ttl, zones=tuple(zones),
                       credentials=creds, varnish_work_dir=work_dir)


_CREDENTIAL_FIELDS = {"CDN_CLOUDFLARE_API_TOKEN": "password", "CDN_FASTLY_API_TOKEN": "password",
                      "CDN_AZURE_CLIENT_SECRET": "password", "CDN_CLOUDFRONT_SECRET_ACCESS_KEY": "password",
                      "CDN_AZURE_CLIENT_ID": "login", "CDN_CLOUDFRONT_ACCESS_KEY_ID": "login",
                      "CDN_AZURE_TENANT_ID": "extra.tenant_id", "CDN_CLOUDFLARE_PLAN": "extra.plan"}


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
    zone_conns = {zone: conn for zone in CDN_ZONES if (conn := _get(ids[f"cdn_{zone}"], required=False))}
    edge = cdn_from_connections(_get(ids["edge"], required=False), zone_conns)
    return Settings(database=database, storage=tuple(storage), edge=edge)
