"""CloudFrontProvider against botocore's Stubber: the invalidations it creates, how CloudFront's
errors map, following an invalidation, and signed URLs checked with the public key."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from csl.cdn.base import BatchTooLarge, CdnInputError, CdnProvider, CdnRefused, CdnUnavailable, Throttled, Zone
from csl.cdn.cloudfront import CloudFrontProvider
from csl.config import Secret

from .fake_http import batch

DISTRIBUTION = "EDFDVBD6EXAMPLE"
ZONE = Zone(name="audio", provider="cloudfront", base_url="https://cdn.example.com/audio", zone_id=DISTRIBUTION)
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CREATED = datetime(2026, 12, 6, 22, 0, tzinfo=UTC)


@pytest.fixture
def cloudfront():
    client = boto3.client("cloudfront", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                          aws_secret_access_key="not-used-by-the-stubber")
    with Stubber(client) as stubber:
        yield CloudFrontProvider(client=client), stubber
        stubber.assert_no_pending_responses()


def invalidation(paths: list[str], reference: str, *, status: str = "InProgress", id_: str = "I2J0I21PCUYOIK"):
    return {"Location": f"https://cloudfront.amazonaws.com/2020-05-31/distribution/{DISTRIBUTION}/invalidation/{id_}",
            "Invalidation": {"Id": id_, "Status": status, "CreateTime": CREATED,
                             "InvalidationBatch": {"Paths": {"Quantity": len(paths), "Items": paths},
                                                   "CallerReference": reference}}}


def expect_invalidation(stubber: Stubber, paths: list[str], reference: str, **kwargs) -> None:
    stubber.add_response("create_invalidation", invalidation(paths, reference, **kwargs), {
        "DistributionId": DISTRIBUTION,
        "InvalidationBatch": {"Paths": {"Quantity": len(paths), "Items": paths}, "CallerReference": reference}})


def test_urls_become_encoded_paths_in_one_invalidation_named_by_the_batch(cloudfront):
    provider, stubber = cloudfront
    assert isinstance(provider, CdnProvider)
    purge = batch("cloudfront", "audio", "url", "https://cdn.example.com/audio/Bj%C3%B6rk%20J%C3%B3ga.mp3",
                  "https://cdn.example.com/audio/a~b(1).mp3", "https://cdn.example.com/audio/star*.mp3",
                  "https://cdn.example.com/audio/Ω.mp3")
    paths = ["/audio/Bj%C3%B6rk%20J%C3%B3ga.mp3", "/audio/a~b(1).mp3", "/audio/star%2A.mp3", "/audio/%CE%A9.mp3"]
    expect_invalidation(stubber, paths, purge.batch_id)
    result = provider.purge(ZONE, purge)
    assert (result.status, result.request_id, result.batch_id) == ("pending", "I2J0I21PCUYOIK", purge.batch_id)


def test_a_retried_batch_is_the_same_invalidation(cloudfront):
    provider, stubber = cloudfront
    purge = batch("cloudfront", "audio", "url", "https://cdn.example.com/audio/a.mp3")
    again = batch("cloudfront", "audio", "url", "https://cdn.example.com/audio/a.mp3")
    for _ in range(2):  # CloudFront answers a repeated reference with the same invalidation
        expect_invalidation(stubber, ["/audio/a.mp3"], purge.batch_id)
    first, second = provider.purge(ZONE, purge), provider.purge(ZONE, again)
    assert first.request_id == second.request_id == "I2J0I21PCUYOIK"


def test_prefixes_are_wildcards_and_everything_is_the_zone_base_path(cloudfront):
    provider, stubber = cloudfront
    prefixes = batch("cloudfront", "audio", "prefix", "/audio/album-7/", "cdn.example.com/audio/album 8",
                     "https://cdn.example.com/audio/album-9*")
    expect_invalidation(stubber, ["/audio/album-7/*", "/audio/album%208*", "/audio/album-9*"], prefixes.batch_id)
    everything = batch("cloudfront", "audio", "everything")
    expect_invalidation(stubber, ["/audio/*"], everything.batch_id)
    root = Zone(name="static", provider="cloudfront", base_url="https://static.example.com", zone_id=DISTRIBUTION)
    whole = batch("cloudfront", "static", "everything")
    expect_invalidation(stubber, ["/*"], whole.batch_id)
    for zone, purge in ((ZONE, prefixes), (ZONE, everything), (root, whole)):
        assert provider.purge(zone, purge).status == "pending"


def test_batches_are_cut_at_15_wildcards_and_tags_are_refused_before_any_call(cloudfront):
    provider, _ = cloudfront  # no responses queued: any call would fail the test
    assert dict(provider.limits.max_items) == {"url": 3000, "prefix": 15, "everything": 1}
    assert provider.limits.asynchronous
    with pytest.raises(BatchTooLarge, match="16 prefix items"):
        provider.purge(ZONE, batch("cloudfront", "audio", "prefix", *[f"/audio/{i}/" for i in range(16)]))
    with pytest.raises(CdnInputError, match=r"'cloudfront' cannot purge by 'tag'"):
        provider.purge(ZONE, batch("cloudfront", "audio", "tag", "track:1"))
    smaller = CloudFrontProvider(client=object(), max_paths_per_call=100, max_wildcards_in_progress=5)
    assert dict(smaller.limits.max_items) == {"url": 100, "prefix": 5, "everything": 1}


@pytest.mark.parametrize(("code", "status", "error", "retry_after_s"), [
    ("TooManyInvalidationsInProgress", 400, Throttled, 60.0),
    ("Throttling", 400, Throttled, None),
    ("AccessDenied", 403, CdnRefused, None),
    ("InvalidArgument", 400, CdnRefused, None),
    ("NoSuchDistribution", 404, CdnRefused, None),
    ("BatchTooLarge", 413, BatchTooLarge, None),
    ("ServiceUnavailable", 503, CdnUnavailable, None),
])
def test_cloudfront_errors_map_to_the_cdn_errors(cloudfront, code, status, error, retry_after_s):
    provider, stubber = cloudfront
    stubber.add_client_error("create_invalidation", service_error_code=code, service_message=f"{code} happened",
                             http_status_code=status)
    with pytest.raises(error) as raised:
        provider.purge(ZONE, batch("cloudfront", "audio", "url", "https://cdn.example.com/audio/a.mp3"))
    assert code in str(raised.value)
    if error is Throttled:
        assert raised.value.retry_after_s == retry_after_s
    if error in (CdnRefused, BatchTooLarge):
        assert (raised.value.code, raised.value.status) == (code, status)


def test_an_unreachable_endpoint_is_unavailable():
    provider = CloudFrontProvider(access_key_id="AKIDEXAMPLE", secret_access_key=Secret(SECRET_KEY),
                                  region="eu-west-1", endpoint_url="https://cloudfront.internal.example")
    client = provider.client  # made on first use, once
    assert client is provider.client and client.meta.endpoint_url == "https://cloudfront.internal.example"

    def unreachable(**kwargs):
        raise EndpointConnectionError(endpoint_url="https://cloudfront.internal.example")

    client.meta.events.register("before-send.cloudfront.*", unreachable)
    with pytest.raises(CdnUnavailable, match="unreachable") as raised:
        provider.purge(ZONE, batch("cloudfront", "audio", "url", "https://cdn.example.com/audio/a.mp3"))
    health = provider.health(ZONE)
    assert health["ok"] is False and "unreachable" in health["error"]
    assert all(SECRET_KEY not in text for text in (str(raised.value), repr(provider), str(health)))
    provider.close()


def test_completion_reads_the_invalidation_status(cloudfront):
    provider, stubber = cloudfront
    for status in ("InProgress", "Completed", "Completed"):
        stubber.add_response("get_invalidation", {"Invalidation": {
            "Id": "I2J0I21PCUYOIK", "Status": status, "CreateTime": CREATED,
            "InvalidationBatch": {"Paths": {"Quantity": 1, "Items": ["/audio/a.mp3"]}, "CallerReference": "r"}}},
            {"DistributionId": DISTRIBUTION, "Id": "I2J0I21PCUYOIK"})
    assert provider.completion(ZONE, "I2J0I21PCUYOIK") == "pending"
    assert provider.completion(ZONE, "I2J0I21PCUYOIK") == "done"
    assert asyncio.run(provider.completion_async(ZONE, "I2J0I21PCUYOIK")) == "done"


def test_health_counts_invalidations_in_progress_and_never_raises(cloudfront):
    provider, stubber = cloudfront
    stubber.add_response("list_invalidations", {"InvalidationList": {
        "Marker": "", "MaxItems": 100, "IsTruncated": False, "Quantity": 2, "Items": [
            {"Id": "A", "CreateTime": CREATED, "Status": "InProgress"},
            {"Id": "B", "CreateTime": CREATED, "Status": "Completed"}]}},
        {"DistributionId": DISTRIBUTION, "MaxItems": "100"})
    stubber.add_client_error("list_invalidations", service_error_code="AccessDenied", http_status_code=403)
    up, denied = provider.health(ZONE), provider.health(ZONE)
    assert up["ok"] is True and up["invalidations_in_progress"] == 1 and up["latency_ms"] >= 0
    assert denied["ok"] is False and "AccessDenied" in denied["error"]


@pytest.fixture(scope="module")
def rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return key, pem


def _cloudfront_b64decode(text: str) -> bytes:
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


def test_a_signed_url_verifies_with_the_public_key_and_only_for_its_own_expiry(rsa_key):
    key, pem = rsa_key
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    url = "https://cdn.example.com/audio/a.mp3"
    signed = CloudFrontProvider(client=object()).signed_url(url, key_pair_id="K2JCJMDEHXQW5F",
                                                            private_key=Secret(pem), expires_at=expires)
    parts = urlsplit(signed)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert signed.startswith(url + "?")
    assert query["Key-Pair-Id"] == "K2JCJMDEHXQW5F" and int(query["Expires"]) == int(expires.timestamp())
    signature = _cloudfront_b64decode(query["Signature"])

    def policy(epoch: int) -> bytes:
        return json.dumps({"Statement": [{"Resource": url, "Condition": {"DateLessThan": {"AWS:EpochTime": epoch}}}]},
                          separators=(",", ":")).encode()

    key.public_key().verify(signature, policy(int(expires.timestamp())), padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(InvalidSignature):  # a later expiry is not covered by this signature
        key.public_key().verify(signature, policy(int(expires.timestamp()) + 3600), padding.PKCS1v15(), hashes.SHA1())


def test_a_signed_url_refuses_a_naive_or_past_expiry_and_a_key_that_is_not_rsa_pem(rsa_key):
    _, pem = rsa_key
    provider = CloudFrontProvider(client=object())
    later = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(CdnInputError, match="timezone"):
        provider.signed_url("https://cdn.example.com/a", key_pair_id="K", private_key=Secret(pem),
                            expires_at=later.replace(tzinfo=None))
    with pytest.raises(CdnInputError, match="in the past"):
        provider.signed_url("https://cdn.example.com/a", key_pair_id="K", private_key=Secret(pem),
                            expires_at=later - timedelta(hours=2))
    not_pem = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    with pytest.raises(CdnInputError, match="not an unencrypted PEM RSA private key") as raised:
        provider.signed_url("https://cdn.example.com/a", key_pair_id="K", private_key=Secret(not_pem),
                            expires_at=later)
    assert "bm90IGEga2V5" not in str(raised.value)
