"""``python -m csl cdn purge|url|headers``: the CDN without Airflow.

Wired into ``csl.cli`` with ``add_cli(sub)``. Exit codes as the rest of the CLI: 0 done, 1 a batch
failed or is still in progress at the provider, 2 bad input before any work (a URL outside every
zone, an unknown zone or provider, a tag with spaces, an invalid transform option).
"""

from __future__ import annotations

import argparse
from typing import Any

from csl.cliargs import number
from csl.cliargs import print_result as _print
from csl.cliargs import run_key as cli_run_key

__all__ = ["add_cli"]


def _cmd_purge(args: argparse.Namespace, settings: Any) -> int:
    from csl.cdn import Cdn
    from csl.cdn import purge as purges
    from csl.db import Database

    run_key = args.run_key or cli_run_key()
    with Cdn.from_settings(settings) as cdn:
        limits = lambda zone: cdn.provider(zone.name).limits
        provider_for = lambda zone: cdn.provider(zone.name)
        requests = purges.manual_requests(cdn.zones, urls=args.url, tags=args.tag, prefixes=args.prefix,
                                          zone=args.zone, provider=args.provider,
                                          supports=lambda zone, kind: limits(zone).supports(kind))
        if not requests and not args.queue:
            raise purges.CdnInputError("nothing to purge: give --url, --tag or --prefix, or --queue")
        with Database(settings.require_database()) as db, db.connect_direct() as conn:
            plan = purges.plan_purges(conn, cdn.zones, limits, run_key=run_key, requests=requests,
                                      include_queue=args.queue, dry_run=args.dry_run)
            if plan.dry_run:
                lines = [f"would send {b.kind} purge to {b.provider}/{b.zone}: {len(b.items)} item(s), "
                         f"e.g. {b.items[0] if b.items else '(everything)'}" for b in plan.batches]
                lines += [f"unroutable queue row {i}: {why}" for i, why in plan.unroutable]
                _print(args, plan.as_dict(), "\n".join(lines) or "nothing to purge")
                return 0
            sent = purges.send_purges(conn, cdn.zones, provider_for, run_key=run_key, connect=db.connect_direct)
            if not args.no_wait:
                try:
                    purges.wait_for_completion(conn, cdn.zones, provider_for, run_key=run_key,
                                               timeout_s=args.wait_s, poll_s=args.poll_s)
                except purges.PurgeStillPending:
                    pass  # reported by the summary below
            summary = purges.summarise(conn, run_key)
    _print(args, {"plan": plan.as_dict(), "sent": sent.as_dict(), "summary": summary.as_dict()}, summary.format())
    summary.check()
    return 0


def _cmd_url(args: argparse.Namespace, settings: Any) -> int:
    from csl.cdn import Cdn

    transforms = {name: getattr(args, name) for name in ("bitrate", "format", "quality", "width", "height")}
    with Cdn.from_settings(settings) as cdn:
        url = cdn.url(args.zone, args.key, **{k: v for k, v in transforms.items() if v is not None})
    _print(args, {"zone": args.zone, "key": args.key, "url": url}, url)
    return 0


def _cmd_headers(args: argparse.Namespace, settings: Any) -> int:
    from csl.cdn import CachePolicy

    headers = CachePolicy.from_settings(settings.edge).headers(args.zone, tags=args.tag)
    _print(args, headers, "\n".join(f"{name}: {value}" for name, value in headers.items()))
    return 0


def add_cli(sub: Any) -> None:
    """Register ``cdn purge|url|headers`` on the ``csl`` command's subparsers."""
    cdn = sub.add_parser("cdn", help="CDN purges (batched to each provider's limits), public URLs, cache headers")
    actions = cdn.add_subparsers(dest="action", required=True, metavar="{purge,url,headers}")
    p = actions.add_parser("purge", help="purge URLs, tags or prefixes (and with --queue what the queue owes)")
    p.add_argument("--url", action="append", default=[], metavar="URL", help="an absolute URL in a configured zone")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="a cache tag / surrogate key / xkey")
    p.add_argument("--prefix", action="append", default=[], metavar="URL", help="a URL prefix in a configured zone")
    p.add_argument("--zone", help="only this zone (audio, images, static)")
    p.add_argument("--provider", help="only zones served by this CDN provider")
    p.add_argument("--queue", action="store_true", help="also what csl_ops.cdn_purge_queue owes")
    p.add_argument("--dry-run", action="store_true", help="show the batches, send nothing")
    p.add_argument("--no-wait", action="store_true", help="do not wait for asynchronous providers")
    p.add_argument("--wait-s", type=number(float, 0, 86_400), default=900.0,
                   help="how long to wait for asynchronous providers")
    p.add_argument("--poll-s", type=number(float, 1, 3600), default=10.0)
    p.add_argument("--run-key", help="the run's key; the same key again sends only what was not confirmed")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=_cmd_purge)

    p = actions.add_parser("url", help="the public URL of a key in a zone, with transforms")
    p.add_argument("zone", choices=("audio", "images", "static"))
    p.add_argument("key", help="the object's key, e.g. samples/ab/x.mp3")
    p.add_argument("--bitrate", type=int, help="audio: 64, 96, 128, 192, 256 or 320")
    p.add_argument("--format", help="audio: mp3, ogg, aac, flac, wav; images: auto, webp, avif, jpeg, png")
    p.add_argument("--quality", help="audio: low, medium, high; images: 1..100")
    p.add_argument("--width", type=int, help="images: 1..8192")
    p.add_argument("--height", type=int, help="images: 1..8192")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=_cmd_url)

    p = actions.add_parser("headers", help="the cache headers objects of a zone get (the TTL table)")
    p.add_argument("zone", choices=("audio", "images", "static"))
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="a cache tag to add")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=_cmd_headers)
