"""The platform health check: database primary/replica/lag, each storage provider, the edge."""

from __future__ import annotations

import time
from typing import Any

from csl.cdn import VarnishEdge
from csl.config import Settings
from csl.db import Database
from csl.errors import CslError
from csl.storage import StorageProvider

__all__ = ["check_database", "check_edge", "check_storage", "down_components", "platform_health"]

_READ_PROBE = "SELECT count(*) FROM pg_catalog.pg_class"


def check_database(settings: Settings) -> dict[str, Any]:
    """Primary, replica and lag, plus one real routed read (which must work either way)."""
    with Database(settings.require_database(), route_cache_s=0) as db:
        report = db.health()
        started = time.perf_counter()
        try:
            route = db.read_route()
            db.read(_READ_PROBE)
            report["reads"].update(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2),
                                   target=route.target)
        except CslError as exc:
            report["reads"].update(ok=False, error=str(exc))
    return report


def check_storage(settings: Settings, provider_name: str) -> dict[str, Any]:
    return StorageProvider(settings.provider(provider_name), max_attempts=1).health()


def check_edge(settings: Settings) -> dict[str, Any]:
    with VarnishEdge(settings.edge) as edge:
        return edge.health()


def down_components(report: dict[str, Any]) -> list[str]:
    """Names of every component that is not healthy, e.g. ``["database.replica"]``."""
    down = []
    database = report.get("database")
    if database:
        for part in ("primary", "replica", "reads"):
            info = database.get(part, {})
            if part == "replica" and not info.get("configured", True):
                continue
            if not info.get("ok", False):
                down.append(f"database.{part}")
    for name, info in report.get("storage", {}).items():
        if not info.get("ok"):
            down.append(f"storage.{name}")
    edge = report.get("edge")
    if edge is not None and not edge.get("ok"):
        down.append("edge")
    return down


def platform_health(settings: Settings, *, storage: bool = True, edge: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {"database": check_database(settings)}
    if storage:
        report["storage"] = {p.name: check_storage(settings, p.name) for p in settings.storage}
    if edge and settings.edge.base_url:
        report["edge"] = check_edge(settings)
    report["down"] = down_components(report)
    report["ok"] = not report["down"]
    return report
