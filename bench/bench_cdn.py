"""CDN purges (``csl.cdn.purge``) at scale, same run.

1. **Remote providers, batching and rate limits.** 10,000 queued purges in ``csl_ops.cdn_purge_queue``
   (a scratch database), spread over three zones on three providers — audio on Cloudflare
   (Enterprise limits: 30 URLs per call, 50 calls/s with a bucket of 500, 3,000 URLs/s), images on
   Azure Front Door (100 paths per call, 1 call/s with a bucket of 10), static on Fastly (its tags:
   256 surrogate keys per call). The providers are the real clients over ``httpx.MockTransport``
   answering each API's documented success shape, so every call is counted and no network is
   waited on; the token buckets sleep for real. Reported: API calls made vs the minimum
   (``ceil(items / limit)`` per zone and kind; target: equal) and wall time vs the floor the limits
   impose (target ≤ 1.1×). The floor of a provider is what its buckets force —
   ``max((calls - burst) / rate, (items - item_burst) / item_rate, 0)`` — and the run's floor is the
   slowest provider's: providers are independent, and the sender gives each a thread of its own.
2. **The local Varnish edge.** Purges per second through ``send_purges`` (each batch recorded in
   ``csl_ops.cdn_purges``): 2,000 URLs (one ``PURGE`` each, over one kept-alive connection) and
   2,000 tags (``xkey-purge`` headers of many tags) vs plain ``curl -X PURGE`` in a shell loop (a
   process per purge, as an operator's script does) and one ``curl`` given every URL (one process,
   one connection: the fastest plain anchor).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from csl.cdn import Zone
from csl.cdn import purge as purges
from csl.cdn.azure import AzureFrontDoorProvider
from csl.cdn.cloudflare import CloudflareProvider
from csl.cdn.fastly import FastlyProvider
from csl.cdn.varnish import VarnishEdge
from csl.config import Secret, Settings, load_env_file
from csl.migrations import migrate

DATABASE = "bench_cdn"
QUEUED = 10_000
EDGE_PURGES = 2_000
TARGET_FLOOR_RATIO = 1.1
ENDPOINT = "subscriptions/s/resourceGroups/rg/providers/Microsoft.Cdn/profiles/p/afdEndpoints/bench"


class Counting:
    """A MockTransport answering one API's success shape, counting the calls by kind."""

    def __init__(self, answer) -> None:
        self.calls: dict[str, int] = {}
        self._answer = answer
        self._lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        kind, response = self._answer(request)
        with self._lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1
        return response

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def cloudflare_api(request: httpx.Request):
    body = json.loads(request.content)
    kind = next(iter(body))
    return kind, httpx.Response(200, json={"success": True, "errors": [], "messages": [],
                                           "result": {"id": uuid.uuid4().hex}})


def azure_api(request: httpx.Request):
    if request.url.host == "login.microsoftonline.com":
        return "token", httpx.Response(200, json={"token_type": "Bearer", "expires_in": 3599, "access_token": "t"})
    operation = f"https://management.azure.com/subscriptions/s/providers/Microsoft.Cdn/operationResults/{uuid.uuid4().hex}"
    return "purge", httpx.Response(202, headers={"Azure-AsyncOperation": operation + "?api-version=2024-02-01"})


def fastly_api(request: httpx.Request):
    keys = json.loads(request.content).get("surrogate_keys", [])
    return "surrogate_keys", httpx.Response(200, json={key: uuid.uuid4().hex for key in keys})


def floor_s(calls: int, items: int, limits) -> float:
    """What a provider's token buckets force at least (both buckets start full)."""
    by_calls = max(calls - limits.burst, 0) / limits.rate_per_s
    by_items = 0.0
    if limits.items_per_s:
        by_items = max(items - max(limits.items_per_s, 1), 0) / limits.items_per_s
    return max(by_calls, by_items)


def _database(stack, settings: Settings) -> str:
    base = settings.require_database().primary_url.rsplit("/", 1)[0]
    stack.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    stack.psql(f"CREATE DATABASE {DATABASE} OWNER csl")
    url = f"{base}/{DATABASE}"
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, components=("csl_ops",))
    return url


