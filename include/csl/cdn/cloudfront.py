"""Amazon CloudFront as a CDN provider: invalidations through boto3, and signed URLs.

- Purge: ``create_invalidation`` on the zone's distribution with the batch id as
  ``CallerReference``: a batch sent again (a retry, a rerun) is the same invalidation — CloudFront
  answers with the existing one when the reference and the paths are the same.
- URLs become their paths, percent-encoded as CloudFront asks ("If the path includes non-ASCII
  characters or unsafe characters as defined in RFC 1738, URL-encode those characters. Do not
  URL-encode any other characters"); a literal ``*`` in a URL is encoded so it never becomes a
  wildcard. Prefixes become ``<path>*`` wildcards; everything is the zone's base path ``/*``.
  Cache tags: CloudFront has none.
- An invalidation completes later: ``purge`` answers ``pending`` with the invalidation id and
  ``completion`` reads its status (``InProgress`` → pending, ``Completed`` → done).

Limits (CloudFront Developer Guide, "Concurrent invalidation request maximum"): up to 3,000 file
paths in progress per distribution, and up to 15 wildcard paths in progress, counted apart. A
batch takes at most ``max_paths_per_call`` URLs and ``max_wildcards_in_progress`` prefixes; past
the in-progress maximum CloudFront answers ``TooManyInvalidationsInProgress`` → ``Throttled``
(retry once some complete). AWS publishes no call rate for the CloudFront API (throttling shows as
``Throttling``); 2 calls/s with a burst of 5 is ample when one call carries up to 3,000 paths.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit

from csl.cdn.base import (
    BatchTooLarge,
    CdnInputError,
    CdnRefused,
    CdnUnavailable,
    CompletionState,
    ProviderLimits,
    PurgeBatch,
    PurgeResult,
    Throttled,
    Zone,
    completion_in_thread,
)
from csl.cdn.http import one_line, prefix_path, probe, require_batch, require_zone_id
from csl.config import ConfigError, Secret

__all__ = ["CloudFrontProvider"]

# RFC 1738's safe and reserved characters, which CloudFront wants left as they are ("*" is not
# here: in a URL item it is a literal, never a wildcard). "~" also stays, as Python's quote always
# leaves it: RFC 1738 calls it unsafe, but RFC 3986 unreserved, and viewers send it unencoded.
_PATH_SAFE = "/$-_.+!'(),;:@=&"
IN_PROGRESS_RETRY_S = 60.0  # TooManyInvalidationsInProgress: invalidations take minutes to complete
_THROTTLING = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}


class CloudFrontProvider:
    name = "cloudfront"

    def __init__(self, *, client: Any | None = None, access_key_id: str | None = None,
                 secret_access_key: Secret | None = None, region: str = "us-east-1",
                 max_paths_per_call: int = 3000, max_wildcards_in_progress: int = 15,
                 endpoint_url: str | None = None) -> None:
        if (access_key_id is None) != (secret_access_key is None):
            raise ConfigError("secret_access_key" if access_key_id else "access_key_id",
                              "give both the access key id and its secret, or neither (the default AWS credentials)")
        if secret_access_key is not None and not isinstance(secret_access_key, Secret):
            raise ConfigError("secret_access_key", "expected a csl.config.Secret")
        for setting, value in (("max_paths_per_call", max_paths_per_call),
                               ("max_wildcards_in_progress", max_wildcards_in_progress)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(setting, f"{value!r}: expected a whole number of at least 1")
        self.region, self.endpoint_url, self.access_key_id = region, endpoint_url, access_key_id
        self.limits = ProviderLimits(
            max_items={"url": max_paths_per_call, "prefix": min(max_wildcards_in_progress, max_paths_per_call),
                       "everything": 1},
            rate_per_s=2.0, burst=5, asynchronous=True)
        self._secret_access_key = secret_access_key
        self._client = client
        self._owns_client = client is None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CloudFrontProvider(region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        """The boto3 CloudFront client: the one given, or one made on first use."""
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                secret = self._secret_access_key.reveal() if self._secret_access_key else None
                session = boto3.session.Session(aws_access_key_id=self.access_key_id, aws_secret_access_key=secret,
                                                region_name=self.region)
                self._client = session.client("cloudfront", endpoint_url=self.endpoint_url, config=Config(
                    retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=30))
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._owns_client and self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failure(self, what: str, exc: Exception) -> Exception:
        """A boto3/botocore failure as the error of ``csl.cdn.base`` it means."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        secrets = (self._secret_access_key,) if self._secret_access_key else ()
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = one_line(str(error.get("Message") or code), secrets)
            detail = f"{what} refused: HTTP {status} {code}: {message}"
            if code == "TooManyInvalidationsInProgress":
                return Throttled(self.name, f"{what}: {code}: {message}", retry_after_s=IN_PROGRESS_RETRY_S)
            if code in _THROTTLING or status == 429:
                return Throttled(self.name, f"{what}: {code}: {message}")
            if code == "BatchTooLarge" or status == 413:
                return BatchTooLarge(self.name, detail, status=status, code=code)
            if isinstance(status, int) and status >= 500:
                return CdnUnavailable(self.name, f"{what} failed: HTTP {status} {code}: {message}")
            return CdnRefused(self.name, detail, status=status, code=code)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return CdnRefused(self.name, f"{what}: no usable AWS credentials ({type(exc).__name__})")
        if isinstance(exc, BotoCoreError):  # endpoint, connection, timeout
            return CdnUnavailable(self.name, f"{what}: unreachable ({type(exc).__name__}: {one_line(str(exc), secrets)})")
        return exc

    def _call(self, what: str, operation: str, **params: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**params)
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(what, exc) from None

    def paths(self, zone: Zone, batch: PurgeBatch) -> list[str]:
        """The invalidation paths for this batch."""
        if batch.kind == "url":
            return [_encoded_path(url) for url in batch.items]
        if batch.kind == "prefix":
            return [_encoded(prefix_path(prefix).rstrip("*")) + "*" for prefix in batch.items]
        base = urlsplit(zone.base_url).path.rstrip("/")  # everything of this zone: its base path
        return [(_encoded(base) if base else "") + "/*"]

    def purge(self, zone: Zone, batch: PurgeBatch) -> PurgeResult:
        distribution = require_zone_id(self.name, zone)
        require_batch(self.name, self.limits, zone, batch)
        paths = self.paths(zone, batch)
        answer = self._call(f"invalidation of batch {batch.batch_id} in zone {zone.name!r}", "create_invalidation",
                            DistributionId=distribution,
                            InvalidationBatch={"Paths": {"Quantity": len(paths), "Items": paths},
                                               "CallerReference": batch.batch_id})
        invalidation = answer["Invalidation"]
        state = "done" if invalidation.get("Status") == "Completed" else "pending"
        return PurgeResult(batch_id=batch.batch_id, status=state, request_id=invalidation["Id"],
                           detail={"paths": len(paths)})

    def completion(self, zone: Zone, request_id: str) -> CompletionState:
        distribution = require_zone_id(self.name, zone)
        answer = self._call(f"status of invalidation {request_id} in zone {zone.name!r}", "get_invalidation",
                            DistributionId=distribution, Id=request_id)
        return "done" if answer["Invalidation"].get("Status") == "Completed" else "pending"

    async def completion_async(self, zone: Zone, request_id: str) -> CompletionState:
        return await completion_in_thread(self, zone, request_id)  # boto3 blocks: a worker thread

    def health(self, zone: Zone) -> dict[str, Any]:
        """The latest invalidations of the distribution: the credentials work, the distribution
        exists, and how many invalidations it has in progress (they count against its maximum)."""

        def call() -> dict[str, Any]:
            distribution = require_zone_id(self.name, zone)
            answer = self._call(f"health of zone {zone.name!r}", "list_invalidations",
                                DistributionId=distribution, MaxItems="100")
            items = answer.get("InvalidationList", {}).get("Items", [])
            return {"ok": True, "invalidations_in_progress": sum(i.get("Status") == "InProgress" for i in items)}

        return probe(self.name, zone, call)

    def signed_url(self, url: str, *, key_pair_id: str, private_key: Secret, expires_at: datetime) -> str:
        """``url`` signed with a canned policy valid until ``expires_at`` (an aware datetime), by the
        CloudFront key ``key_pair_id`` whose RSA private key (PEM) is ``private_key``."""
        from botocore.signers import CloudFrontSigner
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        if expires_at.tzinfo is None:
            raise CdnInputError("CloudFront signed URL: expires_at must carry a timezone (UTC)")
        if expires_at <= datetime.now(UTC):
            raise CdnInputError(f"CloudFront signed URL: expires_at {expires_at.isoformat()} is in the past")
        try:
            key = serialization.load_pem_private_key(private_key.reveal().encode(), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CdnInputError(f"CloudFront signed URL: the private key of {key_pair_id!r} is not an "
                                "unencrypted PEM RSA private key")
        # CloudFront verifies canned-policy signatures as RSA-SHA1 (botocore's CloudFrontSigner docs)
        signer = CloudFrontSigner(key_pair_id, lambda message: key.sign(message, padding.PKCS1v15(), hashes.SHA1()))
        return signer.generate_presigned_url(url, date_less_than=expires_at)


def _encoded(path: str) -> str:
    return quote(unquote(path), safe=_PATH_SAFE) or "/"


def _encoded_path(url: str) -> str:
    parts = urlsplit(url)
    return _encoded(parts.path or "/") + (f"?{parts.query}" if parts.query else "")
