"""The purge engine (csl.cdn.purge) against the real PostgreSQL: requests validated before anything
is written, deduplicated and batched at each provider's limit, sent under its rate limit with
retries, recorded so a rerun never sends a confirmed batch again, the queue rows marked purged
only when their batch is done (issue 15).

The providers here are scripted stand-ins of the interface (``csl.cdn.base.CdnProvider``); every
real provider's HTTP shape is tested in its own module, and the local edge for real in test_edge."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from csl.cdn import purge
from csl.cdn.base import (
    BatchTooLarge,
    CdnInputError,
    CdnRefused,
    CdnUnavailable,
    ProviderLimits,
    PurgeBatch,
    PurgeResult,
    Throttled,
    Zone,
)
from csl.migrations import migrate

ZONES = {
    "audio": Zone("audio", "scripted", "https://cdn.example.com/audio", "zone-a"),
    "images": Zone("images", "scripted", "https://img.example.com", "zone-i"),
    "static": Zone("static", "async", "https://static.example.com/s", "dist-s"),
}


class Scripted:
    """A provider whose answers a test scripts: ``answers`` maps a call number (1-based) to an
    exception to raise or a status; every call is recorded."""

    def __init__(self, name: str, *, max_items: int = 3, asynchronous: bool = False, kinds=("url", "tag", "prefix"),
                 answers: dict[int, object] | None = None, refuse_over: int | None = None) -> None:
        self.name = name
        self.limits = ProviderLimits(max_items=dict.fromkeys(kinds, max_items), rate_per_s=2.0, burst=2,
                                     asynchronous=asynchronous)
        self.calls: list[PurgeBatch] = []
        self.answers = answers or {}
        self.refuse_over = refuse_over
        self.states: dict[str, str] = {}

    def purge(self, zone: Zone, batch: PurgeBatch) -> PurgeResult:
        self.calls.append(batch)
        answer = self.answers.get(len(self.calls))
        if isinstance(answer, Exception):
            raise answer
        if self.refuse_over is not None and len(batch.items) > self.refuse_over:
            raise BatchTooLarge(self.name, f"too many items ({len(batch.items)})", status=413)
        if self.limits.asynchronous:
            request_id = f"inv-{len(self.calls)}"
            self.states[request_id] = "pending"
            return PurgeResult(batch.batch_id, "pending", request_id=request_id)
        return PurgeResult(batch.batch_id, "done", request_id=f"req-{len(self.calls)}", purged=len(batch.items))

    def completion(self, zone: Zone, request_id: str) -> str:
        return self.states[request_id]

    async def completion_async(self, zone: Zone, request_id: str) -> str:
        return self.states[request_id]

    def health(self, zone: Zone) -> dict:
        return {"ok": True}

    def close(self) -> None:
        pass


class Clock:
    """Time that moves only when slept: what the rate limiter waited is exact."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def conn(fresh_database):
    with psycopg.connect(fresh_database, autocommit=True) as connection:
        migrate(connection, components=("csl_ops",))
        yield connection


def _providers(**overrides: Scripted) -> tuple[dict[str, Scripted], Callable[[Zone], Scripted]]:
    providers = {"scripted": Scripted("scripted"), "async": Scripted("async", asynchronous=True), **overrides}
    return providers, lambda zone: providers[zone.provider]


def _enqueue(conn, key: str, url: str | None, tags: list[str] | None = None) -> int:
    return conn.execute("INSERT INTO csl_ops.cdn_purge_queue (provider, object_key, public_url, tags, reason, source_run) "
                        "VALUES ('primary', %s, %s, %s, 'replaced', 'test') RETURNING id",
                        (key, url, tags or [])).fetchone()[0]


def _run(conn, providers, provider_for, run_key: str, clock: Clock | None = None, **kwargs):
    clock = clock or Clock()
    plan = purge.plan_purges(conn, ZONES, lambda z: providers[z.provider].limits, run_key=run_key, **kwargs)
    sent = purge.send_purges(conn, ZONES, provider_for, run_key=run_key, sleep=clock.sleep, clock=clock)
    return plan, sent


