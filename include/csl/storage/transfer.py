"""Copying one object between providers, streamed and proven by SHA-256.

- Between different endpoints the object is read as a stream and written as it is read:
  one ``PutObject`` (with ``ChecksumSHA256``) up to the multipart threshold, else a multipart
  upload whose parts are read one at a time and sent ``PARTS_IN_FLIGHT`` at a time
  (``part_size_for``: at least the threshold and 5 MiB, and large enough that a 5 TiB object
  stays under 10,000 parts). Memory is a few parts, whatever the object's size. Object
  requests go through the provider's lean path (``csl.storage.s3http``) where it has one.
- On one endpoint (same URL and credentials) ``CopyObject`` copies server-side, up to 5 GiB.
- The SHA-256 of the bytes read must equal the source's ``sha256`` metadata before anything
  counts: a single PUT is not sent, a multipart upload is aborted instead of completed.
- The destination is then checked: a single PUT that a provider verifying upload checksums
  accepted, answering with our ``x-amz-checksum-sha256``, is its own proof; otherwise, where
  the provider verifies upload checksums (``verifies_checksums``), by the
  ``x-amz-checksum-sha256`` it reports with
  ``ChecksumMode=ENABLED`` — the file's SHA-256 for a single PUT; for a multipart upload the
  composite of our own part digests (``base64(sha256(d1‖…‖dN))-N``), never compared with the
  file's hash — otherwise, and after a server-side copy, by reading it back and hashing it.
  ETags and MD5s are never evidence.

Content type, Cache-Control, Content-Disposition/-Encoding/-Language, user metadata (``sha256``,
original name, contributor, tag headers) and object tags travel with the bytes. Failures are
``StorageError`` naming the provider that failed (``ProviderUnavailable`` when it cannot answer).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from csl.errors import ProblemFound, ProviderUnavailable, StorageError
from csl.storage.providers import SHA256_META, StorageProvider

__all__ = [
    "MAX_PARTS",
    "MAX_SERVER_COPY",
    "MIN_PART",
    "CopyOutcome",
    "DestinationNotVerified",
    "SourceNotVerified",
    "StoredObject",
    "composite_checksum",
    "copy_object",
    "head_object",
    "part_size_for",
    "same_endpoint",
    "verify_stored",
]

log = logging.getLogger("csl.storage")

MiB = 1 << 20
MIN_PART = 5 * MiB  # S3's smallest part (but the last)
MAX_PARTS = 10_000
MAX_SERVER_COPY = 5 * 1024 ** 3  # CopyObject's limit
READ_CHUNK = MiB
HTTP_HEADERS = {"ContentType": "content-type", "CacheControl": "cache-control",
                "ContentDisposition": "content-disposition", "ContentEncoding": "content-encoding",
                "ContentLanguage": "content-language"}  # boto3's names → HTTP's
HEADERS = tuple(HTTP_HEADERS)
STREAM_ATTEMPTS = 2  # a copy whose stream broke (the provider unavailable) is started over once
PARTS_IN_FLIGHT = 3  # parts of one object being sent while the next is read (the RSS test: 200 MiB < 150 MB)


class SourceNotVerified(ProblemFound):
    """The source's bytes do not hash to its own ``sha256`` metadata: it is not a right copy."""

    def __init__(self, provider: str, key: str, content: str, claimed: str | None) -> None:
        super().__init__(f"{key!r} on {provider!r}: its bytes hash to {content}, its sha256 metadata says {claimed}")
        self.provider, self.key, self.content, self.claimed = provider, key, content, claimed


class DestinationNotVerified(ProblemFound):
    """What the destination holds after the copy is not proven to be the source's bytes."""

    def __init__(self, provider: str, key: str, why: str) -> None:
        super().__init__(f"{key!r} on {provider!r} after the copy: {why}")
        self.provider, self.key = provider, key


