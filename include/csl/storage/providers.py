"""S3-compatible storage providers behind one interface (MinIO, AWS S3, Supabase Storage).

Only a real 404 means "not there": every other failure raises, naming the provider, so a
provider that is down can never look like a missing object. A provider that cannot answer
(connection error, timeout, HTTP 5xx) raises ``ProviderUnavailable``; one that refuses the
request (any other 4xx) raises a plain ``StorageError``. boto3 is imported lazily so that DAG
files importing operators stay cheap to parse.

The key space's reserved folders are defined here, once: health probes, the cleanup's
quarantine, temporary uploads (cleaned after a day) and the folders the platform publishes
(the only keys the public-read bucket policy and the edge serve anonymously).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from csl.config import StorageProviderSettings
from csl.errors import ConfigError, ProviderUnavailable, StorageError

if TYPE_CHECKING:
    from csl.config import Settings

__all__ = [
    "HEALTH_PREFIX",
    "PRIMARY",
    "PUBLISHED_PREFIXES",
    "QUARANTINE_PREFIX",
    "RESERVED_PREFIXES",
    "SHA256_META",
    "TEMP_PREFIXES",
    "ObjectInfo",
    "StorageProvider",
    "configured_buckets",
    "providers_for",
    "public_read_policy",
    "reference_order",
    "sha256_hex",
]

log = logging.getLogger("csl.storage")

PRIMARY = "primary"  # the role whose copy is the reference (Settings names providers by role)
HEALTH_PREFIX = "_csl_health/"  # health probes: put → get → delete
QUARANTINE_PREFIX = "_quarantine/"  # csl.cleanup moves objects here instead of deleting them
TEMP_PREFIXES = ("tmp/", "uploads/tmp/")  # temporary uploads: csl.cleanup quarantines them after a day
PUBLISHED_PREFIXES = ("samples/",)  # the folders of the published bucket anyone may read (policy, edge)
RESERVED_PREFIXES = (HEALTH_PREFIX, QUARANTINE_PREFIX, *TEMP_PREFIXES)  # never a home for uploads
LIST_ATTEMPTS = 5  # listing pages: 0.2, 0.4, 0.8, 1.6 s between attempts
SHA256_META = "sha256"  # stored as x-amz-meta-sha256
_SESSION: Any = None  # the boto3 session every client is made from (clients are thread-safe, sessions are not)
_SESSION_LOCK = threading.Lock()


def _forget_session() -> None:  # a forked child (the sweep's worker processes) starts its own
    global _SESSION, _SESSION_LOCK
    _SESSION, _SESSION_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_session)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reference_order(providers: Sequence[StorageProvider]) -> list[StorageProvider]:
    """The providers with the reference copy (``PRIMARY``) first, the others by name: every
    comparison between copies uses this order, whatever order a person typed them in."""
    return sorted(providers, key=lambda p: (p.name != PRIMARY, p.name))


def providers_for(settings: Settings, names: Iterable[str] | None = None, *, published_only: bool = False,
                  **options: Any) -> list[StorageProvider]:
    """The providers ``names`` (by role, repeats dropped, in the order given), or every configured
    one when ``names`` is None or empty; with ``published_only`` only those that publish (have a
    published bucket). ``options`` go to each ``StorageProvider`` (``max_attempts=1``, …).

    Raises ``ConfigError`` for an unknown name, when no provider is configured, or when none of
    them publishes."""
    wanted = list(dict.fromkeys(names or ())) or [p.name for p in settings.storage]
    if not wanted:
        raise ConfigError("STORAGE_PROVIDER", "no storage providers configured (connections csl_storage_*)")
    chosen = [settings.provider(name) for name in wanted]  # an unknown name: ConfigError naming the known ones
    if published_only:
        chosen = [p for p in chosen if p.published_bucket]
        if not chosen:
            raise ConfigError("public_bucket", f"none of the storage providers {', '.join(map(repr, wanted))} "
                                               "publishes anything (set public_bucket on one)")
    return [StorageProvider(p, **options) for p in chosen]


def configured_buckets(settings: Settings) -> tuple[str, ...]:
    """Every configured provider's bucket, sorted: the names URL-form references may carry,
    whichever providers a run works on."""
    return tuple(sorted({p.bucket for p in settings.storage}))


def public_read_policy(bucket: str) -> dict[str, Any]:
    """The published bucket's policy: anyone may GET under ``PUBLISHED_PREFIXES``, nothing else
    (no listing). Only approved samples are copied there (``csl.storage.publication``)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "PublicReadPublished", "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*" for prefix in PUBLISHED_PREFIXES]}]}


