"""csl.devdata.seed: deterministic, realistic synthetic data, loaded with COPY; real objects."""

from __future__ import annotations

import hashlib
import random

import psycopg
import pytest

from csl.devdata.seed import SCALES, Scale, generate, object_body, seed
from csl.errors import SeedError
from csl.storage import StorageProvider

TINY = Scale(users=50, contributors=10, samples=40, generations=20, licenses=300, defects_per_kind=2,
             events_per_license=0.5)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate(TINY, tmp_path / "a", seed=7)
    b = generate(TINY, tmp_path / "b", seed=7)
    c = generate(TINY, tmp_path / "c", seed=8)
    for table in a.counts:
        assert (a.folder / f"{table}.csv").read_bytes() == (b.folder / f"{table}.csv").read_bytes()
    assert (a.folder / "licenses.csv").read_bytes() != (c.folder / "licenses.csv").read_bytes()
    assert a.defects == b.defects and a.objects == b.objects


def test_no_seeded_charge_is_reversed_for_more_than_it_was_paid(tmp_path):
    """Refunds plus a lost dispute never exceed the charge (a dispute is for at most what was not
    refunded): else the bench's settlement holds those licences and its gate fails."""
    import csv
    from collections import defaultdict

    scale = Scale(users=200, contributors=20, samples=100, generations=50, licenses=50_000, defects_per_kind=1,
                  events_per_license=0)
    data = generate(scale, tmp_path, seed=11)
    rows = {t: list(csv.reader((data.folder / f"{t}.csv").open())) for t in ("payment_intents", "refunds", "disputes")}
    paid = {r[0]: float(r[2]) for r in rows["payment_intents"]}
    reversed_ = defaultdict(float)
    for r in rows["refunds"]:
        reversed_[r[1]] += float(r[2])
    both = 0
    for r in rows["disputes"]:
        intent = "pi_" + r[1].removeprefix("ch_")
        both += reversed_[intent] > 0
        reversed_[intent] += float(r[2])
    assert both > 0, "the data set has charges both refunded in part and disputed"
    assert [i for i, amount in reversed_.items() if amount > paid[i] + 1e-9] == []


def test_objects_are_valid_audio_files():
    rng = random.Random(1)
    for seed_value in (rng.getrandbits(32) for _ in range(20)):
        wav = object_body("wav", seed_value)
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) == 8 + int.from_bytes(wav[4:8], "little")
        mp3 = object_body("mp3", seed_value)
        assert mp3[:3] == b"ID3" or mp3[:2] == b"\xff\xfb"


def test_demo_data_has_realistic_distributions(platform, settings):
    assert platform["status"] in ("loaded", "already loaded")
    with psycopg.connect(settings.database.primary_url) as conn:
        q = lambda sql: conn.execute(sql).fetchall()
        counts = dict(q("SELECT payment_status::text, count(*) FROM licenses GROUP BY 1"))
        assert set(counts) == {"completed", "pending", "failed", "refunded"}
        assert counts["completed"] > 0.7 * sum(counts.values())
        assert {r[0] for r in q("SELECT DISTINCT currency FROM payment_intents")} == {"usd", "eur", "gbp"}
        # every licence is for a sample or a generation, and its payment intent exists
        assert q("SELECT count(*) FROM licenses WHERE (audio_sample_id IS NULL) = (generation_id IS NULL)") == [(0,)]
        assert q("SELECT count(*) FROM licenses l LEFT JOIN payment_intents p ON p.id = l.payment_intent_id"
                 " WHERE p.id IS NULL") == [(0,)]
        # prices are float dollars, as the platform stores them, whole cents
        assert q("SELECT count(*) FROM licenses WHERE round(price::numeric, 2) <> price::numeric") == [(0,)]
        # refunds: every refunded licence fully, some completed ones partially
        full, partial = q("SELECT count(*) FILTER (WHERE r.amount = l.price), count(*) FILTER (WHERE r.amount < l.price)"
                          " FROM refunds r JOIN licenses l ON l.payment_intent_id = r.payment_intent_id")[0]
        assert full == counts["refunded"] and partial > 0
        # generations' source samples are real sample ids
        assert q("SELECT count(*) FROM generations g, unnest(g.source_samples) s(id)"
                 " WHERE NOT EXISTS (SELECT 1 FROM audio_samples a WHERE a.id::text = s.id)") == [(0,)]
        assert q("SELECT count(DISTINCT cultural_origin) >= 8, count(DISTINCT instrument_type) >= 20 FROM audio_samples") == [(True, True)]


def test_objects_match_their_rows_and_the_defects_are_real(platform, settings):
    primary = StorageProvider(settings.provider("primary"))
    fallback = StorageProvider(settings.provider("fallback"))
    defects = platform["defects"]
    special = {k for keys in defects.values() for k in keys}
    with psycopg.connect(settings.database.primary_url) as conn:
        rows = conn.execute("SELECT file_url, file_size FROM audio_samples ORDER BY id LIMIT 40").fetchall()
    checked = 0
    for key, size in rows:
        if key in special:
            continue
        head = primary.head(key)
        assert head is not None and head["size"] == size
        assert head["metadata"]["sha256"] == hashlib.sha256(primary.get(key)).hexdigest()
        checked += 1
    assert checked >= 30
    for key in defects["missing"]:
        assert not primary.exists(key) and not fallback.exists(key)
    for key in defects["fallback_only"]:
        assert fallback.exists(key) and not primary.exists(key)
    for key in defects["corrupt"]:
        assert primary.head(key)["metadata"]["sha256"] != hashlib.sha256(primary.get(key)).hexdigest()
        assert fallback.head(key)["metadata"]["sha256"] == hashlib.sha256(fallback.get(key)).hexdigest()
    for key in defects["unreplicated"]:
        assert primary.exists(key) and not fallback.exists(key)
    for key in defects["truncated"]:
        assert fallback.head(key)["size"] == primary.head(key)["size"] // 2
    for key, _ in rows:
        if key not in special:  # every other object is mirrored, byte for byte
            assert fallback.head(key)["etag"] == primary.head(key)["etag"]
    with psycopg.connect(settings.database.primary_url) as conn:
        for key in defects["orphan"]:
            assert primary.exists(key)
            assert conn.execute("SELECT count(*) FROM audio_samples WHERE file_url = %s", (key,)).fetchone() == (0,)


def test_rerun_is_a_no_op_and_another_data_set_needs_reset(platform, settings, tmp_path):
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        again = seed(conn, scale_name="demo", seed_value=42, workdir=tmp_path, primary=None)
        assert again["status"] == "already loaded"
        with pytest.raises(SeedError, match="--reset"):
            seed(conn, scale_name="demo", seed_value=43, workdir=tmp_path, primary=None)
        with pytest.raises(SeedError, match="unknown scale"):
            seed(conn, scale_name="huge", seed_value=1, workdir=tmp_path, primary=None)


def test_load_into_a_fresh_database_counts_match(fresh_database, tmp_path):
    from csl.migrations import migrate

    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, components=("platform", "csl_ops"))
        result = seed(conn, scale_name="demo", seed_value=3, workdir=tmp_path, primary=None)
        for table, count in result["counts"].items():
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == count
    assert result["counts"]["licenses"] == SCALES["demo"].licenses