@dataclass(frozen=True)
class StoredObject:
    """What a HEAD (with ``ChecksumMode=ENABLED``) says about one object."""

    key: str
    size: int
    sha256: str | None  # the sha256 metadata: what the object claims to be
    etag: str
    checksum_sha256: str | None  # x-amz-checksum-sha256 (a composite "…-N" after multipart)
    checksum_type: str | None  # FULL_OBJECT / COMPOSITE where the provider says
    content_type: str | None
    metadata: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "etag": self.etag}


@dataclass(frozen=True)
class CopyOutcome:
    method: str  # put | multipart | server_copy
    bytes: int
    sha256: str
    parts: int
    verified_by: str  # checksum | composite | reread
    duration_s: float


def part_size_for(size: int, threshold: int) -> int:
    """The multipart part size: at least ``threshold`` and 5 MiB, whole MiB, and big enough
    that ``size`` needs at most 10,000 parts (5 TiB → 525 MiB parts, 9,987 of them)."""
    return max(threshold, MIN_PART, math.ceil(size / MAX_PARTS / MiB) * MiB)


def composite_checksum(part_digests: list[bytes]) -> str:
    """S3's composite SHA-256 of a multipart upload: base64(sha256(d1‖…‖dN))-N."""
    digest = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(digest).decode()}-{len(part_digests)}"


