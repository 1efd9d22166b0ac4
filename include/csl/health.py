"""The platform health check: database primary/replica/lag, each storage provider, the CDN zones.

The edge component (``edge``) is the CDN, checked per configured zone (audio, images, static:
reachability, latency, hit ratio where the provider has it); a zone that is down is named
``edge.<zone>``, and tolerating ``edge`` tolerates every zone.

One entry point per use: :func:`platform_health` checks everything at once (``python -m csl
health``); :func:`check_component` checks one component (one Airflow task each) and
:func:`summarise` joins their reports, with the components a run tolerates, into the same
:class:`HealthReport`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from csl.cdn import Cdn
from csl.config import CDN_ZONES, Settings
from csl.db import Database
from csl.errors import BadInput, ConfigError, CslError, ProblemFound
from csl.storage import providers_for

__all__ = [
    "COMPONENTS",
    "ComponentDown",
    "ComponentReport",
    "HealthParamsError",
    "HealthReport",
    "check_component",
    "check_database",
    "check_edge",
    "check_storage",
    "down_components",
    "format_health",
    "platform_health",
    "summarise",
]

_READ_PROBE = "SELECT count(*) FROM pg_catalog.pg_class"

# What a run may tolerate: the parts a health report names when they are down.
COMPONENTS = ("database.primary", "database.replica", "database.reads", "storage.primary", "storage.fallback", "edge",
              *(f"edge.{zone}" for zone in CDN_ZONES))


class HealthParamsError(BadInput, ValueError):
    """A component or part name the health check does not know."""


class ComponentDown(ProblemFound):
    """A checked component is down (the report says which part and why)."""


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
    return providers_for(settings, [provider_name], max_attempts=1)[0].health()


def check_edge(settings: Settings) -> dict[str, Any]:
    """Every configured CDN zone (``csl.cdn.Cdn.health``): ``zones`` per zone, ``ok`` when all are,
    ``error`` naming each zone that is down."""
    cdn = settings.edge
    if not cdn.zones:
        raise ConfigError("CDN_BASE_URL", "not set; expected the edge's http(s):// base URL")
    with Cdn.from_settings(cdn) as client:
        zones = client.health()
    down = [name for name, info in zones.items() if not info.get("ok")]
    latencies = [info["latency_ms"] for info in zones.values() if info.get("latency_ms") is not None]
    report: dict[str, Any] = {
        "ok": not down, "provider": cdn.provider, "base_url": cdn.base_url, "zones": zones,
        "backend_healthy": all(info.get("backend_healthy", info.get("ok")) for info in zones.values()),
        "latency_ms": max(latencies) if latencies else None,
    }
    if down:
        report["error"] = "; ".join(f"zone {name} ({zones[name].get('base_url')}): {zones[name].get('error', 'unhealthy')}"
                                    for name in down)
    return report


def _edge_down(edge: Mapping[str, Any]) -> list[str]:
    """``edge.<zone>`` for each zone down; ``edge`` for a report without zones that is down."""
    zones = edge.get("zones")
    if zones:
        return [f"edge.{name}" for name, info in zones.items() if not info.get("ok")]
    return [] if edge.get("ok") else ["edge"]


def _tolerated(name: str, tolerate: frozenset[str]) -> bool:
    return any(name == part or name.startswith(part + ".") for part in tolerate)


def _down_in(database: Mapping[str, Any] | None, storage: Mapping[str, Any], edge: Mapping[str, Any] | None) -> list[str]:
    down = []
    if database:
        for part in ("primary", "replica", "reads"):
            info = database.get(part, {})
            if part == "replica" and not info.get("configured", True):
                continue
            if not info.get("ok", False):
                down.append(f"database.{part}")
    for name, info in storage.items():
        if not info.get("ok"):
            down.append(f"storage.{name}")
    if edge is not None:
        down.extend(_edge_down(edge))
    return down


def down_components(report: Mapping[str, Any]) -> list[str]:
    """Names of every component that is not healthy, e.g. ``["database.replica"]``."""
    return _down_in(report.get("database"), report.get("storage", {}), report.get("edge"))


@dataclass(frozen=True)
class ComponentReport:
    """One component's check: ``database``, ``storage.<provider>`` or ``edge``, and its figures."""

    component: str
    report: dict[str, Any]

    @property
    def failing(self) -> list[str]:
        """The parts whose state fails this component's check. The database fails only when the
        primary or reads are down: a replica down or lagging is reported, reads go to the primary."""
        if self.component == "database":
            return [f"database.{part}" for part in ("primary", "reads") if not self.report[part].get("ok")]
        if self.component == "edge":
            return _edge_down(self.report)
        return [] if self.report.get("ok") else [self.component]

    @property
    def replica_note(self) -> str | None:
        """Why reads went to the primary, when the replica is configured and down or lagging."""
        if self.component != "database":
            return None
        replica = self.report["replica"]
        if replica.get("ok") or not replica.get("configured", True):
            return None
        return f"replica down or lagging ({replica.get('error')}); reads routed to {self.report['reads']['target']}"

    def raise_if_down(self) -> None:
        """:class:`ComponentDown` naming each failing part and its error."""
        failing = self.failing
        if failing:
            details = "; ".join(f"{part}: {self._info(part).get('error', 'unhealthy')}" for part in failing)
            raise ComponentDown(f"{', '.join(failing)} down: {details}")

    def _info(self, part: str) -> dict[str, Any]:
        if part.startswith("database."):
            return self.report.get(part.split(".", 1)[1], {})
        if part.startswith("edge."):
            return self.report.get("zones", {}).get(part.split(".", 1)[1], {})
        return self.report

    def as_dict(self) -> dict[str, Any]:
        return {"component": self.component, "report": self.report}


