"""``python -m csl storage sweep|cleanup|restore|publish|replicate``: the storage integrity sweep,
cleanup, publication and replication without Airflow.

Wired into ``csl.cli`` with ``add_cli(sub)``. Exit codes as the rest of the CLI: 0 done,
1 the work ran and found a problem (a shard failed, a dry run over a cap, a copy that failed or
a provider that stopped answering), 2 bad input or a refusal before any work (one line: a bad
``--temp-prefix``, a cap, a restore conflict, a replication plan over its caps).
"""

from __future__ import annotations

import argparse
from typing import Any

from csl.cliargs import number
from csl.cliargs import print_result as _print
from csl.cliargs import run_key as cli_run_key

__all__ = ["add_cli"]


def _cmd_sweep(args: argparse.Namespace, settings: Any) -> int:
    import uuid

    from csl.db import Database
    from csl.storage import integrity, providers_for

    names = [p.name for p in providers_for(settings, args.providers)]
    options = integrity.SweepOptions.for_settings(settings, depth=args.depth, key_order=args.key_order,
                                                  deep_sample=args.deep_sample, prefix=args.prefix)
    summary = integrity.run_sweep(settings, run_key=args.run_key or f"{cli_run_key()}__{uuid.uuid4().hex[:8]}",
                                  shards=args.shards, workers=args.workers, options=options, provider_names=names)
    with Database(settings.require_database()) as db, db.connect_direct() as conn:
        findings = integrity.open_findings(conn, sweep_id=summary.sweep_id)
    lines = [f"{f['kind']:<18} {f['provider']:<10} {f['key']}" for f in findings[:50]]
    if len(findings) > 50:
        lines.append(f"… and {len(findings) - 50} more (--json lists them all)")
    failed = summary.failed + summary.errors
    lines.append(f"swept {summary.cells} cells, {summary.db_refs:,} references, listed {summary.listed} "
                 f"in {summary.duration_s} s; findings {summary.finding_counts or 'none'}; new {summary.new}, "
                 f"closed {summary.closed}")
    for failure in failed:
        lines.append(f"FAILED shard {failure['shard']}: {failure['error']}")
    _print(args, {"summary": summary.as_dict(), "findings": findings}, "\n".join(lines))
    return 1 if failed else 0


def _cmd_restore(args: argparse.Namespace, settings: Any) -> int:
    from csl.db import Database
    from csl.storage import cleanup, providers_for

    providers = providers_for(settings, args.providers)
    with Database(settings.require_database()) as db, db.connect_direct() as conn:
        done = cleanup.restore(conn, providers, key=args.key, run_key=args.run_key, force=args.force)
    _print(args, done, "\n".join([f"restored {r['key']} on {r['provider']}" for r in done["restored"]]
                                 + [f"skipped {r['key']}: {r['reason']}" for r in done["skipped"]]))
    return 0


def _cmd_cleanup(args: argparse.Namespace, settings: Any) -> int:
    from csl.cdn.queue import published_base_url
    from csl.db import Database
    from csl.storage import cleanup, configured_buckets, providers_for

    cleanup.check_temp_prefix(args.temp_prefix)  # one line before any work
    providers = providers_for(settings, args.providers)
    with Database(settings.require_database()) as db, db.connect_direct() as conn:
        result = cleanup.run_cleanup(
            conn, providers, run_key=args.run_key or cli_run_key(), temp_prefix=args.temp_prefix,
            temp_ttl_h=args.temp_ttl_h, orphan_grace_h=args.orphan_grace_h, max_objects=args.max_objects,
            max_share=args.max_share, dry_run=not args.apply, purge_quarantine=args.purge_quarantine,
            quarantine_retention_days=args.quarantine_retention_days, buckets=configured_buckets(settings),
            edge_base_url=published_base_url(settings))
    verb = "would move" if result.dry_run else "moved"
    lines = [f"{verb} {c['key']} on {c['provider']} ({c['reason']})" for c in result.candidates]
    lines += [f"kept {c['key']} on {c['provider']} ({c['reason']}): a row refers to it"
              for c in result.kept_referenced]
    lines.append(f"{verb} {len(result.candidates)} objects to quarantine {result.by_reason or ''}"
                 + ("" if args.apply else " — dry run; pass --apply to move them"))
    if result.refused:
        lines.append(f"REFUSED: {result.refused}")
    _print(args, result.as_dict(), "\n".join(lines))
    return 1 if result.refused else 0


