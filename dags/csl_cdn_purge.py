"""
### CDN purge: what the edge must stop serving, batched to each provider's limits

Replication (replaced or restored public objects), deletes and cleanup's quarantine queue purges
in `csl_ops.cdn_purge_queue`; a person adds URLs, tags or prefixes in the form.

1. **plan** — the queue's owed rows and the form's `urls` / `tags` / `prefixes` (each must lie in a
   configured zone: audio, images, static; `zone` / `provider` narrow it), deduplicated, grouped by
   provider and zone, cut into batches at each provider's limit (Cloudflare 30 URLs, CloudFront
   3,000 paths, Azure 100 paths, Fastly 256 keys…). XCom `plan`; a `dry_run` stops here.
2. **send** — each provider under its token-bucket rate limit; 429 / `Retry-After` / throttling
   waits and sends the same batch again, a batch refused for its size goes again as halves. Each
   batch is a row in `csl_ops.cdn_purges`: a retry never sends a confirmed batch again.
3. **await_completion** — CloudFront and Azure finish later: deferred to a trigger that polls
   them without holding a worker slot.
4. **report** — per provider and zone (XCom `summary`, `csl_ops.task_runs`).

Runs every 10 minutes; with nothing owed it stops after the plan. Without Airflow:
`python -m csl cdn purge --url … | --tag … | --prefix … [--zone Z] [--dry-run] [--json]`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronTriggerTimetable, Param

from csl_airflow.cdn import (
    CdnPurgeCompletionOperator,
    CdnPurgePlanOperator,
    CdnPurgeReportOperator,
    CdnPurgeSendOperator,
)
from csl_airflow.dags import csl_dag
from csl_airflow.params import full_match, param

ZONES = ["audio", "images", "static"]
PROVIDERS = ["cloudflare", "cloudfront", "azure", "fastly", "varnish"]
URL = {"type": "string", "pattern": full_match("https?://[^\\s]+"), "maxLength": 2048}


@csl_dag(
    "csl_cdn_purge",
    schedule=CronTriggerTimetable("*/10 * * * *", timezone="UTC"),
    tags=["cdn"],
    doc_md=__doc__,
    retries=3,
    retry_delay=pendulum.duration(seconds=30),
    dagrun_timeout=pendulum.duration(hours=2),
    params={
        "urls": Param([], type=["null", "array"], items=URL, maxItems=10_000, uniqueItems=True,
                      description="Absolute URLs to purge (each inside a configured zone's base URL)."),
        "tags": Param([], type=["null", "array"], maxItems=10_000, uniqueItems=True,
                      items={"type": "string", "pattern": full_match("[\\x21-\\x7e]{1,1024}")},
                      description="Cache tags / surrogate keys / xkeys (every zone whose provider purges by tag, "
                                  "or the zone below)."),
        "prefixes": Param([], type=["null", "array"], items=URL, maxItems=10_000, uniqueItems=True,
                          description="URL prefixes: everything served under them."),
        "zone": Param(None, type=["null", "string"], pattern=full_match("|".join(ZONES)),
                      description="Only this zone: audio, images or static (empty = the zone each URL lies in; tags: "
                                  "every zone)."),
        "provider": Param(None, type=["null", "string"], pattern=full_match("|".join(PROVIDERS)),
                          description="Only zones served by this CDN provider: cloudflare, cloudfront, azure, fastly or "
                                      "varnish (empty = any)."),
        "dry_run": Param(False, type="boolean", description="Show the batches (XCom plan), send nothing."),
    },
)
def csl_cdn_purge():
    plan = CdnPurgePlanOperator(task_id="plan", **{name: param(name) for name in
                                                   ("urls", "tags", "prefixes", "zone", "provider", "dry_run")})
    send = CdnPurgeSendOperator(task_id="send", batches=plan.output)
    done = CdnPurgeCompletionOperator(task_id="await_completion", batches=plan.output)
    report = CdnPurgeReportOperator(task_id="report", batches=plan.output)
    plan >> send >> done >> report


csl_cdn_purge()