def same_endpoint(a: StorageProvider, b: StorageProvider) -> bool:
    """One endpoint and one set of credentials: a server-side copy can read ``a`` and write ``b``."""
    sa, sb = a.settings, b.settings
    return (sa.endpoint_url is not None and sa.endpoint_url.rstrip("/") == (sb.endpoint_url or "").rstrip("/")
            and sa.region == sb.region and sa.access_key.reveal() == sb.access_key.reveal()
            and sa.secret_key.reveal() == sb.secret_key.reveal())


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def head_object(provider: StorageProvider, key: str) -> StoredObject | None:
    """The object's size, metadata and stored checksum; ``None`` only for a real 404."""
    if provider.lean is not None:
        got = provider.lean.head(key)
        if got is None:
            return None
        metadata, h = got.metadata, got.headers
        return StoredObject(key=key, size=got.size, sha256=metadata.get(SHA256_META), etag=h.get("etag", "").strip('"'),
                            checksum_sha256=h.get("x-amz-checksum-sha256"), checksum_type=h.get("x-amz-checksum-type"),
                            content_type=h.get("content-type"), metadata=metadata)
    from botocore.exceptions import ClientError

    try:
        r = provider.client.head_object(Bucket=provider.bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise provider.error("head", key, exc) from exc
    except Exception as exc:
        raise provider.error("head", key, exc) from exc
    metadata = r.get("Metadata", {})
    return StoredObject(key=key, size=r["ContentLength"], sha256=metadata.get(SHA256_META),
                        etag=r.get("ETag", "").strip('"'), checksum_sha256=r.get("ChecksumSHA256"),
                        checksum_type=r.get("ChecksumType"), content_type=r.get("ContentType"), metadata=metadata)


def _read_full(body: Any, n: int) -> bytes:
    """Up to ``n`` bytes of a streaming body (its reads may come back short)."""
    chunks, have = [], 0
    while have < n:
        chunk = body.read(min(n - have, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


@dataclass
class _Source:
    """An object being read from the source: what travels with its bytes, and the stream."""

    size: int
    fields: dict[str, str]  # HEADERS present (boto3's names)
    metadata: dict[str, str]
    tag_count: int
    body: Any  # .read(n) and .close()

    def put_args(self, source: StorageProvider, key: str) -> dict[str, Any]:
        """boto3's arguments for the destination's object (tags read from the source when it has any)."""
        args: dict[str, Any] = {**self.fields, "Metadata": self.metadata}
        if self.tag_count:
            args["Tagging"] = _tagging(source, key)
        return args

    def headers(self, source: StorageProvider, key: str) -> dict[str, str]:
        """The same as HTTP headers (the lean PUT)."""
        headers = {HTTP_HEADERS[name]: value for name, value in self.fields.items()}
        headers.update({f"x-amz-meta-{k}": v for k, v in self.metadata.items()})
        if self.tag_count:
            headers["x-amz-tagging"] = _tagging(source, key)
        return headers


class _Chunks:
    """A ``read(n)`` over the lean GET's chunk iterator."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._left = b""

    def read(self, n: int) -> bytes:
        if not self._left:
            self._left = next(self._chunks, b"")
        out, self._left = self._left[:n], self._left[n:]
        return out

    def close(self) -> None:
        pass


def _open_source(source: StorageProvider, key: str, stack: ExitStack) -> _Source:
    if source.lean is not None:
        got = stack.enter_context(source.lean.get(key))
        if got is None:
            raise StorageError(source.name, f"get {key!r}: not there any more")
        head, chunks = got
        h = head.headers
        fields = {name: h[header] for name, header in HTTP_HEADERS.items() if h.get(header)}
        return _Source(head.size, fields, head.metadata, int(h.get("x-amz-tagging-count") or 0), _Chunks(chunks))
    try:
        response = source.client.get_object(Bucket=source.bucket, Key=key)
    except Exception as exc:
        raise source.error("get", key, exc) from exc
    body = response["Body"]
    stack.callback(body.close)
    return _Source(response["ContentLength"], {name: response[name] for name in HEADERS if response.get(name)},
                   response.get("Metadata", {}), response.get("TagCount") or 0, body)


def copy_object(source: StorageProvider, destination: StorageProvider, key: str, *, sha256: str | None,
                threshold: int = 8 * MiB, on_copied: Callable[[str, int], None] | None = None) -> CopyOutcome:
    """Copy ``key`` from ``source`` to ``destination`` and prove it: the bytes read must hash
    to ``sha256`` (the plan's truth; None: the source's own ``sha256`` metadata, which must
    then be there) and to the source's metadata, then the destination is verified.

    A single PUT to a provider that verifies checksums is its own proof: the provider accepted
    bytes whose SHA-256 is the one we sent, and says so (``x-amz-checksum-sha256`` in its
    answer) — ``verified_by="checksum"`` with no further request. Every other copy is checked
    by ``verify_stored``, with ``on_copied(method, size)`` called between the write and the
    check. Raises ``SourceNotVerified`` (nothing written, or the upload aborted),
    ``DestinationNotVerified``, or the ``StorageError`` of the provider that failed."""
    started = time.perf_counter()
    copied = on_copied or (lambda method, size: None)
    if same_endpoint(source, destination):
        info = head_object(source, key)
        if info is None:
            raise StorageError(source.name, f"copy {key!r}: not there any more")
        if info.size <= MAX_SERVER_COPY:
            truth = sha256 or info.sha256
            if truth is None:
                raise SourceNotVerified(source.name, key, "not read (server-side copy)", None)
            _server_copy(source, destination, key)
            copied("server_copy", info.size)
            verified_by = verify_stored(destination, key, sha256=truth, size=info.size, method="server_copy")
            return CopyOutcome("server_copy", info.size, truth, 1, verified_by,
                               round(time.perf_counter() - started, 3))
    for attempt in range(STREAM_ATTEMPTS):
        try:
            return _stream_copy(source, destination, key, sha256=sha256, threshold=threshold, copied=copied,
                                started=started)
        except ProviderUnavailable as exc:  # a stream that broke, a provider overloaded for a moment
            if attempt + 1 == STREAM_ATTEMPTS:
                raise
            log.warning("copy of %r from %s to %s: %s; once more", key, source.name, destination.name, exc)
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _stream_copy(source: StorageProvider, destination: StorageProvider, key: str, *, sha256: str | None,
                 threshold: int, copied: Callable[[str, int], None], started: float) -> CopyOutcome:
    """GET → PUT (or multipart upload) → proof; nothing counts before the proof."""
    with ExitStack() as stack:
        src = _open_source(source, key, stack)
        size = src.size
        truth = sha256 or src.metadata.get(SHA256_META)
        if truth is None:
            raise SourceNotVerified(source.name, key, "not read", None)
        if src.metadata.get(SHA256_META) != truth:
            raise SourceNotVerified(source.name, key, f"not read (the plan's sha256 is {truth})",
                                    src.metadata.get(SHA256_META))
        if size <= threshold:
            method, parts, composite = "put", 1, None
            proven = _put_single(source, destination, key, src, truth)
        else:
            method, proven = "multipart", False
            composite = _put_multipart(source, destination, key, src, truth, part_size_for(size, threshold))
            parts = int(composite.rsplit("-", 1)[1])
    if proven:
        return CopyOutcome(method, size, truth, parts, "checksum", round(time.perf_counter() - started, 3))
    copied(method, size)
    verified_by = verify_stored(destination, key, sha256=truth, size=size, method=method, composite=composite)
    return CopyOutcome(method, size, truth, parts, verified_by, round(time.perf_counter() - started, 3))


def _tagging(source: StorageProvider, key: str) -> str:
    try:
        tags = source.client.get_object_tagging(Bucket=source.bucket, Key=key).get("TagSet", [])
    except Exception as exc:
        raise source.error("get tags of", key, exc) from exc
    return urlencode([(t["Key"], t["Value"]) for t in tags])


def _read_source(source: StorageProvider, key: str, body: Any, n: int) -> bytes:
    try:
        return _read_full(body, n)
    except Exception as exc:  # the stream broke: the source failed, not the destination
        raise source.error("read", key, exc) from exc


def _put_single(source: StorageProvider, destination: StorageProvider, key: str, src: _Source,
                sha256: str) -> bool:
    """One PUT of bytes proven to hash to ``sha256``; True when the PUT itself is the
    destination's proof (a provider that verifies checksums accepted ours and says so)."""
    data = _read_source(source, key, src.body, src.size + 1)
    digest = hashlib.sha256(data).digest()
    if len(data) != src.size or digest.hex() != sha256:
        raise SourceNotVerified(source.name, key, digest.hex() if len(data) == src.size else
                                f"{len(data)} bytes (listed {src.size})", sha256)
    if destination.lean is not None:
        answer = destination.lean.put(key, data, sha256=digest, headers=src.headers(source, key))
        return (destination.settings.verifies_checksums
                and answer.headers.get("x-amz-checksum-sha256") == _b64(digest))
    try:
        destination.client.put_object(Bucket=destination.bucket, Key=key, Body=data, ContentLength=src.size,
                                      ChecksumSHA256=_b64(digest), **src.put_args(source, key))
    except Exception as exc:
        raise destination.error("put", key, exc) from exc
    return False


def _put_multipart(source: StorageProvider, destination: StorageProvider, key: str, src: _Source,
                   sha256: str, part_size: int) -> str:
    """A multipart upload of ``src`` read part by part, up to ``PARTS_IN_FLIGHT`` parts being
    sent while the next is read (memory: about that many parts, plus the one being read)."""
    bucket, size, lean = destination.bucket, src.size, destination.lean
    if lean is not None:
        upload = lean.uploads.start(key, headers=src.headers(source, key))
    else:
        client = destination.client
        try:
            upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256",
                                                    **src.put_args(source, key))["UploadId"]
        except Exception as exc:
            raise destination.error("start multipart upload of", key, exc) from exc

    def send(number: int, data: bytes, digest: bytes) -> str:
        if lean is not None:
            return lean.put(key, data, sha256=digest, headers={}, part=(upload, number)).headers["etag"]
        try:
            return client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data,
                                      ChecksumSHA256=_b64(digest))["ETag"]
        except Exception as exc:
            raise destination.error(f"upload part {number} of", key, exc) from exc

    whole, digests, done = hashlib.sha256(), [], 0
    sending: list[Future] = []
    pool = ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="csl-part")
    try:
        while done < size:
            in_flight = [f for f in sending if not f.done()]
            if len(in_flight) >= PARTS_IN_FLIGHT:
                wait(in_flight, return_when=FIRST_COMPLETED)
            for f in sending:
                if f.done():
                    f.result()  # a part that failed stops the upload now
            data = _read_source(source, key, src.body, min(part_size, size - done))
            if not data:
                raise SourceNotVerified(source.name, key, f"{done} bytes (listed {size})", sha256)
            whole.update(data)
            digest = hashlib.sha256(data).digest()
            digests.append(digest)
            sending.append(pool.submit(send, len(digests), data, digest))
            done += len(data)
            del data
        etags = [f.result() for f in sending]
        if whole.hexdigest() != sha256:  # never complete a copy of the wrong bytes
            raise SourceNotVerified(source.name, key, whole.hexdigest(), sha256)
        if lean is not None:
            lean.uploads.complete(key, upload, list(zip(etags, digests, strict=True)))
        else:
            parts = [{"PartNumber": n, "ETag": etag, "ChecksumSHA256": _b64(d)}
                     for n, (etag, d) in enumerate(zip(etags, digests, strict=True), start=1)]
            try:
                client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                                 MultipartUpload={"Parts": parts})
            except Exception as exc:
                raise destination.error("complete multipart upload of", key, exc) from exc
    except BaseException:
        for f in sending:
            f.cancel()
        pool.shutdown(wait=True)
        try:
            if lean is not None:
                lean.uploads.abort(key, upload)
            else:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except Exception as exc:  # noqa: BLE001 - the original failure is what is raised
            log.warning("abort of the multipart upload of %r on %s failed (%s): its parts wait for the "
                        "bucket's lifecycle rule", key, destination.name, exc)
        raise
    pool.shutdown(wait=True)
    return composite_checksum(digests)


