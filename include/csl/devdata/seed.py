"""Deterministic synthetic platform data: realistic distributions, loaded with COPY.

``generate`` writes one CSV file per platform table (streamed, never a whole table in
memory); ``load`` COPYs them in foreign-key order in one transaction; ``upload_objects``
puts a small valid WAV/MP3 under every ``audio_samples.file_url`` and
``generations.result_url`` on the primary provider and mirrors it to the fallback (SHA-256 in
the object metadata), plus a few deliberate defects for the integrity sweep: rows whose
object is missing, orphan objects, a corrupt object whose metadata still looks right, objects
only on the fallback, not yet replicated, or truncated on the fallback.
Same ``seed`` → same rows, same keys, same bytes.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from csl.devdata.audio import CONTENT_TYPES, mp3_bytes, wav_bytes
from csl.errors import SeedError
from csl.storage import StorageProvider, sha256_hex

__all__ = ["DEFECT_KINDS", "SCALES", "TABLE_ORDER", "Scale", "generate", "load", "loaded_seed", "seed", "upload_objects"]

log = logging.getLogger("csl.devdata.seed")


@dataclass(frozen=True)
class Scale:
    users: int
    contributors: int
    samples: int
    generations: int
    licenses: int
    defects_per_kind: int
    events_per_license: float


# the storage defects the seed plants for the integrity sweep (see upload_objects)
DEFECT_KINDS = ("missing", "corrupt", "fallback_only", "truncated", "unreplicated", "orphan")

SCALES = {
    "demo": Scale(users=400, contributors=60, samples=300, generations=200, licenses=5_000,
                  defects_per_kind=2, events_per_license=1.0),
    # 1.26M licences: 80 % completed, so the settlement benchmark settles over a million
    "bench": Scale(users=20_000, contributors=2_000, samples=80_000, generations=25_000,
                   licenses=1_260_000, defects_per_kind=25, events_per_license=0.2),
}

# Foreign-key order: a table only references tables before it.
TABLE_ORDER = ("users", "subscription_products", "audio_samples", "generations", "payment_intents",
               "licenses", "revenue_splits", "refunds", "disputes", "subscriptions", "invoices",
               "license_events")

COLUMNS = {
    "users": ("id", "email", "name", "role", "avatar_url", "cultural_background", "stripe_customer_id",
              "subscription_status", "created_at", "updated_at"),
    "subscription_products": ("id", "stripe_product_id", "stripe_price_id", "name", "description", "price",
                              "currency", "interval", "interval_count", "features", "active", "created_at",
                              "updated_at"),
    "audio_samples": ("id", "title", "description", "file_url", "file_size", "duration", "format", "sample_rate",
                      "cultural_origin", "instrument_type", "mood_tags", "usage_rights", "price_personal",
                      "price_commercial", "price_enterprise", "contributor_id", "cultural_context",
                      "attribution_required", "approved", "download_count", "created_at", "updated_at"),
    "generations": ("id", "user_id", "type", "status", "parameters", "result_url", "error_message",
                    "processing_time", "source_samples", "created_at", "updated_at"),
    "payment_intents": ("id", "user_id", "amount", "currency", "status", "metadata", "failure_reason",
                        "cancellation_reason", "created_at", "updated_at"),
    "licenses": ("id", "user_id", "audio_sample_id", "generation_id", "license_type", "price", "payment_status",
                 "payment_intent_id", "usage_terms", "expiry_date", "download_limit", "downloads_used", "active",
                 "created_at", "updated_at"),
    "revenue_splits": ("id", "license_id", "contributor_id", "amount", "percentage", "status", "payment_date",
                       "created_at"),
    "refunds": ("id", "payment_intent_id", "amount", "currency", "reason", "status", "created_at"),
    "disputes": ("id", "charge_id", "amount", "currency", "reason", "status", "evidence_due_by", "created_at"),
    "subscriptions": ("id", "user_id", "customer_id", "price_id", "status", "current_period_start",
                      "current_period_end", "trial_end", "cancel_at_period_end", "canceled_at", "metadata",
                      "created_at", "updated_at"),
    "invoices": ("id", "customer_id", "subscription_id", "amount_due", "amount_paid", "currency", "status",
                 "invoice_url", "invoice_pdf", "due_date", "paid_at", "metadata", "created_at", "updated_at"),
    "license_events": ("id", "license_id", "event_type", "event_data", "created_at"),
}

CULTURES = {  # cultural origin → instruments played in it
    "Mizo": ["khuang", "darkhuang", "tuiphit", "rotchem"],
    "Khasi": ["duitara", "ksing", "besli", "tangmuri"],
    "Maori": ["putorino", "koauau", "pahu", "purerehua"],
    "Yoruba": ["dundun", "bata", "sekere", "agogo"],
    "Andean": ["charango", "quena", "zampona", "bombo"],
    "Carnatic": ["veena", "mridangam", "ghatam", "nadaswaram"],
    "Gaelic": ["bodhran", "uilleann pipes", "harp", "tin whistle"],
    "Mongolian": ["morin khuur", "tovshuur", "yatga", "limbe"],
    "Javanese": ["gamelan", "bonang", "gender", "suling"],
    "Sami": ["goavddis", "fadno", "joik voice", "rattle"],
}
MOODS = ["calm", "energetic", "ceremonial", "melancholic", "joyful", "meditative", "festive", "dark",
         "uplifting", "mysterious", "rhythmic", "ambient"]
GENERATION_TYPES = ["sound_logo", "playlist", "social_clip", "long_form"]
GENERATION_PRICES = {"sound_logo": 49.0, "playlist": 19.99, "social_clip": 9.99, "long_form": 99.0}
USAGE_TERMS = ["web and social", "broadcast", "in-game", "podcast", "film festival", "internal use"]
CURRENCIES = [("usd", 85), ("eur", 10), ("gbp", 5)]
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
SPAN_S = 300 * 86_400  # the data spans ~10 months


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _stripe_id(rng: random.Random, prefix: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "".join(rng.choice(alphabet) for _ in range(24))


def _when(rng: random.Random, start: datetime = BASE_TIME, span_s: int = SPAN_S) -> datetime:
    return start + timedelta(seconds=rng.randrange(span_s))


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _array(values: list[str]) -> str:
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _bool(value: bool) -> str:
    return "t" if value else "f"


def _weighted(rng: random.Random, choices: list[tuple[Any, int]]) -> Any:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def object_key(kind: str, object_id: str, extension: str) -> str:
    """``samples/ab/<uuid>.wav``: a two-hex-digit prefix spreads keys for sharded sweeps."""
    return f"{kind}/{object_id.replace('-', '')[:2]}/{object_id}.{extension}"


@dataclass
class Generated:
    """What ``generate`` wrote: files, counts and the storage objects to upload."""

    folder: Path
    counts: dict[str, int]
    objects: list[tuple[str, str, int]]  # (key, format, object seed)
    defects: dict[str, list[str]]


class _Writer:
    def __init__(self, folder: Path, table: str) -> None:
        self.path = folder / f"{table}.csv"
        self._file = self.path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self.rows = 0

    def row(self, *values: Any) -> None:
        self._csv.writerow(["" if v is None else v for v in values])
        self.rows += 1

    def close(self) -> None:
        self._file.close()


def object_body(fmt: str, object_seed: int) -> bytes:
    rng = random.Random(object_seed)
    if fmt == "wav":
        return wav_bytes(rng, frames=rng.randrange(200, 1800))
    return mp3_bytes(rng, frames=rng.randrange(1, 5), id3=rng.random() < 0.5)


def generate(scale: Scale, folder: Path, *, seed: int = 42) -> Generated:
    """Write one CSV per platform table into ``folder``; deterministic for a given seed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    writers = {table: _Writer(folder, table) for table in TABLE_ORDER}
    w = writers
    objects: list[tuple[str, str, int]] = []
    try:
        # users: contributors first, a handful of admins, the rest listeners/creators
        users: list[str] = []
        contributors: list[str] = []
        customers: dict[str, str] = {}
        for n in range(scale.users):
            uid = _uuid(rng)
            role = "cultural_contributor" if n < scale.contributors else ("admin" if n < scale.contributors + 3 else "user")
            created = _when(rng)
            customer = _stripe_id(rng, "cus_") if rng.random() < 0.6 else None
            if customer:
                customers[uid] = customer
            culture = rng.choice(list(CULTURES)) if role == "cultural_contributor" else None
            w["users"].row(uid, f"user{n}@example.org", f"User {n}", role, None, culture, customer,
                           "active" if customer and rng.random() < 0.3 else "inactive", _ts(created), _ts(created))
            users.append(uid)
            if role == "cultural_contributor":
                contributors.append(uid)

        products = []
        for n, (name, price, interval) in enumerate([("Creator", 9.99, "month"), ("Studio", 29.99, "month"),
                                                       ("Studio yearly", 299.0, "year")]):
            pid = _stripe_id(rng, "price_")
            products.append((pid, price))
            w["subscription_products"].row(_uuid(rng), _stripe_id(rng, "prod_"), pid, name, f"{name} plan", price,
                                           "usd", interval, 1, json.dumps({"downloads": 50 * (n + 1)}), "t",
                                           _ts(BASE_TIME), _ts(BASE_TIME))

        # audio samples, each with a real object under file_url
        samples: list[tuple[str, str, tuple[float, float, float]]] = []  # id, contributor, prices
        approved_ids: list[str] = []
        for n in range(scale.samples):
            sid = _uuid(rng)
            culture = rng.choice(list(CULTURES))
            instrument = rng.choice(CULTURES[culture])
            fmt = "wav" if rng.random() < 0.6 else "mp3"
            object_seed = rng.getrandbits(32)
            key = object_key("samples", sid, fmt)
            size = len(object_body(fmt, object_seed))
            personal = round(rng.choice([4.99, 7.99, 9.99, 14.99, 19.99, 29.99]), 2)
            prices = (personal, round(personal * 3, 2), round(personal * 10, 2))
            contributor = contributors[min(int(rng.paretovariate(1.2)) - 1, len(contributors) - 1)
                                       if rng.random() < 0.5 else rng.randrange(len(contributors))]
            approved = rng.random() < 0.85
            created = _when(rng)
            w["audio_samples"].row(
                sid, f"{instrument.title()} {rng.choice(MOODS)} #{n}", f"A {culture} {instrument} recording",
                key, size, round(rng.uniform(2, 180), 3), fmt, rng.choice([44_100, 48_000]), culture, instrument,
                _array(rng.sample(MOODS, rng.randrange(1, 4))), _weighted(rng, [("personal", 5), ("commercial", 4), ("enterprise", 1)]),
                *prices, contributor, f"Recorded with {culture} musicians", _bool(rng.random() < 0.9),
                _bool(approved), int(rng.paretovariate(1.5) * 3), _ts(created), _ts(created))
            objects.append((key, fmt, object_seed))
            samples.append((sid, contributor, prices))
            if approved:
                approved_ids.append(sid)
        if not approved_ids:
            raise SeedError("no approved samples generated; scale too small")

        # generations from approved samples; completed ones have a result object
        generations: list[tuple[str, str]] = []  # id, type (completed only)
        for _ in range(scale.generations):
            gid = _uuid(rng)
            gtype = rng.choice(GENERATION_TYPES)
            status = _weighted(rng, [("completed", 85), ("failed", 5), ("processing", 4), ("pending", 6)])
            sources = rng.sample(approved_ids, min(len(approved_ids), rng.randrange(1, 6)))
            created = _when(rng)
            result_url = None
            if status == "completed":
                object_seed = rng.getrandbits(32)
                result_url = object_key("generations", gid, "mp3")
                objects.append((result_url, "mp3", object_seed))
                generations.append((gid, gtype))
            w["generations"].row(
                gid, rng.choice(users), gtype, status,
                json.dumps({"duration_s": rng.choice([5, 15, 30, 60, 180]), "tempo": rng.randrange(60, 160)}),
                result_url, "model timeout" if status == "failed" else None,
                rng.randrange(800, 60_000) if status == "completed" else None, _array(sources),
                _ts(created), _ts(created + timedelta(seconds=rng.randrange(1, 600))))
        if not generations:
            raise SeedError("no completed generations generated; scale too small")

        # licences, each paid through a payment intent; refunds, disputes, platform splits
        for _ in range(scale.licenses):
            lid = _uuid(rng)
            buyer = rng.choice(users)
            license_type = _weighted(rng, [("personal", 70), ("commercial", 25), ("enterprise", 5)])
            if rng.random() < 0.8:
                sid, contributor, prices = samples[rng.randrange(len(samples))]
                gid = None
                price = prices[("personal", "commercial", "enterprise").index(license_type)]
            else:
                sid, contributor = None, None
                gid, gtype = generations[rng.randrange(len(generations))]
                price = GENERATION_PRICES[gtype] * {"personal": 1, "commercial": 3, "enterprise": 10}[license_type]
                price = round(price, 2)
            status = _weighted(rng, [("completed", 80), ("pending", 8), ("failed", 4), ("refunded", 8)])
            currency = _weighted(rng, CURRENCIES)
            created = _when(rng)
            pi = _stripe_id(rng, "pi_")
            pi_status = {"completed": "succeeded", "refunded": "succeeded", "pending": "processing",
                         "failed": "requires_payment_method"}[status]
            charge = "ch_" + pi[3:]  # the intent's charge (Stripe's latest_charge): what a dispute names
            metadata = {"license_id": lid, **({"latest_charge": charge} if pi_status == "succeeded" else {})}
            w["payment_intents"].row(pi, buyer, price, currency, pi_status, json.dumps(metadata),
                                     "card_declined" if status == "failed" else None, None, _ts(created),
                                     _ts(created + timedelta(seconds=rng.randrange(2, 120))))
            limit = rng.choice([None, 10, 50, 100])
            w["licenses"].row(
                lid, buyer, sid, gid, license_type, price, status, pi, rng.choice(USAGE_TERMS),
                _ts(created + timedelta(days=365)) if rng.random() < 0.6 else None, limit,
                rng.randrange(0, (limit or 20) + 1), _bool(status != "refunded"), _ts(created), _ts(created))
            for _e in range(int(scale.events_per_license) + (rng.random() < scale.events_per_license % 1)):
                w["license_events"].row(_uuid(rng), lid, rng.choice(["created", "downloaded", "renewed"]),
                                        json.dumps({"source": "seed"}), _ts(created))
            refunded_at = created + timedelta(days=rng.randrange(1, 30))
            if status == "refunded":
                w["refunds"].row(_stripe_id(rng, "re_"), pi, price, currency, "requested_by_customer", "succeeded",
                                 _ts(refunded_at))
            partial = 0.0
            if status == "completed" and rng.random() < 0.03:
                partial = round(price * rng.choice([0.25, 0.5]), 2)
                w["refunds"].row(_stripe_id(rng, "re_"), pi, partial, currency, "partial_refund", "succeeded",
                                 _ts(refunded_at))
            if status == "completed" and rng.random() < 0.002:  # chargebacks: lost ones are clawed back
                # a charge is disputed for at most what was not refunded (Stripe's rule)
                w["disputes"].row(_stripe_id(rng, "dp_"), charge, round(price - partial, 2), currency, "fraudulent",
                                  _weighted(rng, [("lost", 2), ("won", 1), ("needs_response", 1)]),
                                  _ts(created + timedelta(days=21)), _ts(created))
            if status == "completed" and contributor and rng.random() < 0.3:
                # what the platform itself wrote: a float amount at a 70 % share
                paid = rng.random() < 0.5
                w["revenue_splits"].row(_uuid(rng), lid, contributor, round(price * 0.7, 2), 70.0,
                                        "paid" if paid else "pending", _ts(refunded_at) if paid else None,
                                        _ts(created))

        for uid, customer in customers.items():
            if rng.random() >= 0.1:
                continue
            sub = _stripe_id(rng, "sub_")
            price_id, amount = rng.choice(products)
            start = _when(rng)
            w["subscriptions"].row(sub, uid, customer, price_id, rng.choice(["active", "active", "canceled", "past_due"]),
                                   _ts(start), _ts(start + timedelta(days=30)), None, _bool(rng.random() < 0.1), None,
                                   json.dumps({}), _ts(start), _ts(start))
            for k in range(rng.randrange(1, 4)):
                due = start + timedelta(days=30 * k)
                paid = rng.random() < 0.9
                w["invoices"].row(_stripe_id(rng, "in_"), customer, sub, amount, amount if paid else 0.0, "usd",
                                  "paid" if paid else "open", None, None, _ts(due), _ts(due) if paid else None,
                                  json.dumps({}), _ts(due), _ts(due))
    finally:
        for writer in writers.values():
            writer.close()

    # deliberate storage defects, chosen deterministically among the objects
    defects: dict[str, list[str]] = {kind: [] for kind in DEFECT_KINDS}
    n = min(scale.defects_per_kind, max(1, len(objects) // 20))
    picked = rng.sample(range(len(objects)), 5 * n)
    for i, kind in enumerate(("missing", "corrupt", "fallback_only", "truncated", "unreplicated")):
        defects[kind] = [objects[j][0] for j in picked[i * n:(i + 1) * n]]
    defects["orphan"] = [object_key("samples", _uuid(rng), "wav") for _ in range(n)]
    counts = {table: writer.rows for table, writer in writers.items()}
    counts["csl_ops.payout_accounts"] = _payout_accounts(folder, contributors, seed)
    return Generated(folder=folder, counts=counts, objects=objects, defects=defects)


def _payout_accounts(folder: Path, contributors: list[str], seed: int) -> int:
    """``csl_ops.payout_accounts`` as the platform fills it when a contributor connects an account:
    one in twenty contributors has none yet, one in twenty is not verified yet (their balances
    are carried, with a finding). Its own random stream: the platform rows do not change."""
    rng = random.Random(seed * 7919 + 1)
    writer = _Writer(folder, "csl_ops.payout_accounts")
    try:
        for n, contributor in enumerate(contributors):
            if n % 20 == 19:
                continue
            created = _when(rng)
            verified = None if n % 20 == 18 else created + timedelta(hours=rng.randrange(1, 72))
            writer.row(contributor, _stripe_id(rng, "acct_")[:21], _ts(verified), _ts(created), _ts(verified or created))
    finally:
        writer.close()
    return writer.rows


def _nonempty_tables(conn: psycopg.Connection) -> list[str]:
    """The platform tables that hold rows (TABLE_ORDER: constant names)."""
    return [t for t in TABLE_ORDER if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone()[0]]


def load(conn: psycopg.Connection, generated: Generated, *, reset: bool = False) -> dict[str, float]:
    """COPY every CSV in FK order, in one transaction; returns seconds per table. ``reset``
    TRUNCATEs the platform tables first (``seed`` checks that they hold seeded data)."""
    timings: dict[str, float] = {}
    with conn.transaction():
        if reset:
            conn.execute("TRUNCATE " + ", ".join(TABLE_ORDER) + ", csl_ops.payout_accounts CASCADE")
        else:
            nonempty = _nonempty_tables(conn)
            if nonempty:
                raise SeedError(f"platform tables already hold data ({', '.join(nonempty)}); pass reset to replace it")
        with conn.cursor() as cur:
            for table in TABLE_ORDER:
                started = time.perf_counter()
                columns = ", ".join(COLUMNS[table])
                with (cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as copy,
                      (generated.folder / f"{table}.csv").open("rb") as source):
                    while block := source.read(1 << 20):
                        copy.write(block)
                timings[table] = time.perf_counter() - started
            started = time.perf_counter()
            with cur.copy("COPY csl_ops.payout_accounts (contributor_id, account_id, verified_at, created_at, "
                          "updated_at) FROM STDIN (FORMAT csv)") as copy:
                copy.write((generated.folder / "csl_ops.payout_accounts.csv").read_bytes())
            timings["csl_ops.payout_accounts"] = time.perf_counter() - started
        conn.execute("ANALYZE " + ", ".join(TABLE_ORDER))
    return timings


def upload_objects(generated: Generated, primary: StorageProvider, fallback: StorageProvider | None = None,
                   *, workers: int = 32) -> dict[str, int]:
    """Upload every object to the primary and mirror it to the fallback, then apply the
    deliberate defects: ``missing`` (on neither), ``fallback_only``, ``unreplicated`` (primary
    only), ``corrupt`` (the primary's bytes rotted, same size, metadata still the original
    SHA-256; the fallback copy is good), ``truncated`` (the fallback copy is short) and
    ``orphan`` (on the primary, referenced by no row)."""
    defect_of = {key: kind for kind, keys in generated.defects.items() if kind != "orphan" for key in keys}

    def put(item: tuple[str, str, int]) -> str:
        key, fmt, object_seed = item
        defect = defect_of.get(key)
        if defect == "missing":
            return "missing"
        body = object_body(fmt, object_seed)
        content_type = CONTENT_TYPES[fmt]
        if defect == "corrupt":
            rotten = bytearray(body)
            rotten[len(rotten) // 2] ^= 0xFF
            primary.client.put_object(Bucket=primary.bucket, Key=key, Body=bytes(rotten),
                                      ContentType=content_type, Metadata={"sha256": sha256_hex(body)})
        elif defect != "fallback_only":
            primary.put(key, body, content_type=content_type, metadata={"origin": "seed"})
        if fallback is not None and defect != "unreplicated":
            if defect == "truncated":
                fallback.client.put_object(Bucket=fallback.bucket, Key=key, Body=body[: len(body) // 2],
                                           ContentType=content_type, Metadata={"sha256": sha256_hex(body)})
            else:
                fallback.put(key, body, content_type=content_type, metadata={"origin": "seed"})
        return defect or "uploaded"

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for outcome in pool.map(put, generated.objects, chunksize=64):
            counts[outcome] = counts.get(outcome, 0) + 1
    rng = random.Random(len(generated.defects["orphan"]))
    for key in generated.defects["orphan"]:
        primary.put(key, wav_bytes(rng, frames=256), content_type="audio/wav", metadata={"origin": "seed-orphan"})
    counts["orphan"] = len(generated.defects["orphan"])
    return counts


def loaded_seed(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The last recorded seed load, if any."""
    row = conn.execute(
        "SELECT scale, seed, counts, defects, loaded_at FROM csl_ops.seed_runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return {"scale": row[0], "seed": row[1], "counts": row[2], "defects": row[3], "loaded_at": row[4].isoformat()}


def seed(conn: psycopg.Connection, *, scale_name: str, seed_value: int, workdir: Path,
         primary: StorageProvider | None, fallback: StorageProvider | None = None,
         reset: bool = False, force: bool = False) -> dict[str, Any]:
    """Generate, load and upload; a rerun with the same scale and seed is a no-op.

    ``reset`` replaces data that ``seed`` loaded before (a ``csl_ops.seed_runs`` record says
    so). Platform tables holding rows without such a record are somebody's real data: they are
    only truncated with ``force`` as well (``SeedError`` otherwise, before anything changes).
    """
    if scale_name not in SCALES:
        raise SeedError(f"unknown scale {scale_name!r}; expected one of {', '.join(SCALES)}")
    previous = loaded_seed(conn)
    if reset and previous is None and not force:
        nonempty = _nonempty_tables(conn)
        if nonempty:
            raise SeedError(
                f"refusing to reset {conn.info.dbname!r}: its platform tables hold rows ({', '.join(nonempty[:4])}"
                f"{', …' if len(nonempty) > 4 else ''}) that csl seed did not load (no csl_ops.seed_runs record); "
                "if this really is a dev/test database, add --force")
    if previous and not reset:
        if previous["scale"] == scale_name and previous["seed"] == seed_value:
            return {"status": "already loaded", **previous}
        raise SeedError(
            f"the database already holds the {previous['scale']!r} data set (seed {previous['seed']}); "
            "pass --reset to replace it"
        )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    generated = generate(SCALES[scale_name], workdir, seed=seed_value)
    timings["generate_s"] = time.perf_counter() - started
    started = time.perf_counter()
    per_table = load(conn, generated, reset=reset or previous is not None)
    timings["copy_s"] = time.perf_counter() - started
    uploaded: dict[str, int] = {}
    if primary is not None:
        started = time.perf_counter()
        uploaded = upload_objects(generated, primary, fallback)
        timings["upload_s"] = time.perf_counter() - started
    rows = sum(generated.counts.values())
    result = {
        "status": "loaded",
        "scale": scale_name,
        "seed": seed_value,
        "counts": generated.counts,
        "rows": rows,
        "objects": uploaded,
        "defects": generated.defects if primary is not None else {},
        "timings_s": {k: round(v, 3) for k, v in {**timings, **{f"copy.{t}": s for t, s in per_table.items()}}.items()},
        "rows_per_s": round(rows / (timings["generate_s"] + timings["copy_s"]), 1),
    }
    with conn.transaction():
        conn.execute(
            "INSERT INTO csl_ops.seed_runs (scale, seed, counts, defects) VALUES (%s, %s, %s, %s)",
            (scale_name, seed_value, json.dumps(generated.counts), json.dumps(result["defects"])),
        )
    return result


