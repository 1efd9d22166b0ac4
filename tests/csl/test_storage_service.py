"""The storage service against the real endpoints: failover with a replicate-back record,
delete everywhere, signed URL expiry enforced by the S3 server."""

from __future__ import annotations

import random
import time

import httpx
import psycopg
import pytest

from csl.audio import wav_bytes
from csl.media import UploadRejected
from csl.storage import StorageProvider, StorageService, queue_replication, sha256_hex


@pytest.fixture
def service(settings, platform):
    url = settings.database.primary_url
    return StorageService(StorageProvider(settings.provider("primary"), max_attempts=1),
                          StorageProvider(settings.provider("fallback"), max_attempts=1),
                          record=queue_replication(lambda: psycopg.connect(url, autocommit=True)),
                          max_url_expiry_s=600)


WAV = wav_bytes(random.Random(9), frames=300)


def test_upload_validates_and_stores_with_checksum(service):
    result = service.upload(WAV, filename="Field recording.wav", content_type="audio/wav", prefix="uploads",
                            contributor="c-42")
    assert result.provider == "primary" and not result.replicate_back
    assert result.key.startswith("uploads/") and result.key.endswith(".wav")
    head = service.primary.head(result.key)
    assert head["metadata"]["sha256"] == sha256_hex(WAV) == result.sha256
    assert head["metadata"]["contributor"] == "c-42" and head["content_type"] == "audio/wav"
    with pytest.raises(UploadRejected, match="renamed|not a recognised"):
        service.upload(b"MZ" + bytes(100), filename="virus.wav", content_type="audio/wav")


def test_multipart_upload_keeps_the_whole_object_checksum(service):
    big = service.multipart_threshold
    service.multipart_threshold = 5 * 1024 * 1024
    try:
        data = WAV[:44] + bytes(6 * 1024 * 1024)
        result = service.upload(data, filename="long.wav", content_type="audio/wav")
    finally:
        service.multipart_threshold = big
    head = service.primary.head(result.key)
    assert head["size"] == len(data) and head["metadata"]["sha256"] == sha256_hex(data)
    assert "-" in head["etag"], "stored as a multipart object"


def test_primary_down_falls_back_and_records_the_copy_back(service, settings, service_down):
    service_down("s3-primary")
    result = service.upload(WAV, filename="during-outage.wav", content_type="audio/wav")
    assert result.provider == "fallback" and result.replicate_back
    assert service.fallback.get(result.key) == WAV
    with psycopg.connect(settings.database.primary_url) as conn:
        row = conn.execute("SELECT source_provider, target_provider, sha256, size_bytes, status FROM "
                           "csl_ops.replication_queue WHERE object_key = %s", (result.key,)).fetchone()
    assert row == ("fallback", "primary", sha256_hex(WAV), len(WAV), "pending")


def test_delete_removes_from_every_provider_and_reports_each(service, service_down):
    result = service.upload(WAV, filename="both.wav", content_type="audio/wav")
    service.fallback.put(result.key, WAV, content_type="audio/wav")
    assert service.delete(result.key) == {"primary": "deleted", "fallback": "deleted"}
    assert not service.primary.exists(result.key) and not service.fallback.exists(result.key)
    other = service.upload(WAV, filename="again.wav", content_type="audio/wav")
    service_down("s3-fallback")
    report = service.delete(other.key)
    assert report["primary"] == "deleted" and report["fallback"].startswith("error: storage provider 'fallback'")


def test_signed_urls_expire_on_the_real_server(service):
    result = service.upload(WAV, filename="private.wav", content_type="audio/wav")
    url = service.signed_url(result.key, expires_s=1)
    assert httpx.get(url).status_code == 200
    time.sleep(2.5)
    expired = httpx.get(url)
    assert expired.status_code == 403 and "expired" in expired.text.lower()
    with pytest.raises(Exception, match="expiry must be 1..600"):
        service.signed_url(result.key, expires_s=3600)
