"""``python -m csl``: the pipelines' work without Airflow.

Exit codes: 0 done / healthy, 1 the work ran and found a problem (e.g. a component is
down), 2 bad input or configuration (one clear line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from importlib import import_module
from pathlib import Path

from csl.cliargs import number
from csl.cliargs import print_result as _print
from csl.cliargs import run_key as cli_run_key
from csl.config import Settings, load_env_file
from csl.errors import BadInput, ConfigError, CslError

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# The command groups of the capability packages: the module whose ``add_cli`` adds them. Importing
# one runs its package's ``__init__`` (reports and cdn bring psycopg, pandas' helpers, httpx…), so
# a command imports only its own group's; help and unknown commands import them all.
GROUPS = {"settlement": "csl.settlement.cli", "storage": "csl.storage.cli", "snapshot": "csl.reports.cli",
          "report": "csl.reports.cli", "cdn": "csl.cdn.cli"}


def _int(lo: int, hi: int):
    return number(int, lo, hi)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"csl: error: {message} (see 'python -m {self.prog} --help')\n")


def _env_file() -> Path | None:
    explicit = os.environ.get("CSL_ENV_FILE")
    if explicit:
        return Path(explicit)
    for candidate in (Path.cwd() / ".env", REPO_ROOT / ".env"):
        if candidate.is_file():
            return candidate
    return None


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from csl.db import Database
    from csl.migrations import migrate

    components = ("platform", "csl_ops") if args.with_platform_schema else ("csl_ops",)
    with Database(settings.require_database()) as db, db.connect_direct("primary") as conn:
        done = migrate(conn, components=components)
    human = "\n".join(f"applied {m['component']}/{m['version']:04d}_{m['name']} ({m['duration_ms']} ms)"
                      for m in done) or "nothing to do: every migration is applied"
    _print(args, {"applied": done}, human)
    return 0


def _cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    from csl.db import Database
    from csl.devdata.seed import seed
    from csl.storage import StorageProvider

    primary = fallback = None
    if not args.no_objects:
        primary = StorageProvider(settings.provider("primary"))
        fallback = StorageProvider(settings.provider("fallback")) if len(settings.storage) > 1 else None
    with Database(settings.require_database()) as db, db.connect_direct("primary") as conn, \
            tempfile.TemporaryDirectory(prefix="csl-seed-") as workdir:
        result = seed(conn, scale_name=args.scale, seed_value=args.seed, workdir=Path(workdir),
                      primary=primary, fallback=fallback, reset=args.reset, force=args.force)
    if result["status"] == "already loaded":
        human = f"already loaded: {result['scale']} data set, seed {result['seed']} (use --reset to reload)"
    else:
        human = (f"loaded {result['rows']:,} rows ({result['rows_per_s']:,.0f} rows/s), "
                 f"objects: {result['objects'] or 'skipped'}")
    _print(args, result, human)
    return 0


def _cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from csl.health import platform_health

    report = platform_health(settings, storage=not args.no_storage, edge=not args.no_edge)
    _print(args, report.as_dict(), report.format())
    return 0 if report.ok else 1


def _cmd_indexes(args: argparse.Namespace, settings: Settings) -> int:
    from csl.db import Database
    from csl.maintenance import indexes

    with Database(settings.require_database()) as db:
        connect = lambda: db.connect_direct("primary")
        with connect() as conn:
            plan = indexes.plan_indexes(conn, args.only)
        payload, human, failed = plan.as_dict(), plan.format(), 0
        if args.action == "apply" and not args.dry_run:
            results = indexes.apply(connect, plan.items, plan.catalog, run_id=cli_run_key(),
                                    lock_timeout_ms=args.lock_timeout_ms, statement_timeout_s=args.statement_timeout_s,
                                    max_lock_retries=args.max_lock_retries)
            payload["results"] = [r.as_dict() for r in results]
            failed = sum(r.status != "success" for r in results)
            human += "\n" + indexes.format_results(results)
    _print(args, payload, human)
    return 1 if failed else 0


def _cmd_maintenance(args: argparse.Namespace, settings: Settings) -> int:
    from csl.db import Database
    from csl.maintenance import vacuum

    policy = vacuum.Policy(mode=args.mode, dead_ratio=args.dead_ratio, max_tables=args.max_tables,
                           tables=tuple(args.tables or ()))
    with Database(settings.require_database()) as db:
        connect = lambda: db.connect_direct("primary")
        if args.action == "plan":
            with connect() as conn:
                plan = vacuum.plan_maintenance(conn, policy)
            _print(args, {k: v for k, v in plan.as_dict().items() if k != "started_at"}, plan.format())
            return 0
        outcome = vacuum.run(connect, policy, run_id=cli_run_key(), dry_run=args.dry_run, max_duration_s=args.max_duration_s,
                             workers=args.workers)
    human = "\n".join(
        f"{r['status']:<15} {r['action']:<14} {r['schema']}.{r['table']:<30} {r['reason']:<17} {r['duration_ms']} ms, "
        f"dead tuples {r['before'].get('n_dead_tup')} → {r['after'].get('n_dead_tup', '-')}"
        for r in outcome["results"]) or "nothing to do: no table needs VACUUM or ANALYZE by tonight's policy"
    _print(args, outcome, human + f"\nsummary: {outcome['summary']['by_status']}, "
                                  f"{outcome['summary']['dead_tuples_removed']:,} dead tuples removed")
    return 1 if outcome["summary"]["by_status"].get("failed") else 0




def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``command``: a group's name) the built-in commands and that group."""
    parser = _Parser(prog="csl", description="Cultural Sound Lab pipelines, without Airflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("migrate", help="apply pending csl_ops migrations (in order, under an advisory lock)")
    p.add_argument("--with-platform-schema", action="store_true",
                   help="also create the platform schema (dev/test stacks only; production has it)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("seed", help="load deterministic synthetic platform data (COPY) and upload its objects")
    p.add_argument("--scale", choices=("demo", "bench"), default="demo")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--reset", action="store_true",
                   help="replace a data set csl seed loaded before (TRUNCATEs the platform tables)")
    p.add_argument("--force", action="store_true",
                   help="with --reset: also when the tables hold rows csl seed did not load (a dev/test database only)")
    p.add_argument("--no-objects", action="store_true", help="load rows only, upload no storage objects")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_seed)

    p = sub.add_parser("health", help="database primary/replica/lag, each storage provider, the edge")
    p.add_argument("--no-storage", action="store_true")
    p.add_argument("--no-edge", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_health)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print the whole result as JSON")

    indexes = sub.add_parser("indexes", help="the declared index catalog: plan (diff) or apply (online builds)")
    actions = indexes.add_subparsers(dest="action", required=True, metavar="{plan,apply}")
    only = argparse.ArgumentParser(add_help=False)
    only.add_argument("--only", nargs="+", metavar="INDEX", help="only these catalog entries (unknown names: error)")
    p = actions.add_parser("plan", parents=[only, json_flag], help="diff the catalog against the database")
    p.set_defaults(func=_cmd_indexes, dry_run=True)
    p = actions.add_parser("apply", parents=[only, json_flag], help="build what the plan says, online")
    p.add_argument("--dry-run", action="store_true", help="show the plan, build nothing")
    p.add_argument("--lock-timeout-ms", type=_int(1, 600_000), default=2000)
    p.add_argument("--statement-timeout-s", type=_int(1, 86_400), default=3600)
    p.add_argument("--max-lock-retries", type=_int(0, 20), default=3)
    p.set_defaults(func=_cmd_indexes)

    maintenance = sub.add_parser("maintenance", help="VACUUM / ANALYZE chosen by evidence: plan, or run")
    actions = maintenance.add_subparsers(dest="action", required=True, metavar="{plan,run}")
    policy = argparse.ArgumentParser(add_help=False)
    policy.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables (schema.table or table)")
    policy.add_argument("--mode", choices=("auto", "analyze", "vacuum", "freeze"), default="auto")
    policy.add_argument("--max-tables", type=_int(1, 10_000), default=50)
    policy.add_argument("--dead-ratio", type=number(float, 0, 1, low_open=True), default=0.1)
    p = actions.add_parser("plan", parents=[policy, json_flag], help="the tables tonight's policy chooses, and why")
    p.set_defaults(func=_cmd_maintenance)
    p = actions.add_parser("run", parents=[policy, json_flag], help="VACUUM/ANALYZE the chosen tables")
    p.add_argument("--max-duration-s", type=_int(1, 86_400), default=3600,
                   help="start no new action after this many seconds")
    p.add_argument("--workers", type=_int(1, 16), default=2,
                   help="actions at once (the DAG's csl_maintenance pool has 2 slots)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_cmd_maintenance)

    wanted = [GROUPS[command]] if command in GROUPS else list(dict.fromkeys(GROUPS.values()))
    for module in wanted:  # settlement: run, statement, send-payouts, review-payout; storage: sweep,
        import_module(module).add_cli(sub)  # cleanup, restore, publish, replicate; snapshot, report; cdn
    return parser


def _command(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        env_file = _env_file()
        if env_file is not None:
            load_env_file(env_file)
        settings = Settings.from_env()
        return args.func(args, settings)
    except ConfigError as exc:
        print(f"csl: configuration error: {exc}", file=sys.stderr)
        return 2
    except BadInput as exc:  # bad names, parameters or a refusal such as a cap: before any change
        print(f"csl: {exc}", file=sys.stderr)
        return 2
    except CslError as exc:  # a problem found, or something to try again later
        print(f"csl: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # psycopg.OperationalError is not one: handled below
        print(f"csl: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            from csl.config import redact

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"csl: database unreachable: {redact(first, os.environ.get('DATABASE_URL', ''))}", file=sys.stderr)
            return 1
        raise
