"""The lean S3 path (``csl.storage.s3http``) against the real SeaweedFS endpoints and moto's
server: signed requests the servers accept for any key, only a real 404 is "not there", a
refused checksum is a refusal, an endpoint that does not answer is unavailable, and a copy
is proven by the PUT only where the provider checks the checksum it was sent."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import ssl
import uuid

import pytest

from csl.config import Secret
from csl.errors import ProviderUnavailable, StorageError
from csl.storage import StorageProvider, transfer
from csl.storage.s3http import S3Http

KEYS = ["plain.wav", "a b+c~d.wav", "é/ü ß.wav", "q?x=1&y=%2F.bin", "deep/er/still/key", "a;b,c$d@e!f'(g)*.wav"]


@pytest.fixture
def bucketed(settings):
    """The stack's two SeaweedFS providers over fresh buckets of their own."""
    tag = uuid.uuid4().hex[:8]
    made = [StorageProvider(dataclasses.replace(settings.provider(name), bucket=f"lean-{tag}-{name[0]}",
                                                published_bucket=None, public_bucket=False))
            for name in ("primary", "fallback")]
    for p in made:
        p.ensure_bucket()
    yield made
    for p in made:
        for info in list(p.iter_objects()):
            p.delete(info.key)
        p.client.delete_bucket(Bucket=p.bucket)


def _round_trip(provider: StorageProvider) -> None:
    lean = provider.lean
    assert isinstance(lean, S3Http)
    for name in KEYS:
        key = f"t/{name}"
        body = os.urandom(3_000)
        digest = hashlib.sha256(body).digest()
        lean.put(key, body, sha256=digest, headers={"content-type": "audio/wav", "cache-control": "no-store",
                                                    "x-amz-meta-sha256": digest.hex()})
        assert provider.get(key) == body  # boto3 reads what the lean path wrote, under the same key
        head = lean.head(key)
        assert (head.size, head.metadata["sha256"], head.headers["content-type"]) == (3_000, digest.hex(),
                                                                                       "audio/wav")
        with lean.get(key) as got:
            response, chunks = got
            assert b"".join(chunks) == body and response.headers["cache-control"] == "no-store"
        assert provider.digest(key) == (digest.hex(), digest.hex())
    assert lean.head("t/absent") is None
    with lean.get("t/absent") as got:
        assert got is None
    assert provider.digest("t/absent") is None


def test_signed_requests_are_accepted_for_any_key_on_seaweedfs(bucketed):
    for provider in bucketed:
        _round_trip(provider)


def test_signed_requests_are_accepted_for_any_key_on_moto(moto_provider):
    _round_trip(moto_provider)


def test_a_checksum_that_does_not_match_the_bytes_is_refused_not_unavailable(bucketed):
    provider = bucketed[1]
    body = os.urandom(5_000)
    wrong = hashlib.sha256(body + b"!").digest()
    with pytest.raises(StorageError, match=r"HTTP 400") as refused:
        provider.lean.put("t/wrong", body, sha256=wrong, headers={})
    assert not isinstance(refused.value, ProviderUnavailable)
    assert provider.lean.head("t/wrong") is None


def test_wrong_credentials_are_refused_naming_the_provider_never_the_secret(bucketed):
    settings = dataclasses.replace(bucketed[0].settings, secret_key=Secret("not-the-secret-1234"))
    with pytest.raises(StorageError) as refused:
        S3Http(settings).head("t/anything")
    assert refused.value.provider == settings.name and "HTTP 403" in str(refused.value)
    assert "not-the-secret-1234" not in str(refused.value)


