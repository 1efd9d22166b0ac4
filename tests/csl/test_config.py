"""csl.config: settings from the platform's env names, validated, secrets masked."""

from __future__ import annotations

import pytest

from csl.config import Settings, load_env_file
from csl.errors import ConfigError

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
    from csl.config import DatabaseSettings

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
        ({"CSL_MAX_REPLICA_LAG_S": "-3"}, "CSL_MAX_REPLICA_LAG_S", ">= 0"),
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