class ObjectInfo(NamedTuple):  # a tuple: a sweep makes hundreds of thousands of them
    key: str
    size: int
    etag: str
    last_modified: str = ""  # ISO 8601, as the listing gives it


class StorageProvider:
    """One provider (a name, an endpoint, a bucket, credentials)."""

    def __init__(self, settings: StorageProviderSettings, *, client: Any = None,
                 connect_timeout_s: float = 3.0, read_timeout_s: float = 30.0,
                 max_attempts: int = 2, max_pool_connections: int = 32) -> None:
        self.settings = settings
        self._client = client
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_attempts = max_attempts
        self._max_pool_connections = max_pool_connections

    def __repr__(self) -> str:
        return f"StorageProvider(name={self.name!r}, kind={self.settings.kind!r}, bucket={self.bucket!r})"

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    @cached_property
    def client(self) -> Any:
        if self._client is not None:
            return self._client
        from botocore.config import Config

        s = self.settings
        config = Config(
            region_name=s.region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if s.force_path_style else "auto"},
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
            retries={"max_attempts": self._max_attempts, "mode": "standard"},
            max_pool_connections=self._max_pool_connections,
            request_checksum_calculation=s.request_checksum_calculation,
        )
        return _new_client(endpoint_url=s.endpoint_url, aws_access_key_id=s.access_key.reveal(),
                           aws_secret_access_key=s.secret_key.reveal(), config=config)

    @cached_property
    def lean(self) -> Any:
        """The lean path for object HEAD/GET/PUT (``csl.storage.s3http.S3Http``: signed
        ``http.client`` requests, a kept-alive connection per thread), or None where boto3 does it all: AWS's own endpoint (no
        endpoint URL), or a client given to this provider (a test's seam)."""
        if self._client is not None or not self.settings.endpoint_url:
            return None
        from csl.storage.s3http import S3Http

        return S3Http(self.settings, connect_timeout_s=self._connect_timeout_s, read_timeout_s=self._read_timeout_s)

    # -- error translation -----------------------------------------------------------------
    def error(self, action: str, key: str | None, exc: Exception) -> StorageError:
        """The ``StorageError`` that says ``action`` on ``key`` failed on this provider, and how:
        ``ProviderUnavailable`` when it could not answer (connection, timeout, 5xx)."""
        return self._fail(action, key, exc)

    def _fail(self, action: str, key: str | None, exc: Exception) -> StorageError:
        from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        where = f"{action} {key!r}" if key else action
        cause: BaseException | None = exc
        while cause is not None:  # boto3's transfer manager wraps the botocore error it hit
            if isinstance(cause, (BotoConnectionError, ConnectTimeoutError, ReadTimeoutError)):
                return ProviderUnavailable(self.name, f"{where}: cannot reach {self.settings.endpoint_url} "
                                                      f"({type(cause).__name__})")
            if isinstance(cause, ClientError):
                error = cause.response.get("Error", {})
                status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                kind = ProviderUnavailable if isinstance(status, int) and status >= 500 else StorageError
                return kind(self.name, f"{where}: HTTP {status} {error.get('Code')}: {error.get('Message')}")
            cause = cause.__cause__ or cause.__context__
        return StorageError(self.name, f"{where}: {type(exc).__name__}: {exc}")

    # -- objects ---------------------------------------------------------------------------
    def put(self, key: str, body: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None, cache_control: str | None = None) -> dict[str, Any]:
        """Store ``body`` under ``key`` with its SHA-256 in the object metadata (and its
        ``Cache-Control``, served by the edge: ``csl.cdn.headers``)."""
        digest = sha256_hex(body)
        meta = {SHA256_META: digest, **(metadata or {})}
        extra = {"CacheControl": cache_control} if cache_control else {}
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                               ContentType=content_type, Metadata=meta, **extra)
        except Exception as exc:  # translated: the caller hears which provider failed
            raise self._fail("put", key, exc) from exc
        return {"key": key, "size": len(body), "sha256": digest, "etag": response.get("ETag", "").strip('"')}

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise self._fail("get", key, exc) from exc

    def head(self, key: str) -> dict[str, Any] | None:
        """Object size, etag and metadata; ``None`` only for a real 404."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise self._fail("head", key, exc) from exc
        except Exception as exc:
            raise self._fail("head", key, exc) from exc
        return {
            "size": response["ContentLength"],
            "etag": response.get("ETag", "").strip('"'),
            "content_type": response.get("ContentType"),
            "metadata": response.get("Metadata", {}),
            "last_modified": response.get("LastModified"),
        }

    def digest(self, key: str) -> tuple[str, str | None] | None:
        """(SHA-256 of the stored bytes, the SHA-256 its metadata claims), streamed in 1 MiB
        chunks; ``None`` only for a real 404."""
        if self.lean is not None:
            with self.lean.get(key) as got:
                if got is None:
                    return None
                head, chunks = got
                content = hashlib.sha256()
                for chunk in chunks:
                    content.update(chunk)
            return content.hexdigest(), head.metadata.get(SHA256_META)
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            content = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(1 << 20):
                content.update(chunk)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise self._fail("get", key, exc) from exc
        except Exception as exc:
            raise self._fail("get", key, exc) from exc
        return content.hexdigest(), response.get("Metadata", {}).get(SHA256_META)

    def exists(self, key: str) -> bool:
        """True/False for a definite answer; raises when the provider cannot say."""
        return self.head(key) is not None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def copy(self, source_key: str, target_key: str) -> None:
        """Server-side copy within the bucket, metadata included."""
        try:
            self.client.copy_object(Bucket=self.bucket, Key=target_key, MetadataDirective="COPY",
                                    CopySource={"Bucket": self.bucket, "Key": source_key})
        except Exception as exc:
            raise self._fail("copy to " + repr(target_key), source_key, exc) from exc

    def copy_from(self, source: StorageProvider, key: str, *, replace: dict[str, Any] | None = None) -> None:
        """Server-side copy of ``key`` from ``source``'s bucket into this one (same endpoint and
        credentials: a provider's own published bucket), metadata and content type included; with
        ``replace`` (``ContentType``, ``CacheControl``, ``Metadata``: the whole new set) the copy
        gets those instead (S3's ``MetadataDirective=REPLACE``)."""
        directive = {"MetadataDirective": "REPLACE", **replace} if replace else {"MetadataDirective": "COPY"}
        try:
            self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": source.bucket, "Key": key},
                                    **directive)
        except Exception as exc:
            raise self._fail(f"copy from bucket {source.bucket!r} of", key, exc) from exc

    def published(self) -> StorageProvider:
        """This provider over its published bucket (the public-read copies, ``csl.storage.publication``)."""
        from csl.errors import ConfigError

        if not self.settings.published_bucket:
            raise ConfigError(f"{self.settings.kind.upper()}_PUBLIC_BUCKET",
                              f"provider {self.name!r} publishes nothing (no published bucket)")
        settings = dataclasses.replace(self.settings, bucket=self.settings.published_bucket, public_bucket=False,
                                       published_bucket=None)
        return StorageProvider(settings, client=self.client)

    def withdraw_published(self, key: str) -> str | None:
        """Delete the key's published (public-read) copy when there is one; returns the published
        bucket's name when a copy was deleted (the edge must then be purged of it), else None."""
        if not self.settings.published_bucket:
            return None
        published = self.published()
        if not published.exists(key):
            return None
        published.delete(key)
        return published.bucket

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` in the provider's listing order, one page in memory at a time.

        With an endpoint URL the pages are fetched with SigV4-signed GETs and parsed with the C
        XML parser (botocore's response parsing costs ~3x the server's own time); without one
        (AWS's own endpoint) boto3's paginator is used."""
        if self.settings.endpoint_url and start_after is None:
            for item in self.list_page_stream(prefix):
                if isinstance(item, ObjectInfo):
                    yield item
            return
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            try:
                page = self.client.list_objects_v2(**kwargs)
            except Exception as exc:
                raise self._fail("list", prefix or "/", exc) from exc
            for item in page.get("Contents", []):
                modified = item.get("LastModified")
                yield ObjectInfo(item["Key"], item["Size"], item.get("ETag", "").strip('"'),
                                 modified.isoformat() if modified else "")
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
            kwargs.pop("StartAfter", None)

    # -- fast listing ----------------------------------------------------------------------
    @cached_property
    def _http(self) -> Any:
        """The listing's HTTP client (``get(url, headers=…)`` → ``status_code``, ``content``): the
        lean path's connections where there is one, else httpx (a test may put its own here)."""
        if self.lean is not None:
            return self.lean.pages()
        import httpx

        from csl.storage.s3http import tls_context

        return httpx.Client(timeout=httpx.Timeout(self._read_timeout_s, connect=self._connect_timeout_s),
                            verify=tls_context(self.settings.endpoint_url), limits=httpx.Limits(max_connections=4))

    @cached_property
    def _signer(self) -> Any:
        from botocore.auth import S3SigV4Auth
        from botocore.credentials import Credentials

        creds = Credentials(self.settings.access_key.reveal(), self.settings.secret_key.reveal())
        return S3SigV4Auth(creds, "s3", self.settings.region)

    def _list_page(self, prefix: str, delimiter: str | None, token: str | None) -> bytes:
        from urllib.parse import quote, urlencode

        query = {"list-type": "2", "max-keys": "1000", "prefix": prefix}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        canonical = urlencode(sorted(query.items()), quote_via=quote, safe="-_.~")
        if self.lean is not None:  # signed without botocore (not even imported on the lean path)
            url, headers = self.lean.signed_bucket_get(canonical)
        else:
            from botocore.awsrequest import AWSRequest

            url = f"{self.settings.endpoint_url.rstrip('/')}/{quote(self.bucket)}?{canonical}"
            request = AWSRequest(method="GET", url=url, headers={})
            self._signer.add_auth(request)
            headers = dict(request.headers.items())

        attempts = max(self._max_attempts, LIST_ATTEMPTS)  # a listing is safe to repeat
        for attempt in range(attempts):
            try:
                response = self._http.get(url, headers=headers)
            except _transport_errors() as exc:  # refused, reset, timed out, a dropped socket: all transient
                if attempt + 1 < attempts:
                    log.warning("list %r on %s: %s: %s; retrying", prefix, self.name, type(exc).__name__, exc)
                    time.sleep(0.2 * 2 ** attempt)
                    continue
                raise ProviderUnavailable(self.name, f"list {prefix or '/'!r}: cannot reach "
                                                     f"{self.settings.endpoint_url} ({type(exc).__name__})") from exc
            if response.status_code == 200:
                return response.content
            if response.status_code >= 500 and attempt + 1 < attempts:  # e.g. SeaweedFS's transient InternalError
                time.sleep(0.2 * 2 ** attempt)
                continue
            code, message = _s3_error(response.content)
            kind = ProviderUnavailable if response.status_code >= 500 else StorageError
            raise kind(self.name, f"list {prefix or '/'!r}: HTTP {response.status_code} {code}: {message}")
        raise AssertionError("unreachable")

    def list_page(self, prefix: str = "", *, delimiter: str | None = None,
                  token: str | None = None) -> tuple[list[ObjectInfo | str], str | None]:
        """One ``ListObjectsV2`` page: its objects (``ObjectInfo``) and, with a delimiter, common
        prefixes (``str``), in the provider's order; and the continuation token, if any."""
        from xml.etree.ElementTree import fromstring

        root = fromstring(self._list_page(prefix, delimiter, token))
        items: list[ObjectInfo | str] = []
        for element in root:
            tag = element.tag.rpartition("}")[2]
            if tag == "Contents":
                key = size = etag = modified = None
                for field_ in element:
                    name = field_.tag.rpartition("}")[2]
                    if name == "Key":
                        key = field_.text or ""
                    elif name == "Size":
                        size = int(field_.text or 0)
                    elif name == "ETag":
                        etag = (field_.text or "").strip('"')
                    elif name == "LastModified":
                        modified = field_.text
                items.append(ObjectInfo(key, size or 0, etag or "", modified or ""))
            elif tag == "CommonPrefixes":
                for field_ in element:
                    if field_.tag.endswith("Prefix"):
                        items.append(field_.text or "")
        truncated = root.findtext("{*}IsTruncated") == "true"
        next_token = root.findtext("{*}NextContinuationToken") if truncated else None
        return items, next_token or None

    def list_page_stream(self, prefix: str = "", *, delimiter: str | None = None, first: Any = None,
                         executor: Any = None) -> Iterator[ObjectInfo | str]:
        """The whole listing, page by page (one page in memory, plus one being fetched when an
        ``executor`` is given). ``first`` may be a future of the first page, fetched ahead."""
        page = first.result() if first is not None else self.list_page(prefix, delimiter=delimiter)
        while True:
            items, token = page
            ahead = (executor.submit(self.list_page, prefix, delimiter=delimiter, token=token)
                     if token and executor is not None else None)
            yield from items
            if not token:
                return
            page = ahead.result() if ahead is not None else self.list_page(prefix, delimiter=delimiter, token=token)

    # -- buckets ---------------------------------------------------------------------------
    def ensure_bucket(self, *, public_read: bool = False) -> bool:
        """Create the bucket if missing (True if created). ``public_read`` (re)writes the bucket
        policy that lets anyone GET the ``PUBLISHED_PREFIXES`` and nothing else."""
        from botocore.exceptions import ClientError

        created = False
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise self._fail("head bucket", self.bucket, exc) from exc
            try:
                self.client.create_bucket(Bucket=self.bucket)
                created = True
            except Exception as create_exc:
                raise self._fail("create bucket", self.bucket, create_exc) from create_exc
        except Exception as exc:
            raise self._fail("head bucket", self.bucket, exc) from exc
        if public_read:
            try:
                self.client.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(public_read_policy(self.bucket)))
            except Exception as exc:
                raise self._fail("put bucket policy", self.bucket, exc) from exc
        return created

    def ensure_buckets(self, *, wait_s: float = 0.0) -> list[str]:
        """The provider's buckets, made if missing (returns the names created): its own bucket,
        private (a policy left from when it was public is removed), and for a ``public_bucket``
        provider the published bucket with the policy that lets anyone GET ``PUBLISHED_PREFIXES``.
        For the dev stack and tests: production buckets and their policies are the platform's.
        ``wait_s``: a fresh endpoint answers a moment before it takes requests (or accepts its
        credentials): a failure is tried again for this long."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._ensure_buckets()
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.3)

    def _ensure_buckets(self) -> list[str]:
        created = [self.bucket] if self.ensure_bucket() else []
        self.make_private()
        if self.settings.published_bucket:
            published = self.published()
            if published.ensure_bucket(public_read=True):
                created.append(published.bucket)
        return created

    def make_private(self) -> bool:
        """Remove the bucket's policy (anonymous access); True if there was one."""
        from botocore.exceptions import ClientError

        try:
            self.client.get_bucket_policy(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucketPolicy":
                return False
            raise self._fail("get bucket policy", self.bucket, exc) from exc
        except Exception as exc:
            raise self._fail("get bucket policy", self.bucket, exc) from exc
        try:
            self.client.delete_bucket_policy(Bucket=self.bucket)
        except Exception as exc:
            raise self._fail("delete bucket policy", self.bucket, exc) from exc
        log.warning("bucket %s on %s had a policy: removed (the bucket of record is private)", self.bucket, self.name)
        return True

    # -- health ----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Probe put → get → delete of a small object; never raises."""
        key = f"{HEALTH_PREFIX}{uuid.uuid4()}"
        body = f"csl health probe {key}".encode()
        started = time.perf_counter()
        result: dict[str, Any] = {"provider": self.name, "kind": self.settings.kind,
                                  "endpoint": self.settings.endpoint_url, "bucket": self.bucket}
        try:
            self.put(key, body, content_type="text/plain")
            try:
                if self.get(key) != body:
                    raise StorageError(self.name, f"get {key!r}: probe read back different bytes")
            finally:
                self.delete(key)
        except StorageError as exc:
            result.update(ok=False, error=str(exc))
            return result
        result.update(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2))
        return result


def _new_client(**kwargs: Any) -> Any:
    """An S3 client from the one boto3 session (made on first use): the session's loader parses
    the S3 service model once for every client (~14 MB per separate session). Sessions are not
    thread-safe, so clients are made under a lock; the clients themselves are."""
    global _SESSION
    import boto3

    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client("s3", **kwargs)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a listing GET raises when the provider cannot be reached: the lean path's
    (``http.client``) and, when the listing goes through httpx, httpx's."""
    errors: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
    httpx = sys.modules.get("httpx")  # imported already if anything listed through it
    return (*errors, httpx.TransportError) if httpx is not None else errors


def _s3_error(body: bytes) -> tuple[str, str]:
    """The ``Code`` and ``Message`` of an S3 XML error body (or the start of whatever came back)."""
    from xml.etree.ElementTree import ParseError, fromstring

    try:
        root = fromstring(body)
    except ParseError:
        return "-", body[:200].decode(errors="replace")
    return root.findtext("Code") or "-", root.findtext("Message") or ""



def _is_missing(exc: Exception) -> bool:
    """A botocore ClientError that is a real 404 (the object is not there), not a failure."""
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") == 404