def test_urls_outside_every_zone_unknown_zones_and_bad_tags_are_refused_naming_them():
    with pytest.raises(CdnInputError, match=r"'https://elsewhere\.example\.org/a\.mp3' is outside every CDN zone"):
        purge.manual_requests(ZONES, urls=["https://cdn.example.com/audio/ok.mp3", "https://elsewhere.example.org/a.mp3"])
    with pytest.raises(CdnInputError, match="is outside every CDN zone"):  # a base URL is not a string prefix
        purge.manual_requests(ZONES, urls=["https://cdn.example.com/audiobooks/x.mp3"])
    with pytest.raises(CdnInputError, match="not an absolute http"):
        purge.manual_requests(ZONES, urls=["cdn.example.com/audio/x.mp3"])
    with pytest.raises(CdnInputError, match="unknown CDN zone 'video'"):
        purge.manual_requests(ZONES, urls=["https://cdn.example.com/audio/x.mp3"], zone="video")
    with pytest.raises(CdnInputError, match="lies in zone 'audio'"):
        purge.manual_requests(ZONES, urls=["https://cdn.example.com/audio/x.mp3"], zone="images")
    with pytest.raises(CdnInputError, match="no CDN zone is served by provider 'fastly'"):
        purge.manual_requests(ZONES, tags=["a"], provider="fastly")
    with pytest.raises(CdnInputError, match="tag 'two words'"):
        purge.manual_requests(ZONES, tags=["two words"])
    with pytest.raises(CdnInputError, match="at most"):
        purge.manual_requests(ZONES, tags=[f"t{i}" for i in range(purge.MAX_MANUAL_ITEMS + 1)])


def test_tags_go_to_every_zone_that_purges_by_tag_unless_a_zone_is_named():
    no_tags = {"async"}
    supports = lambda zone, kind: not (kind == "tag" and zone.provider in no_tags)
    requests = purge.manual_requests(ZONES, tags=["sample:42"], supports=supports)
    assert sorted((r.zone, r.item) for r in requests) == [("audio", "sample:42"), ("images", "sample:42")]
    with pytest.raises(CdnInputError, match="tag 'sample:42': no chosen zone's provider purges by tag"):
        purge.manual_requests(ZONES, tags=["sample:42"], zone="static", supports=supports)
    longest = purge.manual_requests(ZONES, urls=["https://static.example.com/s/app.js"], prefixes=["https://img.example.com/covers/"])
    assert [(r.zone, r.kind) for r in longest] == [("static", "url"), ("images", "prefix")]


def test_queue_and_manual_requests_are_deduplicated_batched_at_the_limit_and_marked_purged(conn):
    providers, provider_for = _providers()
    urls = [f"https://cdn.example.com/audio/s{i}.mp3" for i in range(5)]
    queue_ids = [_enqueue(conn, f"s{i}.mp3", url) for i, url in enumerate(urls)]
    _enqueue(conn, "nowhere.mp3", "https://elsewhere.example.org/nowhere.mp3")
    manual = purge.manual_requests(ZONES, urls=urls[:2] + ["https://img.example.com/c.png"])
    plan, sent = _run(conn, providers, provider_for, "run-1", requests=manual)

    sent_items = [item for batch in providers["scripted"].calls for item in batch.items]
    assert sorted(sent_items) == sorted([*urls, "https://img.example.com/c.png"])  # each once, though asked twice
    assert all(len(b.items) <= 3 for b in providers["scripted"].calls)
    assert plan.queue_rows == 5 and len(plan.unroutable) == 1
    assert sent.by_target["scripted/audio"]["done"] == 2 and sent.by_target["scripted/images"]["done"] == 1
    owed = dict(conn.execute("SELECT id, purged_at IS NOT NULL FROM csl_ops.cdn_purge_queue").fetchall())
    assert all(owed[i] for i in queue_ids)
    assert conn.execute("SELECT last_error FROM csl_ops.cdn_purge_queue WHERE object_key = 'nowhere.mp3' "
                        "AND purged_at IS NULL").fetchone()[0].startswith("URL 'https://elsewhere.example.org/")
    summary = purge.summarise(conn, "run-1")
    assert summary.by_target["scripted/audio"]["items"] == 5 and summary.failed == 0 and summary.pending == 0
    summary.check()


def test_a_rerun_of_the_same_run_sends_nothing_it_already_confirmed(conn):
    providers, provider_for = _providers()
    for i in range(4):
        _enqueue(conn, f"k{i}", f"https://cdn.example.com/audio/k{i}.mp3")
    _run(conn, providers, provider_for, "run-2")
    first = len(providers["scripted"].calls)
    plan, sent = _run(conn, providers, provider_for, "run-2")
    assert first == 2 and len(providers["scripted"].calls) == first
    assert plan.queue_rows == 0 and sent.by_target == {}
    assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purges WHERE run_key = 'run-2'").fetchone()[0] == 2


