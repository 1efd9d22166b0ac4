"""plugins/csl_airflow/connections.py: Airflow connections parsed like the environment.

The cases run in one subprocess with its own AIRFLOW_HOME (importing Airflow configures the
process), each with its connections given as ``AIRFLOW_CONN_*`` JSON, the way the stack and a
secrets backend hand them over; ``settings_from_connections`` reads them as a task would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..conftest import REPO

DB = "postgresql://csl:s3cret-db@127.0.0.1:5432/cultural_sound_lab"
STORAGE = {"conn_type": "aws", "login": "AKIAEXAMPLE", "password": "s3cret-key",
           "extra": {"endpoint_url": "http://127.0.0.1:9000", "bucket": "cultural-audio", "provider": "minio"}}
EDGE = {"conn_type": "http", "host": "127.0.0.1", "port": 6081, "schema": "http",
        "extra": {"provider": "varnish", "cache_ttl": 86400}}
CF = {"conn_type": "http", "host": "https://cdn.example.com/images", "password": "s3cret-cf",
      "extra": {"provider": "cloudflare", "zone_id": "z123"}}
AZ = {"conn_type": "http", "host": "https://csl.azurefd.net/audio", "login": "client-1", "password": "s3cret-az",
      "extra": {"provider": "azure", "tenant_id": "tenant-1",
                "zone_id": "subscriptions/s/resourceGroups/r/providers/Microsoft.Cdn/profiles/p/afdEndpoints/e"}}


def conns(*, db=DB, storage=None, edge=None, **more) -> dict[str, str]:
    def merge(base, change):
        if change is None:
            return base
        merged = {**base, **{k: v for k, v in change.items() if k != "extra"}}
        merged["extra"] = {**base.get("extra", {}), **change.get("extra", {})}
        return merged

    env = {"AIRFLOW_CONN_CSL_DB": db if isinstance(db, str) else json.dumps(db),
           "AIRFLOW_CONN_CSL_STORAGE_PRIMARY": json.dumps(merge(STORAGE, storage)),
           "AIRFLOW_CONN_CSL_CDN_EDGE": json.dumps(merge(EDGE, edge))}
    env.update({f"AIRFLOW_CONN_{k.upper()}": json.dumps(v) for k, v in more.items()})
    return env


HARNESS = r"""
import json, os, sys
cases = json.load(sys.stdin)
from csl_airflow.connections import settings_from_connections
from csl.errors import ConfigError
out = []
for case in cases:
    for key in [k for k in os.environ if k.startswith("AIRFLOW_CONN_")]:
        del os.environ[key]
    os.environ.update(case["env"])
    try:
        s = settings_from_connections(max_replica_lag_s=case.get("lag", 30.0))
        p = s.provider("primary")
        out.append({"ok": {"force_path_style": p.force_path_style, "public_bucket": p.public_bucket,
                           "checksums": p.request_checksum_calculation, "order": p.listing_order,
                           "verifies": p.verifies_checksums,
                           "cache_ttl_s": s.edge.cache_ttl_s, "edge": s.edge.base_url,
                           "lag": s.database.max_replica_lag_s, "url": repr(s.database),
                           "zones": {z.name: [z.provider, z.base_url, z.zone_id, z.browser_ttl_s, z.edge_ttl_s,
                                              dict(z.options)] for z in s.edge.zones},
                           "creds": sorted(k for k, v in vars(s.edge.credentials).items()
                                           if k != "cloudflare_plan" and v is not None),
                           "plan": s.edge.credentials.cloudflare_plan, "work_dir": s.edge.varnish_work_dir,
                           "cdn": repr(s)}})
    except ConfigError as exc:
        out.append({"error": str(exc), "setting": exc.setting})
    except Exception as exc:
        out.append({"crash": f"{type(exc).__name__}: {exc}"})
