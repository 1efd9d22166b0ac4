"""csl.config: settings from the platform's env names, validated, secrets masked."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from csl.config import DatabaseSettings, EdgeSettings, Settings, load_env_file, mask_url
from csl.errors import ConfigError

from ..conftest import REPO

BASE = {
    "DATABASE_URL": "postgresql://csl:s3cret-db@127.0.0.1:5432/cultural_sound_lab",
    "DATABASE_READ_REPLICA_URL": "postgresql://csl:s3cret-db@127.0.0.1:5433/cultural_sound_lab",
    "STORAGE_PROVIDER": "minio",
    "MINIO_ENDPOINT": "http://127.0.0.1:9000",
    "MINIO_ACCESS_KEY": "AKIAMINIO",
    "MINIO_SECRET_KEY": "s3cret-minio",
    "STORAGE_FALLBACK_PROVIDER": "supabase",
    "SUPABASE_URL": "https://project.supabase.co",
    "SUPABASE_S3_ACCESS_KEY_ID": "supa-key",
    "SUPABASE_S3_SECRET_ACCESS_KEY": "s3cret-supa",
    "CDN_ENABLED": "true",
    "CDN_BASE_URL": "https://cdn.culturalsoundlab.com",
}


def test_full_settings_from_the_platform_env_names():
    settings = Settings.from_env(BASE)
    db = settings.require_database()
    assert db.replica_url.endswith(":5433/cultural_sound_lab")
    primary, fallback = settings.provider("primary"), settings.provider("fallback")
    assert (primary.kind, primary.bucket, primary.force_path_style) == ("minio", "cultural-audio", True)
    assert fallback.endpoint_url == "https://project.supabase.co/storage/v1/s3"
    assert fallback.bucket == "audio-samples"
    assert settings.edge.enabled and settings.edge.cache_ttl_s == 86400


def test_secrets_never_appear_in_repr():
    text = repr(Settings.from_env(BASE))
    for secret in ("s3cret-db", "s3cret-minio", "s3cret-supa"):
        assert secret not in text
    assert "csl:***@127.0.0.1:5432" in text


def test_explicit_values_win_over_the_environment():

    explicit = DatabaseSettings(primary_url="postgresql://other@db.internal:6432/platform")
    settings = Settings.from_env(BASE, database=explicit)
    assert settings.require_database().primary_url.startswith("postgresql://other@db.internal")


@pytest.mark.parametrize(
    ("change", "setting", "expected"),
    [
        ({"DATABASE_URL": "mysql://u:p@h/db"}, "DATABASE_URL", "postgresql://"),
        ({"DATABASE_URL": "postgresql://u:p@h:notaport/db"}, "DATABASE_URL", "port"),
        ({"DATABASE_READ_REPLICA_URL": "postgresql://u:p@h:5432"}, "DATABASE_READ_REPLICA_URL", "database"),
        ({"STORAGE_PROVIDER": "dropbox"}, "STORAGE_PROVIDER", "minio, s3, supabase"),
        ({"MINIO_ENDPOINT": None}, "MINIO_ENDPOINT", "STORAGE_PROVIDER=minio"),
        ({"MINIO_ENDPOINT": "ftp://files"}, "MINIO_ENDPOINT", "http(s)"),
        ({"MINIO_FORCE_PATH_STYLE": "maybe"}, "MINIO_FORCE_PATH_STYLE", "true or false"),
        ({"CDN_CACHE_TTL": "a day"}, "CDN_CACHE_TTL", "number"),
        ({"CDN_PROVIDER": "akamai"}, "CDN_PROVIDER", "cloudflare"),
        ({"CDN_BASE_URL": None}, "CDN_BASE_URL", "CDN_ENABLED"),
        ({"STORAGE_FALLBACK_PROVIDER": "minio"}, "STORAGE_FALLBACK_PROVIDER", "differ"),
        ({"CSL_MAX_REPLICA_LAG_S": "-3"}, "CSL_MAX_REPLICA_LAG_S", "from 0 to 3600"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name(change, setting, expected):
    env = {**BASE, **change}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == setting
    assert expected in str(caught.value)


def test_missing_database_is_refused_only_when_needed():
    settings = Settings.from_env({"STORAGE_PROVIDER": ""})
    assert settings.storage == ()
    with pytest.raises(ConfigError, match="DATABASE_URL: not set"):
        settings.require_database()
    with pytest.raises(ConfigError, match="STORAGE_PROVIDER"):
        settings.provider("primary")


def test_env_file_fills_only_what_is_unset(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# comment\nDATABASE_URL='postgresql://a@h/db'\nexport CDN_PROVIDER=varnish\nJSON='{\"a\": 1}'\n")
    environ = {"CDN_PROVIDER": "cloudflare"}
    loaded = load_env_file(path, environ=environ)
    assert environ == {"CDN_PROVIDER": "cloudflare", "DATABASE_URL": "postgresql://a@h/db", "JSON": '{"a": 1}'}
    assert loaded["CDN_PROVIDER"] == "varnish"


def test_env_file_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / ".env"
    path.write_text("GOOD=1\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=r"\.env:2: expected KEY=VALUE"):
        load_env_file(path, environ={})


# -- numbers and bools: real, finite, in range, or one line naming the setting ------------------
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "-1", "1e400", "1.5", "1e3", "86400s",
                                   "1_000", "\u0661\u0662", "31536001", " ", "0x10", "true"])
def test_cdn_cache_ttl_must_be_whole_seconds_within_a_year(value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, "CDN_CACHE_TTL": value})
    assert caught.value.setting == "CDN_CACHE_TTL"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("value", "expected"), [("0", 0), (" 3600 ", 3600), ("31536000", 31536000), ("", 86400)])
def test_cdn_cache_ttl_accepts_whole_seconds(value, expected):
    assert Settings.from_env({**BASE, "CDN_CACHE_TTL": value}).edge.cache_ttl_s == expected


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400", "-0.5", "3601", "thirty", "1_0", "\u0661"])
def test_max_replica_lag_must_be_a_finite_bound(value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, "CSL_MAX_REPLICA_LAG_S": value})
    assert caught.value.setting == "CSL_MAX_REPLICA_LAG_S"
    assert "\n" not in str(caught.value)


def test_max_replica_lag_accepts_decimals():
    assert Settings.from_env({**BASE, "CSL_MAX_REPLICA_LAG_S": "2.5"}).database.max_replica_lag_s == 2.5
    assert Settings.from_env({**BASE, "CSL_MAX_REPLICA_LAG_S": "1e1"}).database.max_replica_lag_s == 10.0


def test_values_built_in_code_are_checked_too():
    """The Airflow glue builds settings objects directly: the same rules hold there."""
    database = Settings.from_env(BASE).database
    for bad in (math.nan, math.inf, -1.0, True, "30"):
        with pytest.raises(ConfigError, match="CSL_MAX_REPLICA_LAG_S"):
            replace(database, max_replica_lag_s=bad)
    for bad in (math.nan, 1.5, -1, True, "86400"):
        with pytest.raises(ConfigError, match="CDN_CACHE_TTL"):
            EdgeSettings(cache_ttl_s=bad)
    provider = Settings.from_env(BASE).provider("primary")
    for field in ("force_path_style", "public_bucket"):
        with pytest.raises(ConfigError, match=field.upper()):
            replace(provider, **{field: "false"})  # a non-empty string is truthy: never a bool here
    with pytest.raises(ConfigError, match="CDN_ENABLED"):
        EdgeSettings(enabled="false", base_url="https://cdn.example")


@pytest.mark.parametrize(("change", "setting"), [
    ({"MINIO_ENDPOINT": "http://127.0.0.1:0"}, "MINIO_ENDPOINT"),
    ({"MINIO_ENDPOINT": "http://127.0.0.1:99999"}, "MINIO_ENDPOINT"),
    ({"MINIO_ENDPOINT": "http://127.0.0.1:9x"}, "MINIO_ENDPOINT"),
    ({"MINIO_ENDPOINT": "http://127.0.0.1:9000\n"}, "MINIO_ENDPOINT"),
    ({"MINIO_ENDPOINT": "http://127.0.0.1 :9000"}, "MINIO_ENDPOINT"),
    ({"CDN_BASE_URL": "https://cdn.example/?x=1"}, "CDN_BASE_URL"),
    ({"DATABASE_URL": "postgresql://csl:pw@127.0.0.1:0/db"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://csl:pw@127.0.0.1:70000/db"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://csl:pw@127.0.0.1:5432/db?connect_timeout=nan"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://csl:pw@127.0.0.1:5432/db?sslmode=sometimes"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://csl:pw@127.0.0.1:5432/db?cursor=dict"}, "DATABASE_URL"),
    ({"DATABASE_READ_REPLICA_URL": "postgresql://csl:pw@127.0.0.1:5433/db?port=x"}, "DATABASE_READ_REPLICA_URL"),
    ({"CDN_ENABLED": "2"}, "CDN_ENABLED"),
    ({"S3_PUBLIC_BUCKET": "yes please", "STORAGE_FALLBACK_PROVIDER": "s3", "S3_BUCKET": "b",
      "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}, "S3_PUBLIC_BUCKET"),
    # the published bucket (issue 12, item 11): a bucket name, not the private one, only for a public provider
    ({"MINIO_PUBLIC_BUCKET": "true", "MINIO_PUBLISHED_BUCKET": "Public Audio"}, "MINIO_PUBLISHED_BUCKET"),
    ({"MINIO_PUBLIC_BUCKET": "true", "MINIO_PUBLISHED_BUCKET": "../x"}, "MINIO_PUBLISHED_BUCKET"),
    ({"MINIO_PUBLIC_BUCKET": "true", "MINIO_BUCKET": "audio", "MINIO_PUBLISHED_BUCKET": "audio"},
     "MINIO_PUBLISHED_BUCKET"),
    ({"MINIO_PUBLIC_BUCKET": "false", "MINIO_PUBLISHED_BUCKET": "audio-published"}, "MINIO_PUBLISHED_BUCKET"),
    # when boto3 adds upload checksums (issue 14): one of the two values botocore knows
    ({"MINIO_REQUEST_CHECKSUM_CALCULATION": "always"}, "MINIO_REQUEST_CHECKSUM_CALCULATION"),
    ({"MINIO_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED "}, "MINIO_REQUEST_CHECKSUM_CALCULATION"),
    # the order a provider lists in, and whether its SHA-256 upload checksums are evidence (issue 14)
    ({"MINIO_LISTING_ORDER": "lexical"}, "MINIO_LISTING_ORDER"),
    ({"SUPABASE_LISTING_ORDER": "Byte"}, "SUPABASE_LISTING_ORDER"),
    ({"MINIO_VERIFIES_CHECKSUMS": "sometimes"}, "MINIO_VERIFIES_CHECKSUMS"),
    ({"S3_LISTING_ORDER": "random", "STORAGE_FALLBACK_PROVIDER": "s3", "S3_BUCKET": "b",
      "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}, "S3_LISTING_ORDER"),
])
def test_ports_urls_and_bools_are_parsed_up_front(change, setting):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, **change})
    assert caught.value.setting == setting
    assert "\n" not in str(caught.value)


# -- secrets in URLs and DSNs (issue #12 item 16) ---------------------------------------------
@pytest.mark.parametrize(("url", "visible"), [
    ("postgresql://csl:s3cret-pw@db:5432/platform", "postgresql://csl:***@db:5432/platform"),
    ("postgresql://csl@db/platform?password=s3cret-pw&sslmode=require",
     "postgresql://csl@db/platform?password=***&sslmode=require"),
    ("postgresql://csl@db/platform?sslmode=verify-full&sslpassword=s3cret-pw", "sslmode=verify-full&sslpassword=***"),
    ("postgresql://csl@db/platform?pass%77ord=s3cret-pw", "pass%77ord=***"),
    ("postgresql://csl:s3cret/pw@db/platform", "postgresql://csl:***@db/platform"),
    ("postgresql://csl:s3cret@pw@db/platform", "postgresql://csl:***@db/platform"),
    ("postgresql://csl:s3cret?pw@db/platform", "postgresql://csl:***@db/platform"),
    ("postgresql://csl@db/platform?application_name=a@b&password=s3cret-pw", "password=***"),
    ("postgresql://csl:s3cret?password=pw@db/platform", "postgresql://csl:***"),  # over-masked: safe
    ("host=db port=5432 user=csl password=s3cret-pw dbname=platform", "host=db port=5432 user=csl password=*** "),
    ("host=db password = 's3cret pw \\' more' dbname=platform", "host=db password = *** dbname=platform"),
    ("host=db sslpassword='s3cret-pw", "host=db sslpassword=***"),
    ("https://bucket.s3.example/key?X-Amz-Credential=AKIA%2Fs3cret-pw&X-Amz-Signature=s3cret-pw&v=1",
     "X-Amz-Credential=***&X-Amz-Signature=***&v=1"),
    ("https://api:s3cret-pw@payments.example/v1?token=s3cret-pw", "https://api:***@payments.example/v1?token=***"),
])
def test_mask_url_hides_every_secret_shape(url, visible):
    masked = mask_url(url)
    assert "s3cret" not in masked and visible in masked


def test_mask_url_leaves_urls_without_secrets_alone():
    for url in ("postgresql://csl@db:5432/platform?sslmode=require", "http://127.0.0.1:9000", "host=db dbname=x"):
        assert mask_url(url) == url


def test_repr_masks_query_passwords():
    env = {**BASE, "DATABASE_URL": "postgresql://csl@127.0.0.1:5432/db?password=s3cret-q&sslpassword=s3cret-ssl"}
    text = repr(Settings.from_env(env))
    assert "s3cret" not in text and "password=***" in text


@pytest.mark.parametrize(("setting", "url"), [
    ("DATABASE_URL", "postgresql://csl:p%zzs3cret@127.0.0.1:5432/db"),  # libpq quotes the bad token
    ("DATABASE_URL", "postgresql://csl:s3cret-pw@[::1/db"),  # libpq echoes the whole URI
    ("DATABASE_URL", "postgresql://csl:s3cret/pw@127.0.0.1:5432/db"),  # libpq reads "s3cret" as a port
    ("DATABASE_URL", "postgresql://csl@127.0.0.1:5432/db?password=s3cret-pw&bogus=1"),
    ("DATABASE_READ_REPLICA_URL", "postgresql://csl:s3cret-pw@127.0.0.1:99999/db"),
    ("MINIO_ENDPOINT", "http://minio:s3cret-pw@127.0.0.1:9000"),
    ("MINIO_ENDPOINT", "ftp://minio:s3cret-pw@127.0.0.1:9000"),
    ("MINIO_ENDPOINT", "http://127.0.0.1:9000/?X-Amz-Signature=s3cret-pw"),
    ("CDN_BASE_URL", "https://cdn.example/#token=s3cret-pw"),
    ("CDN_BASE_URL", "https://edge:s3cret-pw@[::1"),
])
def test_a_bad_url_is_refused_without_echoing_its_secret(setting, url):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, setting: url})
    assert caught.value.setting == setting
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


# -- the CLI: exit 2 and one line, before any work ------------------------------------------------
@pytest.mark.parametrize(("change", "setting"), [
    ({"CDN_CACHE_TTL": "nan"}, "CDN_CACHE_TTL"),
    ({"CDN_CACHE_TTL": "1e400"}, "CDN_CACHE_TTL"),
    ({"CSL_MAX_REPLICA_LAG_S": "nan"}, "CSL_MAX_REPLICA_LAG_S"),
    ({"MINIO_FORCE_PATH_STYLE": "maybe"}, "MINIO_FORCE_PATH_STYLE"),
    ({"DATABASE_URL": "postgresql://csl:p%zzs3cret@127.0.0.1:1/db"}, "DATABASE_URL"),
])
def test_cli_refuses_bad_settings_with_exit_2(change, setting):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "STORAGE_", "MINIO_", "S3_", "CDN_",
                                                                     "SUPABASE_", "CSL_"))}
    # a database nobody listens on: a setting that slipped through would fail later, with exit 1
    env.update({**BASE, "DATABASE_URL": "postgresql://csl:s3cret-db@127.0.0.1:1/db", "CSL_ENV_FILE": os.devnull,
                "PYTHONPATH": str(REPO / "include")}, **change)  # this tree's csl, also in a git worktree
    result = subprocess.run([sys.executable, "-m", "csl", "health"], capture_output=True, text=True, timeout=120,
                            env=env, cwd=REPO, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_upload_checksums_default_by_provider_and_can_be_set_per_provider():
    # boto3 >= 1.36 adds a CRC32 to every upload; Supabase Storage refuses or mis-stores it
    supabase = {**BASE, "STORAGE_FALLBACK_PROVIDER": "supabase", "SUPABASE_URL": "https://x.supabase.co",
                "SUPABASE_S3_ACCESS_KEY_ID": "k", "SUPABASE_S3_SECRET_ACCESS_KEY": "s"}
    settings = Settings.from_env(supabase)
    assert settings.provider("primary").request_checksum_calculation == "when_supported"
    assert settings.provider("fallback").request_checksum_calculation == "when_required"
    chosen = Settings.from_env({**supabase, "MINIO_REQUEST_CHECKSUM_CALCULATION": "when_required",
                                "SUPABASE_REQUEST_CHECKSUM_CALCULATION": "when_supported"})
    assert chosen.provider("primary").request_checksum_calculation == "when_required"
    assert chosen.provider("fallback").request_checksum_calculation == "when_supported"


def test_listing_order_and_checksum_trust_default_by_provider_and_can_be_set_per_provider():
    # SeaweedFS/MinIO list folder by folder ("path"), AWS S3 and Supabase in byte order; Supabase
    # does not check an upload's SHA-256 checksum, so its copies are read back to be verified
    s3 = {**BASE, "STORAGE_FALLBACK_PROVIDER": "s3", "S3_BUCKET": "b", "AWS_ACCESS_KEY_ID": "k",
          "AWS_SECRET_ACCESS_KEY": "s"}
    supabase = Settings.from_env(BASE)
    assert (supabase.provider("primary").listing_order, supabase.provider("primary").verifies_checksums) == (
        "path", True)
    assert (supabase.provider("fallback").listing_order, supabase.provider("fallback").verifies_checksums) == (
        "byte", False)
    aws = Settings.from_env(s3).provider("fallback")
    assert (aws.listing_order, aws.verifies_checksums) == ("byte", True)
    chosen = Settings.from_env({**s3, "MINIO_LISTING_ORDER": "byte", "MINIO_VERIFIES_CHECKSUMS": "false",
                                "S3_LISTING_ORDER": "path", "S3_VERIFIES_CHECKSUMS": "no"})
    assert (chosen.provider("primary").listing_order, chosen.provider("primary").verifies_checksums) == (
        "byte", False)
    assert (chosen.provider("fallback").listing_order, chosen.provider("fallback").verifies_checksums) == (
        "path", False)
    chosen = Settings.from_env({**BASE, "SUPABASE_LISTING_ORDER": "path", "SUPABASE_VERIFIES_CHECKSUMS": "true"})
    assert (chosen.provider("fallback").listing_order, chosen.provider("fallback").verifies_checksums) == (
        "path", True)
    # set in code: the value itself, checked like the environment's
    with pytest.raises(ConfigError, match="MINIO_VERIFIES_CHECKSUMS"):
        replace(supabase.provider("primary"), verifies_checksums="yes")
    with pytest.raises(ConfigError, match="MINIO_LISTING_ORDER"):
        replace(supabase.provider("primary"), listing_order="unicode")