def test_an_endpoint_that_does_not_answer_is_unavailable(bucketed):
    settings = dataclasses.replace(bucketed[0].settings, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(ProviderUnavailable, match="cannot reach"):
        S3Http(settings, connect_timeout_s=0.5).head("t/anything")


def test_https_endpoints_verify_tls_against_the_ca_bundle(bucketed, monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    settings = dataclasses.replace(bucketed[0].settings, endpoint_url="https://127.0.0.1:9")
    with pytest.raises(ssl.SSLError):
        S3Http(settings)  # the bundle is loaded (and here refused): verification is never off
    monkeypatch.delenv("AWS_CA_BUNDLE")
    tls = S3Http(settings)._tls
    assert tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname
    assert S3Http(bucketed[0].settings)._tls is None  # plain http to loopback: no TLS at all


def test_a_connection_the_server_dropped_is_opened_again(bucketed):
    lean = bucketed[0].lean
    body = os.urandom(1_000)
    lean.put("t/again", body, sha256=hashlib.sha256(body).digest(), headers={})
    lean._local.conn.sock.close()  # as if the server had closed the kept-alive connection
    assert lean.head("t/again").size == 1_000
    with lean.get("t/again") as got:  # a GET left half-read does not poison the next request
        next(got[1])
    assert lean.head("t/again").size == 1_000


def test_a_copy_whose_bytes_change_on_the_way_is_refused_by_the_destination_and_never_verified(bucketed):
    class Tampering(http.client.HTTPConnection):
        """Flips one byte of every PUT body on its way (the headers, checksum included, untouched)."""

        tampered = 0

        def request(self, method, url, body=None, headers=None, **kwargs):
            if method == "PUT" and body:
                changed = bytearray(body)
                changed[len(changed) // 2] ^= 0x01
                body = bytes(changed)
                Tampering.tampered += 1
            super().request(method, url, body=body, headers=headers or {}, **kwargs)

    source, destination = bucketed
    body = os.urandom(40_000)
    source.put("t/tampered.wav", body)
    destination.__dict__["lean"] = S3Http(destination.settings, connection_class=Tampering)
    with pytest.raises(StorageError, match="HTTP 400") as refused:
        transfer.copy_object(source, destination, "t/tampered.wav", sha256=None)
    assert Tampering.tampered == 1 and refused.value.provider == destination.name
    assert destination.head("t/tampered.wav") is None


def test_the_put_is_the_proof_only_where_the_provider_checks_checksums(bucketed, moto_provider):
    source, destination = bucketed
    body = os.urandom(20_000)
    source.put("t/proof.wav", body)
    outcome = transfer.copy_object(source, destination, "t/proof.wav", sha256=None)
    assert (outcome.method, outcome.verified_by, outcome.sha256) == ("put", "checksum", hashlib.sha256(body).hexdigest())
    # moto accepts any checksum: its copy is read back and hashed
    outcome = transfer.copy_object(source, moto_provider, "t/proof.wav", sha256=None)
    assert (outcome.method, outcome.verified_by) == ("put", "reread")
    assert moto_provider.get("t/proof.wav") == body


def test_a_source_without_sha256_metadata_is_not_copied(bucketed):
    source, destination = bucketed
    source.client.put_object(Bucket=source.bucket, Key="t/unclaimed.wav", Body=b"x" * 1000)
    with pytest.raises(transfer.SourceNotVerified):
        transfer.copy_object(source, destination, "t/unclaimed.wav", sha256=None)
    assert destination.head("t/unclaimed.wav") is None


def _multipart(source: StorageProvider, destination: StorageProvider, key: str) -> None:
    body = os.urandom(11 << 20)  # two parts at the 5 MiB threshold (5 + 5 + 1 MiB: three)
    source.put(key, body, content_type="audio/wav", metadata={"original-name": "big.wav"})
    outcome = transfer.copy_object(source, destination, key, sha256=None, threshold=5 << 20)
    assert (outcome.method, outcome.parts, outcome.sha256) == ("multipart", 3, hashlib.sha256(body).hexdigest())
    assert destination.get(key) == body
    head = destination.head(key)
    assert (head["content_type"], head["metadata"]["original-name"]) == ("audio/wav", "big.wav")
    assert head["metadata"]["sha256"] == outcome.sha256


def test_a_multipart_copy_is_started_and_completed_on_the_lean_path(bucketed, moto_provider):
    source, destination = bucketed
    for name in ("big.wav", "é/a b+c~d.wav"):
        _multipart(source, destination, f"t/{name}")
        _multipart(source, moto_provider, f"t/{name}")


def test_a_lean_multipart_upload_that_is_aborted_leaves_no_upload_behind(bucketed):
    destination = bucketed[1]
    uploads = destination.lean.uploads
    upload = uploads.start("t/aborted.wav", headers={"content-type": "audio/wav"})
    body = os.urandom(5 << 20)
    destination.lean.put("t/aborted.wav", body, sha256=hashlib.sha256(body).digest(), headers={},
                         part=(upload, 1))
    uploads.abort("t/aborted.wav", upload)
    left = destination.client.list_multipart_uploads(Bucket=destination.bucket).get("Uploads", [])
    assert [u for u in left if u["UploadId"] == upload] == []
    assert destination.head("t/aborted.wav") is None


def test_the_listing_goes_over_the_lean_connections(bucketed):
    provider = bucketed[0]
    for i in range(3):
        provider.put(f"l/{i}.wav", b"x" * (i + 1))
    assert [(o.key, o.size) for o in provider.iter_objects("l/")] == [("l/0.wav", 1), ("l/1.wav", 2), ("l/2.wav", 3)]
    assert type(provider._http).__name__ == "PageClient"
    provider.lean._local.conn.sock.close()  # a kept-alive connection the server dropped: opened again
    assert len(list(provider.iter_objects("l/"))) == 3