def _cmd_publish(args: argparse.Namespace, settings: Any) -> int:
    from csl.cdn import CachePolicy, VarnishEdge
    from csl.db import Database
    from csl.storage import configured_buckets, providers_for, publication

    public = providers_for(settings, args.providers, published_only=True)
    with Database(settings.require_database()) as db, db.connect_direct() as conn:
        edge = VarnishEdge(settings.edge) if settings.edge.enabled else None
        try:
            run = publication.publish_all(conn, public, run_key=args.run_key or cli_run_key(),
                                          dry_run=not args.apply, max_withdrawals=args.max_withdrawals,
                                          max_share=args.max_share, edge=edge, buckets=configured_buckets(settings),
                                          cache_policy=CachePolicy.from_settings(settings.edge))
        finally:
            if edge is not None:
                edge.close()
    lines = []
    for result in run.results:
        verb = ("would " if not args.apply else "") + "publish"
        lines += [f"{verb} {key} ({reason})" for key, reason in result.publish]
        lines += [f"{'would withdraw' if not args.apply else 'withdrew'} {key}" for key in result.withdraw]
        lines += [f"missing original (copy kept if any): {key}" for key in result.missing]
        lines += [f"not publishable (outside {', '.join(publication.PUBLISHED_PREFIXES)}): {key}"
                  for key in result.unpublishable]
        lines += [(f"NOT PUBLISHED {r['key']}: " + ("its bytes do not match the SHA-256 it was stored with"
                                                    if r["problem"] == "corrupt" else
                                                    f"the copy's SHA-256 {r['copy_sha256']} is not the "
                                                    f"original's {r['expected_sha256']}"))
                  for r in result.copy_refused]
        lines.append(f"{result.provider} → {result.bucket}: {result.approved} approved, "
                     f"{result.published} were published; {len(result.publish)} to publish, "
                     f"{len(result.withdraw)} to withdraw"
                     + ("" if args.apply else " — dry run; pass --apply to change them"))
        if result.refused:
            lines.append(f"REFUSED: {result.refused}")
    _print(args, {"providers": [r.as_dict() for r in run.results]}, "\n".join(lines))
    return 1 if run.error or any(r.refused for r in run.results) else 0


def _cmd_replicate(args: argparse.Namespace, settings: Any) -> int:
    from csl.storage.replication import ReplicationOptions, replicate

    options = ReplicationOptions(mode=args.mode, prefix=args.prefix or "", source=args.source,
                                 destination=args.destination, max_objects=args.max_objects,
                                 max_bytes=args.max_bytes, concurrency=args.concurrency,
                                 multipart_threshold_mb=args.multipart_threshold_mb, dry_run=args.dry_run)
    # a provider that stops answering is csl.cli's one mapping (exit 1); what finished is recorded
    # and a rerun with the same --run-key resumes
    plan, summary = replicate(settings, run_key=args.run_key or cli_run_key(), options=options,
                              provider_names=args.providers)
    if summary is None:
        lines = [f"would copy {c.key} {c.source} → {c.destination} ({c.size:,} bytes, {c.reason})"
                 if not c.in_place else f"would prove {c.key} on {c.destination} in place"
                 for c in plan.copies[:50]]
        if len(plan.copies) > 50:
            lines.append(f"… and {len(plan.copies) - 50} more (--json lists the first {plan.SHOWN})")
        lines += [f"CONFLICT {d.key}: {d.conflict}" for d in plan.conflicts[:50]]
        lines += [f"not copied to {dest}: {key}: {why}" for key, dest, why in plan.blocked[:50]]
        totals = plan.totals()
        lines.append(f"dry run: {totals['objects']} objects ({totals['bytes']:,} bytes) to copy, "
                     f"{totals['in_place']} to prove in place, {totals['conflicts']} conflicts; nothing copied")
        _print(args, {"plan": plan.as_dict()}, "\n".join(lines))
        return 0
    text = summary.format()
    if plan.quick_look:
        text = (f"nothing owed under {options.prefix!r}: every provider's listing agrees with the database "
                f"(quick look; no sweep recorded)\n{text}")
    _print(args, {"plan": {**plan.totals(), "quick_look": plan.quick_look}, "summary": summary.as_dict()}, text)
    return 1 if summary.failed or summary.not_done else 0