def check_component(settings: Settings, component: str, provider: str | None = None) -> ComponentReport:
    """Check ``database``, ``storage`` (with ``provider``) or ``edge``."""
    if component == "database":
        return ComponentReport("database", check_database(settings))
    if component == "storage":
        if not provider:
            raise HealthParamsError("component 'storage' needs a provider name")
        return ComponentReport(f"storage.{provider}", check_storage(settings, provider))
    if component == "edge":
        return ComponentReport("edge", check_edge(settings))
    raise HealthParamsError(f"component must be database, storage or edge, got {component!r}")


@dataclass(frozen=True)
class HealthReport:
    """Every component's figures, what is down, and what of that fails the run (``tolerate``
    names parts allowed to be down, e.g. the replica during a rebuild; a component expected but
    never reported is down as ``<name> (no report)``)."""

    database: dict[str, Any] | None = None
    storage: dict[str, dict[str, Any]] = field(default_factory=dict)
    edge: dict[str, Any] | None = None
    unreported: tuple[str, ...] = ()
    tolerate: frozenset[str] = frozenset()

    @property
    def down(self) -> list[str]:
        return _down_in(self.database, self.storage, self.edge) + [f"{c} (no report)" for c in self.unreported]

    @property
    def failing(self) -> list[str]:
        return [c for c in self.down if not _tolerated(c.split(" ")[0], self.tolerate)]

    @property
    def ok(self) -> bool:
        return not self.failing

    def raise_if_unhealthy(self) -> None:
        if self.failing:
            raise ComponentDown("platform unhealthy, down: " + ", ".join(self.failing))

    def as_dict(self) -> dict[str, Any]:
        parts: dict[str, Any] = {"storage": self.storage}
        if self.database is not None:
            parts["database"] = self.database
        if self.edge is not None:
            parts["edge"] = self.edge
        return {**parts, "down": self.down, "failing": self.failing, "ok": self.ok, "tolerated": sorted(self.tolerate)}

    def format(self) -> str:
        return format_health(self.as_dict())


def summarise(reports: Iterable[Mapping[str, Any] | ComponentReport | None], *, expected: Iterable[str],
              tolerate: Iterable[str] | None = ()) -> HealthReport:
    """One :class:`HealthReport` from component reports (``ComponentReport`` or its ``as_dict()``;
    None for a check that reported nothing). ``tolerate`` must name known components."""
    tolerated = frozenset(tolerate or ())
    unknown = sorted(tolerated - set(COMPONENTS))
    if unknown:
        raise HealthParamsError(f"tolerate: unknown component(s) {', '.join(unknown)}; known: {', '.join(COMPONENTS)}")
    parts: dict[str, Any] = {"storage": {}}
    seen = set()
    for item in reports:
        if item is None:
            continue
        item = item.as_dict() if isinstance(item, ComponentReport) else item
        name = item["component"]
        seen.add(name)
        if name.startswith("storage."):
            parts["storage"][name.split(".", 1)[1]] = item["report"]
        else:
            parts[name] = item["report"]
    return HealthReport(database=parts.get("database"), storage=parts["storage"], edge=parts.get("edge"),
                        unreported=tuple(c for c in expected if c not in seen), tolerate=tolerated)


def platform_health(settings: Settings, *, storage: bool = True, edge: bool = True) -> HealthReport:
    """Every component, checked one after the other (``python -m csl health``)."""
    return HealthReport(database=check_database(settings),
                        storage={p.name: check_storage(settings, p.name) for p in settings.storage} if storage else {},
                        edge=check_edge(settings) if edge and settings.edge.zones else None)


def format_health(report: Mapping[str, Any]) -> str:
    """A one-screen summary of a health report (``HealthReport.as_dict()``)."""
    def mark(ok: bool) -> str:
        return "ok  " if ok else "DOWN"

    lines = []
    db = report["database"]
    primary, replica, reads = db["primary"], db["replica"], db["reads"]
    lines.append(f"[{mark(primary['ok'])}] database primary   {db['url']}  "
                 + (f"PostgreSQL {primary.get('version')}, {primary.get('latency_ms')} ms, "
                    f"{primary.get('streaming_replicas')} streaming replica(s)" if primary["ok"] else primary.get("error", "")))
    if replica.get("configured", True):
        lag = replica.get("lag_s")
        lines.append(f"[{mark(replica['ok'])}] database replica   "
                     + (f"lag {lag:.2f} s, {replica.get('latency_ms')} ms" if replica["ok"] else replica.get("error", "")))
    lines.append(f"[{mark(reads.get('ok', False))}] reads routed to    {reads['target']} ({reads['reason']})")
    for name, info in report.get("storage", {}).items():
        lines.append(f"[{mark(info['ok'])}] storage {name:<10} {info['kind']} {info['endpoint']} bucket {info['bucket']}  "
                     + (f"put/get/delete {info['latency_ms']} ms" if info["ok"] else info.get("error", "")))
    edge = report.get("edge")
    if edge is not None:
        for name, info in (edge.get("zones") or {"": edge}).items():
            ratio = info.get("hit_ratio")
            lines.append(f"[{mark(info['ok'])}] cdn {name or 'edge':<14} {info.get('provider')} {info.get('base_url')}  "
                         + (f"{info.get('latency_ms')} ms" + (f", hit ratio {ratio:.1%}" if ratio is not None else "")
                            if info["ok"] else info.get("error", "")))
    tolerated = [c for c in report["down"] if c not in report.get("failing", report["down"])]
    lines.append(("healthy" if report["ok"] else "UNHEALTHY: " + ", ".join(report.get("failing", report["down"])))
                 + (f" (tolerated: {', '.join(tolerated)})" if tolerated else ""))
    return "\n".join(lines)
