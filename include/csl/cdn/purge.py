"""Purges: what the edge must drop → batches at each provider's limits → sent under its rate
limit → recorded in ``csl_ops.cdn_purges`` → the ``cdn_purge_queue`` rows they satisfy marked purged.

Three steps, each callable again with the same result (a task retry, a rerun of the CLI):

- ``plan_purges``: the queue's owed rows and a person's URLs / tags / prefixes (``PurgeRequest``,
  validated before anything is written), deduplicated, grouped by zone, cut into batches of at
  most the provider's items per call; each batch a ``planned`` row whose id is derived from the run
  and its items, so planning the same run again finds the same rows.
- ``send_purges``: every batch of the run not yet confirmed, through a token bucket per provider;
  ``Throttled`` waits (``Retry-After`` when given) and sends the same batch again, ``BatchTooLarge``
  splits it in halves, ``CdnUnavailable`` backs off and retries; a batch refused for good is
  ``failed`` and the others still go. Batches that complete on reply are ``done`` (their queue rows
  purged); the others are ``pending`` with the provider's request id.
- ``settle_completion``: the states of pending batches (polled by the caller: the DAG's trigger,
  or ``wait_for_completion`` for the CLI) written back; ``summarise`` the run per provider and zone.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from csl.cdn.base import (
    PURGE_KINDS,
    BatchTooLarge,
    CdnInputError,
    CdnProvider,
    CdnRefused,
    CdnUnavailable,
    PurgeBatch,
    Throttled,
    Zone,
    batch_id_for,
)
from csl.cdn.zones import zone_for_url
from csl.errors import ProblemFound, Transient

__all__ = [
    "MAX_MANUAL_ITEMS",
    "PurgeFailed",
    "PurgePlan",
    "PurgeRequest",
    "PurgeStillPending",
    "PurgeSummary",
    "TokenBucket",
    "manual_requests",
    "pending_batches",
    "plan_purges",
    "poll_pending",
    "send_purges",
    "settle_completion",
    "summarise",
    "wait_for_completion",
]

log = logging.getLogger("csl.cdn.purge")

MAX_MANUAL_ITEMS = 10_000      # URLs + tags + prefixes a person may ask for in one run
MAX_QUEUE_ROWS = 50_000        # queue rows one run takes (the rest wait for the next run)
_TAG = re.compile(r"^[\x21-\x7e]{1,1024}$")  # printable ASCII without spaces: every provider's tag alphabet


class PurgeFailed(ProblemFound):
    """Batches a provider refused for good (credentials, a malformed request): named with the error."""


class PurgeStillPending(Transient):
    """Batches whose provider has not finished them yet (the CLI's wait ran out): run again later."""


class PurgeUnsent(Transient):
    """Batches that could not be sent (provider unreachable or throttled past every retry): retried."""


@dataclass(frozen=True)
class PurgeRequest:
    """One thing to drop from one zone: a URL, a tag or a URL prefix (``everything``: the zone)."""

    zone: str
    kind: str
    item: str
    queue_ids: tuple[int, ...] = ()


def manual_requests(zones: Mapping[str, Zone], *, urls: Iterable[str] = (), tags: Iterable[str] = (),
                    prefixes: Iterable[str] = (), zone: str | None = None, provider: str | None = None,
                    supports: Callable[[Zone, str], bool] | None = None) -> list[PurgeRequest]:
    """A person's purge (the DAG's Params, the CLI's flags) as requests, every value checked first.

    URLs and prefixes go to the zone they lie under (``zone``, when given, must be it). Tags have no
    URL: they go to ``zone``, or to every zone (of ``provider``, when given) whose provider has tag
    purges. A value that fits nothing is refused naming it; so is an unknown zone or provider."""
    urls, tags, prefixes = list(urls or ()), list(tags or ()), list(prefixes or ())
    total = len(urls) + len(tags) + len(prefixes)
    if total > MAX_MANUAL_ITEMS:
        raise CdnInputError(f"{total} URLs, tags and prefixes in one purge; at most {MAX_MANUAL_ITEMS}")
    if zone is not None and zone not in zones:
        raise CdnInputError(f"unknown CDN zone {zone!r}; configured: {', '.join(sorted(zones)) or 'none'}")
    if provider is not None and provider not in {z.provider for z in zones.values()}:
        raise CdnInputError(f"no CDN zone is served by provider {provider!r}; configured: "
                            f"{', '.join(sorted({z.provider for z in zones.values()})) or 'none'}")
    chosen = {n: z for n, z in zones.items() if (zone is None or n == zone) and (provider is None or z.provider == provider)}
    if not chosen:
        raise CdnInputError(f"zone {zone!r} is not served by provider {provider!r}")
    requests: list[PurgeRequest] = []
    for kind, values in (("url", urls), ("prefix", prefixes)):
        for value in values:
            if not isinstance(value, str):
                raise CdnInputError(f"{kind} must be text, got {value!r}")
            target = zone_for_url(zones, value)
            if target.name not in chosen:
                raise CdnInputError(f"{kind} {value!r} lies in zone {target.name!r} ({target.provider}), "
                                    f"not in the zone/provider this purge is limited to")
            requests.append(PurgeRequest(target.name, kind, value))
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.match(tag):
            raise CdnInputError(f"tag {tag!r}: expected 1-1024 printable characters without spaces")
        targets = [z for z in chosen.values() if supports is None or supports(z, "tag")]
        if not targets:
            raise CdnInputError(f"tag {tag!r}: no chosen zone's provider purges by tag "
                                f"({', '.join(f'{z.name}: {z.provider}' for z in chosen.values())})")
        requests.extend(PurgeRequest(z.name, "tag", tag) for z in targets)
    if supports is not None:
        for request in requests:
            target = zones[request.zone]
            if not supports(target, request.kind):
                raise CdnInputError(f"{request.kind} purges are not available on provider {target.provider!r} "
                                    f"(zone {target.name!r}): {request.item!r}")
    return requests


def _queue_requests(conn: Any, zones: Mapping[str, Zone], limit: int, supports: Callable[[Zone, str], bool]
                    ) -> tuple[list[PurgeRequest], list[tuple[int, str]]]:
    """Owed queue rows as URL purges (without a URL: their tags, in every zone whose provider purges
    by tag); rows that fit no zone are returned apart with why, and stay owed."""
    rows = conn.execute(
        "SELECT id, public_url, tags FROM csl_ops.cdn_purge_queue WHERE purged_at IS NULL "
        "ORDER BY enqueued_at, id LIMIT %s", (limit,)).fetchall()
    requests, unroutable = [], []
    for id_, url, tags in rows:
        try:
            if url:
                requests.append(PurgeRequest(zone_for_url(zones, url).name, "url", url, (id_,)))
            elif tags and any(supports(z, "tag") for z in zones.values()):
                requests.extend(PurgeRequest(z.name, "tag", t, (id_,)) for z in zones.values() if supports(z, "tag")
                                for t in tags)
            else:
                unroutable.append((id_, "no public URL, and no tags a zone's provider could purge"))
        except CdnInputError as exc:
            unroutable.append((id_, str(exc)))
    return requests, unroutable


@dataclass(frozen=True)
class PurgePlan:
    run_key: str
    batches: tuple[PurgeBatch, ...]
    queue_rows: int
    unroutable: tuple[tuple[int, str], ...] = ()
    dry_run: bool = False

    @property
    def empty(self) -> bool:
        return not self.batches

    def totals(self) -> dict[str, dict[str, int]]:
        """Per ``provider/zone``: batches and items."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"batches": 0, "items": 0})
        for b in self.batches:
            out[f"{b.provider}/{b.zone}"]["batches"] += 1
            out[f"{b.provider}/{b.zone}"]["items"] += len(b.items)
        return dict(out)

    def as_dict(self) -> dict[str, Any]:
        return {"run_key": self.run_key, "dry_run": self.dry_run, "queue_rows": self.queue_rows,
                "batches": [b.as_dict() for b in self.batches], "totals": self.totals(),
                "unroutable": [{"queue_id": i, "why": w} for i, w in self.unroutable]}


def _cut(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def plan_purges(conn: Any, zones: Mapping[str, Zone], limits_for: Callable[[Zone], Any], *, run_key: str,
                requests: Sequence[PurgeRequest] = (), include_queue: bool = True, dry_run: bool = False,
                queue_limit: int = MAX_QUEUE_ROWS) -> PurgePlan:
    """Deduplicate the requests (and the queue's owed rows), group them by zone and kind, cut them
    at the provider's limit and record each batch as ``planned`` (not for a dry run). The same run
    planned again finds its batches already there (their ids derive from the run and the items)."""
    supports = lambda zone, kind: limits_for(zone).supports(kind)
    queued, unroutable = _queue_requests(conn, zones, queue_limit, supports) if include_queue else ([], [])
    wanted: dict[tuple[str, str], dict[str, set[int]]] = defaultdict(dict)
    for r in [*requests, *queued]:
        if r.kind not in PURGE_KINDS:
            raise CdnInputError(f"unknown purge kind {r.kind!r}; expected one of {', '.join(PURGE_KINDS)}")
        wanted[(r.zone, r.kind)].setdefault(r.item, set()).update(r.queue_ids)
    batches: list[PurgeBatch] = []
    owners: dict[str, list[int]] = {}
    for (zone_name, kind), items in sorted(wanted.items()):
        zone = zones[zone_name]
        limits = limits_for(zone)
        if not limits.supports(kind):
            raise CdnInputError(f"{kind} purges are not available on provider {zone.provider!r} (zone {zone_name!r})")
        for chunk in _cut(sorted(items), max(1, limits.max_items[kind])):
            batch = PurgeBatch(batch_id_for(run_key, zone.provider, zone_name, kind, chunk), zone.provider,
                               zone_name, kind, tuple(chunk))
            batches.append(batch)
            owners[batch.batch_id] = sorted({i for item in chunk for i in items[item]})
    plan = PurgePlan(run_key, tuple(batches), len({i for r in queued for i in r.queue_ids}), tuple(unroutable), dry_run)
    if dry_run:
        return plan
    with conn.transaction():
        for batch in batches:
            conn.execute(
                "INSERT INTO csl_ops.cdn_purges (batch_id, run_key, provider, zone, kind, items, queue_ids) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (batch_id) DO NOTHING",
                (batch.batch_id, run_key, batch.provider, batch.zone, batch.kind, list(batch.items),
                 owners[batch.batch_id]))
        for id_, why in unroutable:
            conn.execute("UPDATE csl_ops.cdn_purge_queue SET attempts = attempts + 1, last_error = %s WHERE id = %s",
                         (why[:2000], id_))
    log.info("purge plan %s: %d batch(es) %s; %d queue row(s); %d unroutable", run_key, len(batches),
             plan.totals(), plan.queue_rows, len(unroutable))
    return plan


class TokenBucket:
    """Calls (or items) per second up to a burst: ``take(n)`` waits until ``n`` tokens are there.
    Starts full. ``clock`` and ``sleep`` are seams for tests."""

    def __init__(self, rate_per_s: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not (rate_per_s > 0 and burst >= 1):
            raise ValueError(f"a token bucket needs rate > 0 and burst ≥ 1, got {rate_per_s}, {burst}")
        self.rate, self.burst, self._clock, self._sleep = rate_per_s, float(burst), clock, sleep
        self._tokens, self._at = float(burst), clock()
        self.waited_s = 0.0

    def take(self, n: float = 1.0) -> None:
        n = min(float(n), self.burst)  # a request bigger than the bucket waits for a full one
        while True:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= n:
                self._tokens -= n
                return
            wait = (n - self._tokens) / self.rate
            self.waited_s += wait
            self._sleep(wait)


@dataclass(frozen=True)
class _Row:
    id: int
    batch: PurgeBatch
    queue_ids: tuple[int, ...]
    attempts: int


def _open_rows(conn: Any, run_key: str) -> list[_Row]:
    rows = conn.execute(
        "SELECT id, batch_id, provider, zone, kind, items, queue_ids, attempts FROM csl_ops.cdn_purges "
        "WHERE run_key = %s AND status IN ('planned', 'sending', 'failed') ORDER BY id", (run_key,)).fetchall()
    return [_Row(r[0], PurgeBatch(r[1], r[2], r[3], r[4], tuple(r[5])), tuple(r[6]), r[7]) for r in rows]


def _mark_queue(conn: Any, purge_id: int, queue_ids: Sequence[int], *, purged: bool, error: str | None = None) -> None:
    if not queue_ids:
        return
    if purged:
        conn.execute("UPDATE csl_ops.cdn_purge_queue SET purged_at = now(), purge_id = %s, last_error = NULL "
                     "WHERE id = ANY(%s) AND purged_at IS NULL", (purge_id, list(queue_ids)))
    else:
        conn.execute("UPDATE csl_ops.cdn_purge_queue SET attempts = attempts + 1, purge_id = %s, last_error = %s "
                     "WHERE id = ANY(%s) AND purged_at IS NULL", (purge_id, (error or "")[:2000], list(queue_ids)))


def _finish(conn: Any, row_id: int, queue_ids: Sequence[int], *, status: str, request_id: str | None = None,
            purged: int | None = None, error: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE csl_ops.cdn_purges SET status = %s, request_id = coalesce(%s, request_id), purged = %s, "
            "error = %s, detail = detail || %s, sent_at = coalesce(sent_at, now()), "
            "completed_at = CASE WHEN %s IN ('done', 'failed') THEN now() END WHERE id = %s",
            (status, request_id, purged, (error or None) and error[:2000], Jsonb(dict(detail or {})), status, row_id))
        if status == "done":
            _mark_queue(conn, row_id, queue_ids, purged=True)
        elif status == "failed":
            _mark_queue(conn, row_id, queue_ids, purged=False, error=error)


def _split(conn: Any, row: _Row, run_key: str) -> list[_Row]:
    """Two halves of a batch the provider refused for its size, recorded as children of it."""
    half = math.ceil(len(row.batch.items) / 2)
    children = []
    with conn.transaction():
        conn.execute("UPDATE csl_ops.cdn_purges SET status = 'split', completed_at = now() WHERE id = %s", (row.id,))
        for chunk in (row.batch.items[:half], row.batch.items[half:]):
            b = row.batch
            batch = PurgeBatch(batch_id_for(run_key, b.provider, b.zone, b.kind, chunk), b.provider, b.zone, b.kind,
                               tuple(chunk))
            id_ = conn.execute(
                "INSERT INTO csl_ops.cdn_purges (batch_id, run_key, provider, zone, kind, items, queue_ids, parent_id) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (batch_id) DO UPDATE SET parent_id = excluded.parent_id "
                "RETURNING id", (batch.batch_id, run_key, b.provider, b.zone, b.kind, list(chunk),
                                 list(row.queue_ids), row.id)).fetchone()[0]
            children.append(_Row(id_, batch, row.queue_ids, 0))
    return children


@dataclass
class SendResult:
    """What ``send_purges`` did: per ``provider/zone`` the batches done, pending, failed, unsent."""

    run_key: str
    by_target: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(
        lambda: {"done": 0, "pending": 0, "failed": 0, "unsent": 0, "split": 0, "items": 0, "purged": 0}))
    errors: list[str] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)
    waited_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"run_key": self.run_key, "by_target": {k: dict(v) for k, v in self.by_target.items()},
                "errors": self.errors[:50], "transient": self.transient[:50], "waited_s": round(self.waited_s, 3)}

    def check(self) -> None:
        """Refused batches fail the run (no retry); unsent ones ask for a retry."""
        if self.errors:
            raise PurgeFailed(f"{len(self.errors)} purge batch(es) refused; first: {self.errors[0]}")
        if self.transient:
            raise PurgeUnsent(f"{len(self.transient)} purge batch(es) not sent; first: {self.transient[0]}")


def send_purges(conn: Any, zones: Mapping[str, Zone], provider_for: Callable[[Zone], CdnProvider], *,
                run_key: str, connect: Callable[[], Any] | None = None, max_attempts: int = 5,
                max_wait_s: float = 120.0, sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> SendResult:
    """Send the run's batches not yet confirmed (planned, interrupted, failed earlier), each
    provider under its token bucket; a batch refused for its size goes again as two halves.

    With ``connect`` (a factory of autocommit connections) each provider is sent to from a thread
    of its own with a connection of its own: providers are independent, so one that is rate-limited
    (Azure's one call a second) does not hold back the others."""
    by_provider: dict[str, list[_Row]] = {}
    for row in _open_rows(conn, run_key):
        by_provider.setdefault(row.batch.provider, []).append(row)
    options = {"run_key": run_key, "max_attempts": max_attempts, "max_wait_s": max_wait_s, "sleep": sleep,
               "clock": clock}
    if connect is None or len(by_provider) < 2:
        result = SendResult(run_key)
        for rows in by_provider.values():
            _send_rows(conn, rows, zones, provider_for, result, **options)
        return result

    def one(rows: list[_Row]) -> SendResult:
        part = SendResult(run_key)
        with connect() as own:
            _send_rows(own, rows, zones, provider_for, part, **options)
        return part

    from concurrent.futures import ThreadPoolExecutor

    result = SendResult(run_key)
    with ThreadPoolExecutor(max_workers=len(by_provider), thread_name_prefix="csl-purge") as pool:
        for part in pool.map(one, by_provider.values()):
            result.by_target.update(part.by_target)
            result.errors += part.errors
            result.transient += part.transient
            result.waited_s += part.waited_s
    return result


def _send_rows(conn: Any, rows: Sequence[_Row], zones: Mapping[str, Zone],
               provider_for: Callable[[Zone], CdnProvider], result: SendResult, *, run_key: str, max_attempts: int,
               max_wait_s: float, sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
    """One provider's batches, in order, under its buckets; what happened goes into ``result``."""
    buckets: dict[str, tuple[TokenBucket, TokenBucket | None]] = {}
    todo = deque(rows)
    while todo:
        row = todo.popleft()
        batch, zone = row.batch, zones.get(row.batch.zone)
        target = result.by_target[f"{batch.provider}/{batch.zone}"]
        if zone is None or zone.provider != batch.provider:
            error = f"zone {batch.zone!r} is no longer served by {batch.provider!r}"
            _finish(conn, row.id, row.queue_ids, status="failed", error=error)
            target["failed"] += 1
            result.errors.append(f"{batch.provider}/{batch.zone} batch {batch.batch_id}: {error}")
            continue
        provider = provider_for(zone)
        if batch.provider not in buckets:
            limits = provider.limits
            items = TokenBucket(limits.items_per_s, max(limits.items_per_s, 1), clock=clock, sleep=sleep) \
                if limits.items_per_s else None
            buckets[batch.provider] = (TokenBucket(limits.rate_per_s, limits.burst, clock=clock, sleep=sleep), items)
        calls, items_bucket = buckets[batch.provider]
        attempt, outcome = row.attempts, None
        while outcome is None:
            attempt += 1
            conn.execute("UPDATE csl_ops.cdn_purges SET status = 'sending', attempts = %s, error = NULL WHERE id = %s",
                         (attempt, row.id))
            calls.take()
            if items_bucket is not None:
                items_bucket.take(len(batch.items))
            started = clock()
            try:
                response = provider.purge(zone, batch)
            except BatchTooLarge as exc:
                if len(batch.items) > 1:
                    log.info("%s refused %d items in one call (%s): sending halves", batch.provider,
                             len(batch.items), exc)
                    todo.extendleft(reversed(_split(conn, row, run_key)))
                    target["split"] += 1
                    outcome = "split"
                else:
                    outcome = ("failed", str(exc))
            except CdnRefused as exc:
                outcome = ("failed", str(exc))
            except (Throttled, CdnUnavailable) as exc:
                if attempt - row.attempts >= max_attempts:
                    outcome = ("unsent", str(exc))
                else:
                    hinted = getattr(exc, "retry_after_s", None)
                    wait = min(max_wait_s, hinted if hinted is not None else 2.0 ** (attempt - row.attempts - 1))
                    log.warning("%s: %s; waiting %.1f s before sending batch %s again", batch.provider, exc, wait,
                                batch.batch_id)
                    result.waited_s += wait
                    sleep(wait)
            else:
                elapsed_ms = round((clock() - started) * 1000, 1)
                detail = {**response.detail, "elapsed_ms": elapsed_ms}
                if response.status == "pending" and not response.request_id:
                    outcome = ("failed", "the provider accepted the purge but gave no id to follow it by")
                else:
                    _finish(conn, row.id, row.queue_ids, status=response.status, request_id=response.request_id,
                            purged=response.purged, detail=detail,
                            error=(response.detail.get("error") if response.status == "failed" else None))
                    target[response.status if response.status in target else "failed"] += 1
                    target["items"] += len(batch.items)
                    target["purged"] += response.purged or 0
                    outcome = "recorded"
        if isinstance(outcome, tuple):
            status, error = outcome
            _finish(conn, row.id, row.queue_ids, status="failed", error=error)
            target["unsent" if status == "unsent" else "failed"] += 1
            (result.transient if status == "unsent" else result.errors).append(
                f"{batch.provider}/{batch.zone} batch {batch.batch_id} ({len(batch.items)} {batch.kind}s): {error}")
    result.waited_s += sum(b.waited_s + (i.waited_s if i else 0.0) for b, i in buckets.values())


def pending_batches(conn: Any, run_key: str) -> list[dict[str, Any]]:
    """The run's batches a provider accepted and has not finished: what the trigger polls."""
    rows = conn.execute("SELECT batch_id, provider, zone, request_id FROM csl_ops.cdn_purges "
                        "WHERE run_key = %s AND status = 'pending' ORDER BY id", (run_key,)).fetchall()
    return [{"batch_id": b, "provider": p, "zone": z, "request_id": r} for b, p, z, r in rows]


def settle_completion(conn: Any, states: Mapping[str, str], *, errors: Mapping[str, str] | None = None) -> dict[str, int]:
    """Write back what the providers said of pending batches (``batch_id → done | failed |
    pending``); done batches mark their queue rows purged. Returns counts by state."""
    counts: dict[str, int] = defaultdict(int)
    for batch_id, state in states.items():
        row = conn.execute("SELECT id, queue_ids, status FROM csl_ops.cdn_purges WHERE batch_id = %s",
                           (batch_id,)).fetchone()
        if row is None or row[2] != "pending":
            continue
        if state in ("done", "failed"):
            _finish(conn, row[0], row[1], status=state, error=(errors or {}).get(batch_id) if state == "failed" else None)
        counts[state] += 1
    return dict(counts)


async def poll_pending(pending: Sequence[Mapping[str, Any]], zones: Mapping[str, Zone],
                       provider_for: Callable[[Zone], CdnProvider], *, poll_s: float = 30.0, timeout_s: float = 3600.0,
                       sleep: Callable[[float], Any] | None = None,
                       clock: Callable[[], float] = time.monotonic) -> tuple[dict[str, str], dict[str, str]]:
    """Poll pending batches (``pending_batches``'s rows) without blocking the event loop until each is
    ``done`` or ``failed``, or ``timeout_s`` passes (those still running stay ``pending``). Between
    rounds it waits ``poll_s``, or what the providers' ``Retry-After`` asked for (Azure's operations
    say it). Returns ``batch_id → state`` and ``batch_id → why`` for the failed ones (a batch whose
    zone is gone fails too). What the trigger runs."""
    import asyncio

    sleep = sleep or asyncio.sleep
    deadline = clock() + timeout_s
    states = {p["batch_id"]: "pending" for p in pending}
    errors: dict[str, str] = {}
    while True:
        hints: list[float] = []
        for p in pending:
            batch_id = p["batch_id"]
            if states[batch_id] != "pending":
                continue
            zone = zones.get(p["zone"])
            if zone is None or zone.provider != p["provider"]:
                states[batch_id], errors[batch_id] = "failed", f"zone {p['zone']!r} is no longer served by {p['provider']!r}"
                continue
            provider = provider_for(zone)
            try:
                poll = getattr(provider, "poll_async", None)  # providers that also say Retry-After and why
                if poll is not None:
                    operation = await poll(zone, p["request_id"])
                    states[batch_id] = operation.state
                    if operation.retry_after_s is not None:
                        hints.append(operation.retry_after_s)
                    if operation.state == "failed":
                        errors[batch_id] = f"{p['provider']}: {operation.error or 'the purge failed'}"
                else:
                    states[batch_id] = await provider.completion_async(zone, p["request_id"])
                    if states[batch_id] == "failed":
                        errors[batch_id] = f"{p['provider']} reports the purge failed (request {p['request_id']})"
            except (Throttled, CdnUnavailable) as exc:  # asked again at the next poll
                log.warning("%s: %s; asking again later", p["provider"], exc)
                if getattr(exc, "retry_after_s", None) is not None:
                    hints.append(exc.retry_after_s)
        if "pending" not in states.values() or clock() >= deadline:
            return states, errors
        await sleep(max(hints) if hints else poll_s)


def wait_for_completion(conn: Any, zones: Mapping[str, Zone], provider_for: Callable[[Zone], CdnProvider], *,
                        run_key: str, timeout_s: float = 900.0, poll_s: float = 10.0,
                        sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic) -> dict[str, int]:
    """Poll the run's pending batches until each is done or failed (the CLI's way; the DAG defers
    to a trigger instead). ``PurgeStillPending`` when the time runs out."""
    deadline = clock() + timeout_s
    counts: dict[str, int] = defaultdict(int)
    while True:
        pending = pending_batches(conn, run_key)
        if not pending:
            return dict(counts)
        states = {}
        for p in pending:
            zone = zones.get(p["zone"])
            if zone is None:
                continue
            states[p["batch_id"]] = provider_for(zone).completion(zone, p["request_id"])
        for state, n in settle_completion(conn, states).items():
            if state != "pending":
                counts[state] += n
        if all(s == "pending" for s in states.values()) and clock() >= deadline:
            raise PurgeStillPending(f"{len(pending)} purge batch(es) still in progress after {timeout_s:.0f} s "
                                    f"(e.g. {pending[0]['provider']} {pending[0]['request_id']}); run again to follow them")
        if any(s == "pending" for s in states.values()):
            sleep(poll_s)


@dataclass(frozen=True)
class PurgeSummary:
    run_key: str
    by_target: Mapping[str, Mapping[str, int]]
    failures: tuple[str, ...]

    @property
    def pending(self) -> int:
        return sum(t.get("pending", 0) for t in self.by_target.values())

    @property
    def failed(self) -> int:
        return sum(t.get("failed", 0) for t in self.by_target.values())

    def as_dict(self) -> dict[str, Any]:
        return {"run_key": self.run_key, "by_target": {k: dict(v) for k, v in self.by_target.items()},
                "pending": self.pending, "failed": self.failed, "failures": list(self.failures)}

    def format(self) -> str:
        if not self.by_target:
            return f"purge {self.run_key}: nothing to purge"
        lines = [f"purge {self.run_key}:"]
        for target, c in sorted(self.by_target.items()):
            lines.append(f"  {target}: {c.get('items', 0)} item(s) in {c.get('batches', 0)} batch(es): "
                         f"{c.get('done', 0)} done, {c.get('pending', 0)} pending, {c.get('failed', 0)} failed"
                         + (f", {c['purged']} cached object(s) dropped" if c.get("purged") else ""))
        lines += [f"  FAILED {f}" for f in self.failures[:10]]
        return "\n".join(lines)

    def check(self) -> None:
        if self.failed:
            raise PurgeFailed(f"{self.failed} purge batch(es) failed; first: {self.failures[0]}")
        if self.pending:
            raise PurgeStillPending(f"{self.pending} purge batch(es) still in progress")


def summarise(conn: Any, run_key: str) -> PurgeSummary:
    """The run's batches per ``provider/zone`` and state (a split batch counts through its halves)."""
    rows = conn.execute(
        "SELECT provider || '/' || zone, status, count(*), sum(cardinality(items)), coalesce(sum(purged), 0) "
        "FROM csl_ops.cdn_purges WHERE run_key = %s AND status <> 'split' GROUP BY 1, 2", (run_key,)).fetchall()
    by_target: dict[str, dict[str, int]] = defaultdict(lambda: {"batches": 0, "items": 0, "purged": 0})
    for target, status, n, items, purged in rows:
        t = by_target[target]
        t[status] = t.get(status, 0) + n
        t["batches"] += n
        t["items"] += items
        t["purged"] += purged
    failures = tuple(f"{p}/{z} batch {b}: {e}" for p, z, b, e in conn.execute(
        "SELECT provider, zone, batch_id, error FROM csl_ops.cdn_purges WHERE run_key = %s AND status = 'failed' "
        "ORDER BY id", (run_key,)).fetchall())
    return PurgeSummary(run_key, {k: dict(v) for k, v in by_target.items()}, failures)