def test_a_batch_interrupted_mid_send_is_sent_again_by_the_rerun(conn):
    providers, provider_for = _providers()
    for i in range(2):
        _enqueue(conn, f"k{i}", f"https://cdn.example.com/audio/k{i}.mp3")
    purge.plan_purges(conn, ZONES, lambda z: providers[z.provider].limits, run_key="run-3")
    conn.execute("UPDATE csl_ops.cdn_purges SET status = 'sending', attempts = 1")  # the worker died here
    _, sent = _run(conn, providers, provider_for, "run-3")
    assert len(providers["scripted"].calls) == 1 and sent.by_target["scripted/audio"]["done"] == 1
    assert conn.execute("SELECT attempts FROM csl_ops.cdn_purges").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purge_queue WHERE purged_at IS NULL").fetchone()[0] == 0


def test_throttling_waits_for_retry_after_and_sends_the_same_batch_again(conn):
    providers, provider_for = _providers(scripted=Scripted("scripted", answers={
        1: Throttled("scripted", "429 Too Many Requests", retry_after_s=7.0),
        2: CdnUnavailable("scripted", "HTTP 503")}))
    _enqueue(conn, "k", "https://cdn.example.com/audio/k.mp3")
    clock = Clock()
    _, sent = _run(conn, providers, provider_for, "run-4", clock=clock)
    calls = providers["scripted"].calls
    assert len(calls) == 3 and calls[0].batch_id == calls[1].batch_id == calls[2].batch_id
    assert 7.0 in clock.slept and 2.0 in clock.slept  # Retry-After, then backoff
    assert sent.by_target["scripted/audio"]["done"] == 1
    assert conn.execute("SELECT attempts, status FROM csl_ops.cdn_purges").fetchone() == (3, "done")


def test_a_batch_refused_for_its_size_is_sent_in_halves(conn):
    providers, provider_for = _providers(scripted=Scripted("scripted", max_items=8, refuse_over=3))
    urls = [f"https://cdn.example.com/audio/h{i}.mp3" for i in range(8)]
    ids = [_enqueue(conn, f"h{i}", url) for i, url in enumerate(urls)]
    _, sent = _run(conn, providers, provider_for, "run-5")
    sizes = [len(b.items) for b in providers["scripted"].calls]
    assert sizes == [8, 4, 2, 2, 4, 2, 2]
    assert sent.by_target["scripted/audio"]["done"] == 4
    assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purge_queue WHERE id = ANY(%s) AND purged_at IS NOT NULL",
                        (ids,)).fetchone()[0] == 8
    assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purges WHERE status = 'split'").fetchone()[0] == 3
    summary = purge.summarise(conn, "run-5")
    assert summary.by_target["scripted/audio"]["items"] == 8  # the split batches count through their halves


def test_a_refused_batch_fails_alone_the_others_are_sent_and_the_run_fails_naming_it(conn):
    providers, provider_for = _providers(scripted=Scripted("scripted", max_items=1, answers={
        2: CdnRefused("scripted", "HTTP 403: Authentication error (code 10000)", status=403)}))
    ids = [_enqueue(conn, f"r{i}", f"https://cdn.example.com/audio/r{i}.mp3") for i in range(3)]
    _, sent = _run(conn, providers, provider_for, "run-6")
    assert len(providers["scripted"].calls) == 3  # no retry of the refused one, the third still sent
    assert sent.by_target["scripted/audio"]["done"] == 2 and sent.by_target["scripted/audio"]["failed"] == 1
    with pytest.raises(purge.PurgeFailed, match="Authentication error"):
        sent.check()
    owed = conn.execute("SELECT id, attempts, last_error FROM csl_ops.cdn_purge_queue WHERE purged_at IS NULL").fetchall()
    assert len(owed) == 1 and owed[0][0] in ids and owed[0][1] == 1 and "Authentication error" in owed[0][2]
    # the next run (a new run key) takes the owed row again; the provider works now
    providers["scripted"].answers = {}
    _run(conn, providers, provider_for, "run-6b")
    assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purge_queue WHERE purged_at IS NULL").fetchone()[0] == 0