def remote(url: str) -> dict:
    zones = {"audio": Zone("audio", "cloudflare", "https://cdn.bench.example/audio", "zone-audio"),
             "images": Zone("images", "azure", "https://img.bench.example/images", ENDPOINT),
             "static": Zone("static", "fastly", "https://static.bench.example/static", "service-static")}
    apis = {"cloudflare": Counting(cloudflare_api), "azure": Counting(azure_api), "fastly": Counting(fastly_api)}
    providers = {
        "cloudflare": CloudflareProvider(api_token=Secret("cf-token"), plan="enterprise",
                                         transport=apis["cloudflare"].transport()),
        "azure": AzureFrontDoorProvider(tenant_id="t", client_id="c", client_secret=Secret("az-secret"),
                                        transport=apis["azure"].transport()),
        "fastly": FastlyProvider(api_token=Secret("fastly-token"), transport=apis["fastly"].transport()),
    }
    # the queue: URLs in audio and images, surrogate tags (no URL) for the static zone's objects
    share = {"audio": QUEUED * 4 // 10, "images": QUEUED * 3 // 10}
    share["static"] = QUEUED - share["audio"] - share["images"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE csl_ops.cdn_purge_queue, csl_ops.cdn_purges")
        with conn.cursor() as cur, cur.copy("COPY csl_ops.cdn_purge_queue (provider, object_key, public_url, tags, "
                                            "reason, source_run) FROM STDIN") as copy:
            for zone, n in share.items():
                for i in range(n):
                    key = f"samples/{i % 256:02x}/{zone}-{i}.bin"
                    public = f"{zones[zone].base_url}/{key}" if zone != "static" else None
                    copy.write_row(("primary", key, public, [f"obj:/{zone}/{key}"], "replaced", "bench"))
        # the static zone's rows carry tags only: each tag goes to every zone whose provider purges
        # by tag (Cloudflare's audio zone and Fastly's static zone; Azure has no tag purge)
        started = time.perf_counter()
        plan = purges.plan_purges(conn, zones, lambda zone: providers[zone.provider].limits, run_key="bench-remote")
        planned_s = time.perf_counter() - started
        sent = purges.send_purges(conn, zones, lambda zone: providers[zone.provider], run_key="bench-remote",
                                  connect=lambda: psycopg.connect(url, autocommit=True))
        wall_s = time.perf_counter() - started
        owed = conn.execute("SELECT count(*) FROM csl_ops.cdn_purge_queue WHERE purged_at IS NULL").fetchone()[0]
        pending = conn.execute("SELECT count(*) FROM csl_ops.cdn_purges WHERE status = 'pending'").fetchone()[0]
    # what each provider had to do: items per kind, and the calls that takes at its limit
    expected = {("cloudflare", "url", "files"): share["audio"], ("cloudflare", "tag", "tags"): share["static"],
                ("azure", "url", "purge"): share["images"], ("fastly", "tag", "surrogate_keys"): share["static"]}
    per_provider: dict[str, dict] = {}
    by_provider_floor: dict[str, float] = {}
    for (name, kind, api_kind), items in expected.items():
        provider = providers[name]
        limit = provider.limits.max_items[kind]
        minimum = math.ceil(items / limit)
        made = apis[name].calls.get(api_kind, 0)
        per_provider[f"{name}/{kind}"] = {"items": items, "limit_per_call": limit, "calls": made,
                                          "minimum_calls": minimum, "calls_vs_minimum": round(made / minimum, 3)}
    for name, provider in providers.items():
        calls = sum(v["minimum_calls"] for k, v in per_provider.items() if k.startswith(name + "/"))
        url_items = sum(v["items"] for k, v in per_provider.items() if k == f"{name}/url")
        by_provider_floor[name] = round(floor_s(calls, url_items, provider.limits), 2)
    floor = max(by_provider_floor.values())
    for provider in providers.values():
        provider.close()
    return {"queued": QUEUED, "batches": len(plan.batches), "per_provider": per_provider,
            "floor_s_by_provider": by_provider_floor, "token_calls": apis["azure"].calls.get("token", 0),
            "plan_s": round(planned_s, 2), "wall_s": round(wall_s, 2),
            "floor_s": round(floor, 2), "wall_vs_floor": round(wall_s / floor, 3) if floor else None,
            "rate_limit_waits_s": round(sent.waited_s, 2), "still_owed": owed, "pending_async": pending,
            "limiting_providers": sorted(k for k, f in by_provider_floor.items() if f > 0),
            "target": f"calls == minimum; wall ≤ {TARGET_FLOOR_RATIO}× floor"}


def _curl_loop(lines: list[str], script: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    started = time.perf_counter()
    subprocess.run(["bash", "-c", script, "bench", path], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    Path(path).unlink()
    return elapsed


def edge(url: str, settings: Settings) -> dict:
    cdn = settings.edge
    base = cdn.base_url.rstrip("/")
    zone = Zone("audio", "varnish", f"{base}/audio")
    urls = [f"{zone.base_url}/samples/bench/{i:05d}.wav" for i in range(EDGE_PURGES)]
    tags = [f"obj:/bench/{i:05d}" for i in range(EDGE_PURGES)]
    results: dict = {"purges": EDGE_PURGES}
    with VarnishEdge(cdn, base_url=base) as varnish, psycopg.connect(url, autocommit=True) as conn:
        for kind, items in (("url", urls), ("tag", tags)):
            run_key = f"bench-edge-{kind}"
            requests = [purges.PurgeRequest("audio", kind, item) for item in items]
            started = time.perf_counter()
            purges.plan_purges(conn, {"audio": zone}, lambda z: varnish.limits, run_key=run_key, requests=requests,
                               include_queue=False)
            sent = purges.send_purges(conn, {"audio": zone}, lambda z: varnish, run_key=run_key)
            ours = time.perf_counter() - started
            assert not sent.errors and not sent.transient, sent.as_dict()
            results[f"ours_{kind}_s"] = round(ours, 2)
            results[f"ours_{kind}_per_s"] = round(EDGE_PURGES / ours)
            results[f"ours_{kind}_calls"] = sum(v["done"] for v in sent.by_target.values())
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is not installed")
    loop_url = _curl_loop(urls, 'while read -r u; do curl -s -o /dev/null -X PURGE "$u"; done < "$1"')
    loop_tag = _curl_loop(tags, f'while read -r t; do curl -s -o /dev/null -X PURGE -H "xkey-purge: $t" '
                                f'"{base}/"; done < "$1"')
    one_curl = _curl_loop(urls, 'xargs -a "$1" curl -s -o /dev/null -X PURGE')
    results.update({
        "curl_loop_url_s": round(loop_url, 2), "curl_loop_url_per_s": round(EDGE_PURGES / loop_url),
        "curl_loop_tag_s": round(loop_tag, 2), "curl_loop_tag_per_s": round(EDGE_PURGES / loop_tag),
        "one_curl_all_urls_s": round(one_curl, 2), "one_curl_all_urls_per_s": round(EDGE_PURGES / one_curl),
        "url_vs_curl_loop": round(results["ours_url_s"] / loop_url, 3),
        "url_vs_one_curl": round(results["ours_url_s"] / one_curl, 3),
        "tag_vs_curl_loop": round(results["ours_tag_s"] / loop_tag, 3),
    })
    return results


def run(stack, **_: object) -> dict:
    stack_env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=stack_env)
    settings = Settings.from_env(stack_env)
    url = _database(stack, settings)
    try:
        remote_result = remote(url)
        edge_result = edge(url, settings)
    finally:
        stack.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    summary = {
        "calls_vs_minimum": {k: v["calls_vs_minimum"] for k, v in remote_result["per_provider"].items()},
        "wall_vs_floor": remote_result["wall_vs_floor"],
        "edge_url_vs_curl_loop": edge_result["url_vs_curl_loop"],
        "edge_url_vs_one_curl": edge_result["url_vs_one_curl"],
        "edge_tag_vs_curl_loop": edge_result["tag_vs_curl_loop"],
    }
    return {"summary": summary, "remote": remote_result, "edge": edge_result}
