"""The storage service against the real endpoints: failover with a replicate-back record,
delete everywhere, signed URL expiry enforced by the S3 server."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import replace
from urllib.parse import unquote

import httpx
import psycopg
import pytest

from csl.config import Secret
from csl.devdata.audio import wav_bytes
from csl.errors import ProviderUnavailable, StorageError
from csl.storage import StorageProvider, StorageService, queue_replication, sha256_hex
from csl.storage.media import UploadRejected


def _service(settings, primary: StorageProvider | None = None) -> StorageService:
    url = settings.database.primary_url
    return StorageService(primary or StorageProvider(settings.provider("primary"), max_attempts=1),
                          StorageProvider(settings.provider("fallback"), max_attempts=1),
                          record=queue_replication(lambda: psycopg.connect(url, autocommit=True)),
                          max_url_expiry_s=600)


@pytest.fixture
def service(settings, platform):
    return _service(settings)


@pytest.fixture
def prefix(service):
    """An upload folder of the test's own; everything in it, on either provider, is deleted afterwards
    (so no later sweep or cleanup finds this test's objects)."""
    folder = f"uploads/t{uuid.uuid4().hex[:8]}"
    yield folder
    for provider in service.providers:
        for o in provider.iter_objects(folder + "/"):
            provider.delete(o.key)


WAV = wav_bytes(random.Random(9), frames=300)


def test_upload_validates_and_stores_with_checksum(service, prefix):
    result = service.upload(WAV, filename="Field recording.wav", content_type="audio/wav", prefix=prefix,
                            contributor="c-42")
    assert result.provider == "primary" and not result.replicate_back
    assert result.key.startswith(prefix + "/") and result.key.endswith(".wav")
    head = service.primary.head(result.key)
    assert head["metadata"]["sha256"] == sha256_hex(WAV) == result.sha256
    assert head["metadata"]["contributor"] == "c-42" and head["content_type"] == "audio/wav"
    with pytest.raises(UploadRejected, match="renamed|not a recognised"):
        service.upload(b"MZ" + bytes(100), filename="virus.wav", content_type="audio/wav")


def test_multipart_upload_keeps_the_whole_object_checksum(service, prefix):
    big = service.multipart_threshold
    service.multipart_threshold = 5 * 1024 * 1024
    try:
        data = WAV[:44] + bytes(6 * 1024 * 1024)
        result = service.upload(data, filename="long.wav", content_type="audio/wav", prefix=prefix)
    finally:
        service.multipart_threshold = big
    head = service.primary.head(result.key)
    assert head["size"] == len(data) and head["metadata"]["sha256"] == sha256_hex(data)
    assert "-" in head["etag"], "stored as a multipart object"


def test_primary_down_falls_back_and_records_the_copy_back(service, settings, prefix, service_down):
    service_down("s3-primary")
    result = service.upload(WAV, filename="during-outage.wav", content_type="audio/wav", prefix=prefix)
    assert result.provider == "fallback" and result.replicate_back
    assert service.fallback.get(result.key) == WAV
    with psycopg.connect(settings.database.primary_url) as conn:
        row = conn.execute("SELECT source_provider, target_provider, sha256, size_bytes, status FROM "
                           "csl_ops.replication_queue WHERE object_key = %s", (result.key,)).fetchone()
    assert row == ("fallback", "primary", sha256_hex(WAV), len(WAV), "pending")
    service.multipart_threshold = 5 * 1024 * 1024  # a multipart upload during the outage falls back too
    big = service.upload(WAV[:44] + bytes(6 * 1024 * 1024), filename="long.wav", content_type="audio/wav",
                         prefix=prefix)
    assert big.provider == "fallback" and big.replicate_back


def test_delete_removes_from_every_provider_and_reports_each(service, prefix, service_down):
    result = service.upload(WAV, filename="both.wav", content_type="audio/wav", prefix=prefix)
    service.fallback.put(result.key, WAV, content_type="audio/wav")
    assert service.delete(result.key) == {"primary": "deleted", "fallback": "deleted"}
    assert not service.primary.exists(result.key) and not service.fallback.exists(result.key)
    other = service.upload(WAV, filename="again.wav", content_type="audio/wav", prefix=prefix)
    service_down("s3-fallback")
    report = service.delete(other.key)
    assert report["primary"] == "deleted" and report["fallback"].startswith("error: storage provider 'fallback'")


def test_delete_takes_the_published_copy_too_and_owes_the_edge_a_purge(settings, service, prefix):
    from csl.cdn.queue import queue_purges

    url = settings.database.primary_url
    run = f"t-delete-{uuid.uuid4().hex[:6]}"
    service = StorageService(service.primary, service.fallback, purges=queue_purges(
        lambda: psycopg.connect(url, autocommit=True), base_url="https://cdn.example.com/audio", source_run=run))
    served = service.upload(WAV, filename="served.wav", content_type="audio/wav", prefix=prefix)
    published = service.primary.published()
    published.put(served.key, WAV, content_type="audio/wav")
    private = service.upload(WAV, filename="private.wav", content_type="audio/wav", prefix=prefix)
    assert service.delete(served.key) == service.delete(private.key) == {"primary": "deleted", "fallback": "deleted"}
    assert not published.exists(served.key) and not service.primary.exists(served.key)
    with psycopg.connect(url) as conn:
        owed = conn.execute("SELECT provider, object_key, public_url, tags, reason FROM csl_ops.cdn_purge_queue "
                            "WHERE source_run = %s AND purged_at IS NULL", (run,)).fetchall()
    assert owed == [("primary", served.key, f"https://cdn.example.com/audio/{served.key}",
                     [f"obj:/{published.bucket}/{served.key}"], "deleted")]  # the never-public one owes nothing


def test_signed_urls_expire_on_the_real_server(service, prefix):
    result = service.upload(WAV, filename="private.wav", content_type="audio/wav", prefix=prefix)
    url = service.signed_url(result.key, expires_s=3)  # 1 s flaked on a loaded machine
    assert httpx.get(url).status_code == 200
    time.sleep(4.5)
    expired = httpx.get(url)
    assert expired.status_code == 403 and "expired" in expired.text.lower()
    with pytest.raises(Exception, match="expiry must be 1..600"):
        service.signed_url(result.key, expires_s=3600)


# -- issue 12, item 12: bad input is refused up front, only an outage fails over ---------------
def _everything(service: StorageService) -> dict[str, set[str]]:
    return {p.name: {o.key for o in p.iter_objects("")} for p in service.providers}


def _queued(settings) -> int:
    with psycopg.connect(settings.database.primary_url) as conn:
        return conn.execute("SELECT count(*) FROM csl_ops.replication_queue").fetchone()[0]


BAD_UPLOADS = [
    ({"filename": "take\r\nX-Amz-Meta-Admin: yes.wav"}, "control character U\\+000D"),
    ({"filename": "take\x00.wav"}, "control character U\\+0000"),
    ({"filename": "evil\u202evaw.wav"}, "control character U\\+202E"),
    ({"filename": "../../etc/take.wav"}, "a name, not a path"),
    ({"filename": "x" * 300 + ".wav"}, "more than 255"),
    ({"content_type": "audio/wav\r\nX-Evil: 1"}, "content type .* control character"),
    ({"contributor": "Zoë"}, "contributor must be an ASCII id"),
    ({"contributor": "c-42\nX-Evil: 1"}, "contributor must be an ASCII id"),
    ({"contributor": ""}, "contributor must be an ASCII id"),
    ({"prefix": ""}, "must name a folder"),
    ({"prefix": "/"}, "must name a folder"),
    ({"prefix": "/etc/uploads"}, "relative folder"),
    ({"prefix": "../../x"}, "segment '..'"),
    ({"prefix": "uploads/../samples"}, "segment '..'"),
    ({"prefix": "uploads//x"}, "segment ''"),
    ({"prefix": "uploads/./x"}, "segment '.'"),
    ({"prefix": "C:\\uploads"}, "segment"),
    ({"prefix": "_quarantine/20261201"}, "reserved folder '_quarantine/'"),
    ({"prefix": "_csl_health"}, "reserved folder '_csl_health/'"),
    ({"prefix": "tmp"}, "reserved folder 'tmp/'"),
    ({"prefix": "uploads/tmp/"}, "reserved folder 'uploads/tmp/'"),
    ({"prefix": "uploads/ x"}, "segment ' x'"),
]


def test_bad_input_is_refused_before_anything_is_written_anywhere(service, settings, prefix):
    before, queued = _everything(service), _queued(settings)
    for change, message in BAD_UPLOADS:
        upload = {"filename": "take.wav", "content_type": "audio/wav", "prefix": prefix, **change}
        with pytest.raises(UploadRejected, match=message):
            service.upload(WAV, **upload)
    assert _everything(service) == before and _queued(settings) == queued


def test_unicode_file_names_are_kept_ascii_safe_and_reversible(service, prefix):
    name = "Café ñandú — 東京.wav"
    result = service.upload(WAV, filename=name, content_type="audio/wav", prefix=prefix, contributor="c-42")
    head = service.primary.head(result.key)
    assert head["metadata"]["original-name"].isascii() and unquote(head["metadata"]["original-name"]) == name


def test_a_refusal_by_the_primary_is_raised_not_failed_over(service, settings, prefix):
    refusing = StorageProvider(replace(settings.provider("primary"), secret_key=Secret("not-the-secret")),
                               max_attempts=1)  # answers, and refuses: HTTP 403
    before, queued = _everything(service), _queued(settings)
    with pytest.raises(StorageError, match="'primary'.*HTTP 403") as refused:
        _service(settings, refusing).upload(WAV, filename="take.wav", content_type="audio/wav", prefix=prefix)
    assert not isinstance(refused.value, ProviderUnavailable)
    assert _everything(service) == before and _queued(settings) == queued  # the fallback took nothing


def test_uploads_carry_the_cache_headers_of_their_zone(service, prefix, settings):
    # issue 15: the edge serves what the object says (csl.cdn.headers' TTL table, xkey tags)
    from csl.cdn import CachePolicy

    result = service.upload(WAV, filename="take.wav", content_type="audio/wav", prefix=prefix)
    head = service.primary.client.head_object(Bucket=service.primary.bucket, Key=result.key)
    assert head["CacheControl"] == "public, max-age=86400, s-maxage=604800"
    assert head["Metadata"]["xkey"] == "zone:audio" and head["Metadata"]["surrogate-control"] == "max-age=604800"
    configured = replace(settings.edge.zones[0], browser_ttl_s=60, edge_ttl_s=120)
    service.cache_policy = CachePolicy.from_settings(replace(settings.edge, zones=(configured,)))
    again = service.upload(WAV, filename="take.wav", content_type="audio/wav", prefix=prefix)
    head = service.primary.client.head_object(Bucket=service.primary.bucket, Key=again.key)
    assert head["CacheControl"] == "public, max-age=60, s-maxage=120"