def test_a_provider_down_past_every_retry_leaves_the_batch_unsent_for_a_retry(conn):
    down = CdnUnavailable("scripted", "connection refused")
    providers, provider_for = _providers(scripted=Scripted("scripted", answers=dict.fromkeys(range(1, 6), down)))
    _enqueue(conn, "d", "https://cdn.example.com/audio/d.mp3")
    _, sent = _run(conn, providers, provider_for, "run-7")
    assert len(providers["scripted"].calls) == 5
    with pytest.raises(purge.PurgeUnsent, match="connection refused"):
        sent.check()
    # the task's retry: same run key, the provider is back
    _, again = _run(conn, providers, provider_for, "run-7")
    assert again.by_target["scripted/audio"]["done"] == 1
    assert conn.execute("SELECT purged_at IS NOT NULL FROM csl_ops.cdn_purge_queue").fetchone()[0]


def test_asynchronous_purges_stay_pending_until_the_provider_says_they_completed(conn):
    providers, provider_for = _providers()
    ids = [_enqueue(conn, f"a{i}", f"https://static.example.com/s/a{i}.js") for i in range(4)]
    _, sent = _run(conn, providers, provider_for, "run-8")
    assert sent.by_target["async/static"]["pending"] == 2
    pending = purge.pending_batches(conn, "run-8")
    assert [p["request_id"] for p in pending] == ["inv-1", "inv-2"]
    assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purge_queue WHERE purged_at IS NULL").fetchone()[0] == 4
    with pytest.raises(purge.PurgeStillPending):
        purge.summarise(conn, "run-8").check()

    providers["async"].states.update({"inv-1": "done", "inv-2": "failed"})
    counts = purge.settle_completion(conn, {p["batch_id"]: providers["async"].completion(ZONES["static"], p["request_id"])
                                            for p in pending}, errors={pending[1]["batch_id"]: "Failed: canceled"})
    assert counts == {"done": 1, "failed": 1}
    purged = {r[0] for r in conn.execute("SELECT id FROM csl_ops.cdn_purge_queue WHERE purged_at IS NOT NULL")}
    assert len(purged) == 3 and purged <= set(ids)  # the first batch's three rows
    summary = purge.summarise(conn, "run-8")
    assert summary.by_target["async/static"]["done"] == 1 and summary.failed == 1
    assert "canceled" in summary.failures[0]


def test_wait_for_completion_polls_until_done_and_gives_up_after_its_time(conn):
    providers, provider_for = _providers()
    _enqueue(conn, "w", "https://static.example.com/s/w.css")
    clock = Clock()
    _run(conn, providers, provider_for, "run-9", clock=clock)
    with pytest.raises(purge.PurgeStillPending, match="still in progress after 30 s"):
        purge.wait_for_completion(conn, ZONES, provider_for, run_key="run-9", timeout_s=30, poll_s=10,
                                  sleep=clock.sleep, clock=clock)
    providers["async"].states["inv-1"] = "done"
    assert purge.wait_for_completion(conn, ZONES, provider_for, run_key="run-9", sleep=clock.sleep,
                                     clock=clock) == {"done": 1}


def test_the_rate_limit_spaces_calls_beyond_the_burst():
    clock = Clock()
    bucket = purge.TokenBucket(2.0, 2, clock=clock, sleep=clock.sleep)
    for _ in range(6):
        bucket.take()
    assert clock.now == pytest.approx(2.0)  # 2 from the burst, then 4 at 2 per second
    clock.now += 10  # idle: the bucket refills only up to its burst
    for _ in range(3):
        bucket.take()
    assert clock.now == pytest.approx(12.5)


def test_a_dry_run_plans_and_writes_nothing(conn):
    providers, _ = _providers()
    _enqueue(conn, "x", "https://cdn.example.com/audio/x.mp3")
    plan = purge.plan_purges(conn, ZONES, lambda z: providers[z.provider].limits, run_key="dry", dry_run=True,
                             requests=purge.manual_requests(ZONES, tags=["t1"], zone="images"))
    assert plan.dry_run and plan.totals() == {"scripted/audio": {"batches": 1, "items": 1},
                                              "scripted/images": {"batches": 1, "items": 1}}
    assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purges").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purge_queue WHERE attempts > 0").fetchone()[0] == 0