def add_cli(sub: Any) -> None:
    """Register ``storage sweep|cleanup|restore|publish|replicate`` on the ``csl`` command's subparsers:
    each action its own subcommand, with only its own options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--providers", nargs="+", metavar="NAME", help="providers by role (default: all configured)")
    common.add_argument("--json", action="store_true", help="print the whole result as JSON")
    storage = sub.add_parser("storage", help="integrity sweep (never deletes), cleanup to quarantine, restore, "
                                             "publication of the approved samples, replication between providers")
    actions = storage.add_subparsers(dest="action", required=True,
                                     metavar="{sweep,cleanup,restore,publish,replicate}")

    p = actions.add_parser("sweep", parents=[common], help="compare the database with every provider; report findings")
    p.add_argument("--prefix", help="only keys under this prefix")
    p.add_argument("--deep-sample", type=number(float, 0, 1), default=0.0,
                   help="share of objects downloaded and hashed (0..1)")
    p.add_argument("--shards", type=number(int, 1, 256), default=4)
    p.add_argument("--workers", type=number(int, 1, 32), default=2, help="shards at once (processes)")
    p.add_argument("--depth", type=number(int, 1, 8), default=2, help="key segments per cell")
    p.add_argument("--key-order", choices=("path", "byte"), default="path",
                   help="the merge order (each provider's listing is brought into it from its declared order)")
    p.add_argument("--run-key", help="the sweep's key (default: cli__<time>__<random>)")
    p.set_defaults(func=_cmd_sweep)

    p = actions.add_parser("cleanup", parents=[common],
                           help="expired temporary uploads and old orphans to quarantine (dry run unless --apply)")
    p.add_argument("--temp-prefix", default="tmp/",
                   help="folder of temporary uploads (tmp/, uploads/tmp/ or a folder under one)")
    p.add_argument("--temp-ttl-h", type=number(int, 0, 24 * 365), default=24)
    p.add_argument("--orphan-grace-h", type=number(int, 0, 24 * 365), default=72)
    p.add_argument("--max-objects", type=number(int, 0, 10**7), default=1000,
                   help="abort before touching anything when more would move")
    p.add_argument("--max-share", type=number(float, 0, 1, low_open=True), default=0.10,
                   help="abort when more than this share of a provider's objects would move")
    p.add_argument("--apply", action="store_true", help="really move (default: dry run)")
    p.add_argument("--purge-quarantine", action="store_true",
                   help="delete quarantine older than --quarantine-retention-days")
    p.add_argument("--quarantine-retention-days", type=number(int, 1, 3650), default=30)
    p.add_argument("--run-key", help="the run's key (default: cli__<time>)")
    p.set_defaults(func=_cmd_cleanup)

    p = actions.add_parser("restore", parents=[common], help="bring quarantined objects back to their keys")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="the original key")
    which.add_argument("--run-key", help="everything that cleanup run moved")
    p.add_argument("--force", action="store_true", help="overwrite a different object that now lives at the key")
    p.set_defaults(func=_cmd_restore)

    p = actions.add_parser("publish", parents=[common],
                           help="make the published bucket hold exactly the approved samples (dry run unless --apply)")
    p.add_argument("--max-withdrawals", type=number(int, 0, 10**7), default=1000,
                   help="abort before changing anything when more would be withdrawn")
    p.add_argument("--max-share", type=number(float, 0, 1, low_open=True), default=0.10,
                   help="abort when more than this share of the published samples would be withdrawn")
    p.add_argument("--apply", action="store_true", help="really publish and withdraw (default: dry run)")
    p.add_argument("--run-key", help="the run's key (default: cli__<time>)")
    p.set_defaults(func=_cmd_publish)

    p = actions.add_parser("replicate", parents=[common],
                           help="copy what is missing or wrong between providers, SHA-256-verified")
    p.add_argument("--mode", choices=("queue", "findings", "diff"), default="queue",
                   help="queue: uploads that fell back; findings: the sweep's open findings; "
                        "diff: a fresh comparison of --prefix")
    p.add_argument("--prefix", help="only keys under this prefix")
    p.add_argument("--source", metavar="NAME", help="copy only from this provider")
    p.add_argument("--destination", metavar="NAME", help="copy only to this provider")
    p.add_argument("--max-objects", type=number(int, 1, 10**7), default=10_000,
                   help="refuse before copying anything when the plan copies more objects")
    p.add_argument("--max-bytes", type=number(int, 1, 1 << 50), default=100 * 1024 ** 3,
                   help="refuse before copying anything when the plan copies more bytes")
    p.add_argument("--concurrency", type=number(int, 1, 64), default=8, help="objects copied at once")
    p.add_argument("--multipart-threshold-mb", type=number(int, 5, 5 * 1024), default=8,
                   help="objects above this go up in parts")
    p.add_argument("--dry-run", action="store_true", help="show the plan, copy nothing")
    p.add_argument("--run-key", help="the run's key; the same key again resumes it (default: cli__<time>)")
    p.set_defaults(func=_cmd_replicate)