print("RESULTS " + json.dumps(out))
"""

GOOD = [
    ("defaults", conns(), {"force_path_style": True, "public_bucket": False, "cache_ttl_s": 86400,
                           "edge": "http://127.0.0.1:6081", "lag": 30.0, "checksums": "when_supported",
                           "order": "path", "verifies": True}),
    ("supabase sends checksums only where required", conns(storage={"extra": {"provider": "supabase"}}),
     {"checksums": "when_required", "order": "byte", "verifies": False}),
    ("aws lists in byte order", conns(storage={"extra": {"provider": "s3"}}), {"order": "byte", "verifies": True}),
    ("order and trust as set", conns(storage={"extra": {"provider": "s3", "listing_order": "path",
                                                         "verifies_checksums": "false"}}),
     {"order": "path", "verifies": False}),
    ("trust as a JSON bool", conns(storage={"extra": {"provider": "supabase", "verifies_checksums": True}}),
     {"order": "byte", "verifies": True}),
    ("checksums as set", conns(storage={"extra": {"request_checksum_calculation": "when_required"}}),
     {"checksums": "when_required"}),
    ("string false is false", conns(storage={"extra": {"force_path_style": "false", "public_bucket": "False"}}),
     {"force_path_style": False, "public_bucket": False}),
    ("string true is true", conns(storage={"extra": {"public_bucket": "true"}}), {"public_bucket": True}),
    ("ttl as text", conns(edge={"extra": {"cache_ttl": "3600"}}), {"cache_ttl_s": 3600}),
    ("ipv6 edge", conns(edge={"host": "::1"}), {"edge": "http://[::1]:6081"}),
    # issue 15: the zones, from csl_cdn_edge's defaults and csl_cdn_<zone> connections
    ("zones default to the edge", conns(edge={"extra": {"work_dir": "/var/tmp/edge/work"}}),
     {"zones": {z: ["varnish", f"http://127.0.0.1:6081/{z}", None, 86400, ttl, {}]
                for z, ttl in (("audio", 604800), ("images", 2592000), ("static", 2592000))},
      "creds": [], "work_dir": "/var/tmp/edge/work"}),
    ("a cloudflare zone", conns(csl_cdn_images={**CF, "extra": {**CF["extra"], "plan": "pro", "edge_ttl": 3600}}),
     {"zones": {"audio": ["varnish", "http://127.0.0.1:6081/audio", None, 86400, 604800, {}],
                "images": ["cloudflare", "https://cdn.example.com/images", "z123", 86400, 3600, {}],
                "static": ["varnish", "http://127.0.0.1:6081/static", None, 86400, 2592000, {}]},
      "creds": ["cloudflare_api_token"], "plan": "pro"}),
    ("one token for two zones", conns(csl_cdn_images=CF, csl_cdn_static={**CF, "host": "https://cdn.example.com/s"}),
     {"creds": ["cloudflare_api_token"]}),
    ("an azure zone", conns(csl_cdn_audio=AZ), {"creds": ["azure_client_id", "azure_client_secret", "azure_tenant_id"]}),
    ("cloudfront on boto3's chain", conns(csl_cdn_static={"conn_type": "http", "host": "https://d1.example.net/static",
                                                          "extra": {"provider": "cloudfront", "zone_id": "E2ABC"}}),
     {"creds": []}),
    ("a varnish zone on its own host", conns(csl_cdn_audio={"conn_type": "http", "host": "edge.internal", "port": 8080,
                                                            "extra": {"work_dir": "/srv/edge", "options": {"x": 1}}}),
     {"zones": {"audio": ["varnish", "http://edge.internal:8080", None, 86400, 604800, {"x": 1, "work_dir": "/srv/edge"}],
                "images": ["varnish", "http://127.0.0.1:6081/images", None, 86400, 2592000, {}],
                "static": ["varnish", "http://127.0.0.1:6081/static", None, 86400, 2592000, {}]}}),
]
BAD = [
    ("ttl nan", conns(edge={"extra": {"cache_ttl": "nan"}}), "extra.cache_ttl"),
    ("ttl inf", conns(edge={"extra": {"cache_ttl": "inf"}}), "extra.cache_ttl"),
    ("ttl negative", conns(edge={"extra": {"cache_ttl": -1}}), "extra.cache_ttl"),
    ("ttl fractional", conns(edge={"extra": {"cache_ttl": 1.5}}), "extra.cache_ttl"),
    ("ttl bool", conns(edge={"extra": {"cache_ttl": True}}), "extra.cache_ttl"),
    ("ttl huge", conns(edge={"extra": {"cache_ttl": "1e400"}}), "extra.cache_ttl"),
    ("path style text", conns(storage={"extra": {"force_path_style": "nope"}}), "extra.force_path_style"),
    ("public bucket number", conns(storage={"extra": {"public_bucket": 2}}), "extra.public_bucket"),
    ("unknown storage key", conns(storage={"extra": {"force_pathstyle": False}}), "extra"),
    ("unknown provider", conns(storage={"extra": {"provider": "dropbox"}}), "extra.provider"),
    ("checksums unknown", conns(storage={"extra": {"request_checksum_calculation": "always"}}),
     "extra.request_checksum_calculation"),
    ("checksums not text", conns(storage={"extra": {"request_checksum_calculation": False}}),
     "extra.request_checksum_calculation"),
    ("order unknown", conns(storage={"extra": {"listing_order": "lexical"}}), "extra.listing_order"),
    ("order not text", conns(storage={"extra": {"listing_order": 1}}), "extra.listing_order"),
    ("trust not a bool", conns(storage={"extra": {"verifies_checksums": "sometimes"}}), "extra.verifies_checksums"),
    ("trust a number", conns(storage={"extra": {"verifies_checksums": 1}}), "extra.verifies_checksums"),
    ("endpoint with credentials", conns(storage={"extra": {"endpoint_url": "http://u:s3cret-ep@127.0.0.1:9000"}}),
     "extra.endpoint_url"),
    ("edge port out of range", conns(edge={"port": 70000}), "port"),
    ("edge without host", conns(edge={"host": None}), "host"),
    ("edge host moves the URL", conns(edge={"host": "cdn.example@evil.example"}), "host"),
    ("edge schema", conns(edge={"schema": "ftp"}), "schema"),
    ("edge unknown key", conns(edge={"extra": {"ttl": 5}}), "extra"),
    ("edge default cloudflare without zone connections", conns(edge={"extra": {"provider": "cloudflare"}}),
     "extra.provider"),
    ("cloudflare without a token", conns(csl_cdn_images={**CF, "password": None}), "password"),
    ("cloudflare without a zone id", conns(csl_cdn_images={**CF, "extra": {"provider": "cloudflare"}}), "extra.zone_id"),
    ("fastly without a token", conns(csl_cdn_audio={**CF, "password": None, "extra": {"provider": "fastly",
                                                                                        "zone_id": "svc"}}), "password"),
    ("azure without a tenant", conns(csl_cdn_audio={**AZ, "extra": {**AZ["extra"], "tenant_id": None}}),
     "extra.tenant_id"),
    ("azure without a client id", conns(csl_cdn_audio={**AZ, "login": None}), "login"),
    ("cloudfront half a key pair", conns(csl_cdn_static={"conn_type": "http", "host": "https://d1.example.net/s",
                                                         "login": "AKIA1", "extra": {"provider": "cloudfront",
                                                                                     "zone_id": "E2"}}), "password"),
    ("two tokens for one provider", conns(csl_cdn_images=CF, csl_cdn_static={**CF, "password": "s3cret-other"}),
     "csl_cdn_static"),
    ("zone unknown key", conns(csl_cdn_images={**CF, "extra": {**CF["extra"], "zoneid": "z"}}), "extra"),
    ("zone unknown provider", conns(csl_cdn_images={**CF, "extra": {"provider": "akamai"}}), "extra.provider"),
    ("zone host with credentials", conns(csl_cdn_images={**CF, "host": "https://u:s3cret-h@cdn.example.com/i"}),
     "host"),
    ("zone host with a query", conns(csl_cdn_images={**CF, "host": "https://cdn.example.com/i?token=s3cret-q"}),
     "host"),
    ("zone ttl nan", conns(csl_cdn_images={**CF, "extra": {**CF["extra"], "edge_ttl": "nan"}}), "extra.edge_ttl"),
    ("zone ttl over a year", conns(csl_cdn_images={**CF, "extra": {**CF["extra"], "browser_ttl": 10**9}}),
     "extra.browser_ttl"),
    ("zone options not an object", conns(csl_cdn_images={**CF, "extra": {**CF["extra"], "options": [1]}}),
     "extra.options"),
    ("zone option a float", conns(csl_cdn_images={**CF, "extra": {**CF["extra"], "options": {"a": 1.5}}}),
     "extra.options"),
    ("cloudflare plan unknown", conns(csl_cdn_images={**CF, "extra": {**CF["extra"], "plan": "gold"}}), "extra.plan"),
    ("db port out of range", conns(db={"conn_type": "postgres", "host": "127.0.0.1", "port": 99999,
                                       "login": "csl", "password": "s3cret-db", "schema": "db"}), "port"),
    ("db extra not libpq", conns(db={"conn_type": "postgres", "host": "127.0.0.1", "login": "csl",
                                     "password": "s3cret-db", "schema": "db", "extra": {"cursor": "dict"}}), ""),
    ("db extra bool", conns(db={"conn_type": "postgres", "host": "127.0.0.1", "login": "csl",
                                "password": "s3cret-db", "schema": "db", "extra": {"keepalives": True}}),
     "extra.keepalives"),
    ("db connect_timeout nan", conns(db={"conn_type": "postgres", "host": "127.0.0.1", "login": "csl",
                                         "password": "s3cret-db", "schema": "db",
                                         "extra": {"connect_timeout": "nan"}}), ""),
    ("replica sslmode", conns(csl_db_replica={"conn_type": "postgres", "host": "127.0.0.1", "login": "csl",
                                              "password": "s3cret-db", "schema": "db",
                                              "extra": {"sslmode": "bogus"}}), ""),
    ("lag nan", {**conns(), "lag": "nan"}, "max_replica_lag_s"),
    ("lag text", {**conns(), "lag": "thirty"}, "max_replica_lag_s"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    cases = []
    for name, env, _ in GOOD + BAD:
        env = dict(env)
        lag = env.pop("lag", 30.0)
        cases.append({"name": name, "env": env, "lag": lag})
    home = tmp_path_factory.mktemp("airflow-home")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    environ.update(AIRFLOW_HOME=str(home), PYTHONPATH=os.pathsep.join(str(REPO / f) for f in ("include", "plugins")))
    done = subprocess.run([sys.executable, "-c", HARNESS], input=json.dumps(cases), capture_output=True, text=True,
                          env=environ, timeout=300, cwd=home, check=False)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULTS ")]
    assert done.returncode == 0 and line, done.stderr[-3000:]
    return {case["name"]: outcome for case, outcome in zip(cases, json.loads(line[0][len("RESULTS "):]))}


@pytest.mark.parametrize(("name", "expected"), [(name, expected) for name, _, expected in GOOD])
def test_good_connections_become_real_values(results, name, expected):
    outcome = results[name]
    assert "ok" in outcome, outcome
    assert {k: outcome["ok"][k] for k in expected} == expected
    assert "s3cret" not in outcome["ok"]["url"] and "s3cret" not in outcome["ok"]["cdn"]


@pytest.mark.parametrize(("name", "field"), [(name, field) for name, _, field in BAD])
def test_bad_connections_are_one_clear_refusal(results, name, field):
    outcome = results[name]
    assert "error" in outcome, f"{name}: accepted or crashed: {outcome}"
    assert outcome["setting"].startswith("Airflow connection") or outcome["setting"] == field
    assert field in outcome["setting"]
    assert "\n" not in outcome["error"] and "s3cret" not in outcome["error"]