def test_polling_without_blocking_returns_each_batch_state_or_pending_after_the_timeout():
    import asyncio

    providers, provider_for = _providers()
    p = providers["async"]
    p.states.update({"inv-1": "pending", "inv-2": "pending"})
    pending = [{"batch_id": "b1", "provider": "async", "zone": "static", "request_id": "inv-1"},
               {"batch_id": "b2", "provider": "async", "zone": "static", "request_id": "inv-2"},
               {"batch_id": "b3", "provider": "gone", "zone": "static", "request_id": "x"}]
    clock, polls = Clock(), []

    async def sleep(seconds: float) -> None:
        polls.append(seconds)
        clock.now += seconds
        if len(polls) == 2:
            p.states.update({"inv-1": "done", "inv-2": "failed"})

    states, errors = asyncio.run(purge.poll_pending(pending, ZONES, provider_for, poll_s=5, sleep=sleep, clock=clock))
    assert states == {"b1": "done", "b2": "failed", "b3": "failed"} and polls == [5, 5]
    assert set(errors) == {"b2", "b3"} and "no longer served" in errors["b3"]
    p.states["inv-1"] = "pending"
    late, _ = asyncio.run(purge.poll_pending(pending[:1], ZONES, provider_for, poll_s=5, timeout_s=12, sleep=sleep,
                                             clock=clock))
    assert late == {"b1": "pending"} and clock.now == pytest.approx(25)


@pytest.mark.parametrize(("urls", "limit"), [(1, 30), (30, 30), (31, 30), (299, 100), (1000, 256)])
def test_n_urls_take_exactly_ceil_n_over_the_limit_calls(conn, urls, limit):
    providers, provider_for = _providers(scripted=Scripted("scripted", max_items=limit))
    for i in range(urls):
        _enqueue(conn, f"n{i}", f"https://cdn.example.com/audio/n{i}.mp3")
    _run(conn, providers, provider_for, f"run-n{urls}")
    calls = providers["scripted"].calls
    assert len(calls) == -(-urls // limit)
    assert sorted(i for b in calls for i in b.items) == sorted(f"https://cdn.example.com/audio/n{i}.mp3"
                                                               for i in range(urls))


def test_a_queue_row_with_tags_only_goes_to_the_zones_whose_provider_purges_by_tag(conn):
    no_tags = Scripted("async", asynchronous=True, kinds=("url", "prefix"))
    providers, provider_for = _providers(**{"async": no_tags})
    tagged = _enqueue(conn, "t.mp3", None, ["obj:/bucket/t.mp3"])
    _run(conn, providers, provider_for, "run-tags")
    assert sorted(b.zone for b in providers["scripted"].calls) == ["audio", "images"] and not no_tags.calls
    assert conn.execute("SELECT purged_at IS NOT NULL FROM csl_ops.cdn_purge_queue WHERE id = %s",
                        (tagged,)).fetchone()[0]
    # with no zone able to purge a tag, the row stays owed and says why
    lone = {"static": ZONES["static"]}
    nothing = _enqueue(conn, "u.mp3", None, ["obj:/bucket/u.mp3"])
    plan = purge.plan_purges(conn, lone, lambda z: providers[z.provider].limits, run_key="run-tags-2")
    assert plan.batches == () and [i for i, _ in plan.unroutable] == [nothing]
    assert "no tags a zone's provider could purge" in conn.execute(
        "SELECT last_error FROM csl_ops.cdn_purge_queue WHERE id = %s", (nothing,)).fetchone()[0]


def test_with_a_connection_factory_providers_are_sent_to_at_once(conn, fresh_database):
    import threading

    met = threading.Event()

    class Waits(Scripted):
        def purge(self, zone, batch):  # answers only once the other provider has been called
            if not met.wait(timeout=20):
                raise CdnRefused(self.name, "the other provider was never called while this one waited")
            return super().purge(zone, batch)

    class Meets(Scripted):
        def purge(self, zone, batch):
            met.set()
            return super().purge(zone, batch)

    providers, provider_for = _providers(scripted=Waits("scripted"), **{"async": Meets("async", asynchronous=True)})
    _enqueue(conn, "a", "https://cdn.example.com/audio/a.mp3")
    _enqueue(conn, "s", "https://static.example.com/s/s.js")
    purge.plan_purges(conn, ZONES, lambda z: providers[z.provider].limits, run_key="run-par")
    sent = purge.send_purges(conn, ZONES, provider_for, run_key="run-par",
                             connect=lambda: psycopg.connect(fresh_database, autocommit=True))
    sent.check()
    assert sent.by_target["scripted/audio"]["done"] == 1 and sent.by_target["async/static"]["pending"] == 1
    assert dict(conn.execute("SELECT zone, status FROM csl_ops.cdn_purges WHERE run_key = 'run-par'").fetchall()) == {
        "audio": "done", "static": "pending"}
