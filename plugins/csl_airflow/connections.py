"""Airflow connections → ``csl.config`` settings (the only place the two meet).

Connection ids (set by the stack scripts as ``AIRFLOW_CONN_*`` env vars, or in a secrets
backend in production):

- ``csl_db`` / ``csl_db_replica``: ``postgresql://user:password@host:port/dbname``
- ``csl_storage_primary`` / ``csl_storage_fallback``: type ``aws``; login/password are the
  access key pair; extra ``endpoint_url``, ``region_name``, ``bucket``, ``provider``
  (minio|s3|supabase), ``force_path_style``, ``public_bucket``
- ``csl_cdn_edge``: type ``http``; host, port, schema (http/https); extra ``provider``,
  ``cache_ttl``
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from csl.config import DatabaseSettings, EdgeSettings, Secret, Settings, StorageProviderSettings
from csl.errors import ConfigError

__all__ = ["settings_from_connections", "database_url", "DEFAULT_CONN_IDS"]

DEFAULT_CONN_IDS = {
    "db": "csl_db",
    "replica": "csl_db_replica",
    "storage_primary": "csl_storage_primary",
    "storage_fallback": "csl_storage_fallback",
    "edge": "csl_cdn_edge",
}


def _get(conn_id: str, *, required: bool):
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if required:
            raise ConfigError(f"Airflow connection {conn_id!r}", "not defined (set AIRFLOW_CONN_"
                              f"{conn_id.upper()} or add it in Admin → Connections)") from None
        return None


def database_url(conn) -> str:
    """A libpq URL from a postgres connection (extra keys become query parameters)."""
    if not conn.host or not conn.schema:
        raise ConfigError(f"Airflow connection {conn.conn_id!r}", "needs a host and a database (schema)")
    auth = quote(conn.login or "", safe="")
    if conn.password:
        auth += ":" + quote(conn.password, safe="")
    query = urlencode({k: v for k, v in (conn.extra_dejson or {}).items() if isinstance(v, (str, int))})
    port = f":{conn.port}" if conn.port else ""
    return f"postgresql://{auth}@{conn.host}{port}/{conn.schema}" + (f"?{query}" if query else "")


def _storage(conn, name: str) -> StorageProviderSettings:
    extra = conn.extra_dejson or {}
    if not extra.get("bucket"):
        raise ConfigError(f"Airflow connection {conn.conn_id!r}", "extra.bucket is required")
    if not conn.login or not conn.password:
        raise ConfigError(f"Airflow connection {conn.conn_id!r}", "login and password (the access key pair) are required")
    return StorageProviderSettings(
        name=name,
        kind=extra.get("provider", "s3"),
        bucket=extra["bucket"],
        access_key=Secret(conn.login),
        secret_key=Secret(conn.password),
        endpoint_url=extra.get("endpoint_url"),
        region=extra.get("region_name", "us-east-1"),
        force_path_style=bool(extra.get("force_path_style", True)),
        public_bucket=bool(extra.get("public_bucket", False)),
    )


def _edge(conn) -> EdgeSettings:
    extra = conn.extra_dejson or {}
    scheme = conn.schema or "http"
    port = f":{conn.port}" if conn.port else ""
    return EdgeSettings(enabled=True, provider=extra.get("provider", "varnish"),
                        base_url=f"{scheme}://{conn.host}{port}", cache_ttl_s=int(extra.get("cache_ttl", 86400)))


def settings_from_connections(conn_ids: dict[str, str] | None = None, *, max_replica_lag_s: float = 30.0) -> Settings:
    """Settings from Airflow connections; the replica, fallback and edge are optional."""
    ids = {**DEFAULT_CONN_IDS, **(conn_ids or {})}
    primary = _get(ids["db"], required=True)
    replica = _get(ids["replica"], required=False)
    database = DatabaseSettings(primary_url=database_url(primary),
                                replica_url=database_url(replica) if replica else None,
                                max_replica_lag_s=max_replica_lag_s, application_name="csl-airflow")
    storage = []
    for name in ("primary", "fallback"):
        conn = _get(ids[f"storage_{name}"], required=name == "primary")
        if conn is not None:
            storage.append(_storage(conn, name))
    edge_conn = _get(ids["edge"], required=False)
    edge = _edge(edge_conn) if edge_conn else EdgeSettings()
    return Settings(database=database, storage=tuple(storage), edge=edge)