def _server_copy(source: StorageProvider, destination: StorageProvider, key: str) -> None:
    try:
        destination.client.copy_object(Bucket=destination.bucket, Key=key, MetadataDirective="COPY",
                                       TaggingDirective="COPY", CopySource={"Bucket": source.bucket, "Key": key})
    except Exception as exc:
        raise destination.error(f"server-side copy from bucket {source.bucket!r} of", key, exc) from exc


def verify_stored(provider: StorageProvider, key: str, *, sha256: str, size: int, method: str,
                  composite: str | None = None) -> str:
    """Prove that ``provider`` holds ``size`` bytes hashing to ``sha256`` under ``key`` with
    that ``sha256`` metadata; returns how (``checksum``, ``composite`` or ``reread``). A single
    PUT's stored checksum and a multipart upload's composite are evidence only on a provider
    that verifies upload checksums; ``method="existing"`` (an object found in place) and
    server-side copies are always read back: a stored checksum says what was uploaded once,
    not what the disk holds now."""
    info = head_object(provider, key)
    if info is None:
        raise DestinationNotVerified(provider.name, key, "not there")
    if info.size != size:
        raise DestinationNotVerified(provider.name, key, f"{info.size} bytes, expected {size}")
    if info.sha256 != sha256:
        raise DestinationNotVerified(provider.name, key, f"its sha256 metadata is {info.sha256}, expected {sha256}")
    if provider.settings.verifies_checksums and info.checksum_sha256:
        stored = info.checksum_sha256
        if method == "put" and "-" not in stored and info.checksum_type != "COMPOSITE":
            if stored != _b64(bytes.fromhex(sha256)):
                raise DestinationNotVerified(provider.name, key, f"its stored SHA-256 is {stored}")
            return "checksum"
        if method == "multipart" and composite is not None:
            body = composite.rpartition("-")[0]
            if stored not in (composite, body):  # some servers drop the "-N"
                raise DestinationNotVerified(provider.name, key, f"its composite checksum is {stored}, "
                                                                 f"the parts we sent make {composite}")
            return "composite"
    got = provider.digest(key)
    if got is None:
        raise DestinationNotVerified(provider.name, key, "gone before it could be read back")
    if got[0] != sha256:
        raise DestinationNotVerified(provider.name, key, f"its bytes hash to {got[0]}, expected {sha256}")
    return "reread"
