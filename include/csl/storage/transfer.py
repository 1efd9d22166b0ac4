"""Copying one object between providers, streamed and proven by SHA-256.

- Between different endpoints the object is read as a stream and written as it is read:
  one ``PutObject`` (with ``ChecksumSHA256``) up to the multipart threshold, else a multipart
  upload whose parts are read one at a time (``part_size_for``: at least the threshold and
  5 MiB, and large enough that a 5 TiB object stays under 10,000 parts). Memory is about two
  parts, whatever the object's size.
- On one endpoint (same URL and credentials) ``CopyObject`` copies server-side, up to 5 GiB.
- The SHA-256 of the bytes read must equal the source's ``sha256`` metadata before anything
  counts: a single PUT is not sent, a multipart upload is aborted instead of completed.
- The destination is then checked: where the provider verifies upload checksums
  (``verifies_checksums``) by the ``x-amz-checksum-sha256`` it reports with
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
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from csl.errors import ProblemFound, StorageError
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
HEADERS = ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")


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


def copy_object(source: StorageProvider, destination: StorageProvider, key: str, *, sha256: str,
                threshold: int = 8 * MiB, on_copied: Callable[[str, int], None] | None = None) -> CopyOutcome:
    """Copy ``key`` from ``source`` to ``destination`` and prove it: the bytes read must hash
    to ``sha256`` (the source's metadata, the plan's truth), then the destination is verified
    (``verify_stored``). ``on_copied(method, size)`` is called between the two. Raises
    ``SourceNotVerified`` (nothing written, or the upload aborted), ``DestinationNotVerified``,
    or the ``StorageError`` of the provider that failed."""
    started = time.perf_counter()
    copied = on_copied or (lambda method, size: None)
    if same_endpoint(source, destination):
        info = head_object(source, key)
        if info is None:
            raise StorageError(source.name, f"copy {key!r}: not there any more")
        if info.size <= MAX_SERVER_COPY:
            _server_copy(source, destination, key)
            copied("server_copy", info.size)
            verified_by = verify_stored(destination, key, sha256=sha256, size=info.size, method="server_copy")
            return CopyOutcome("server_copy", info.size, sha256, 1, verified_by,
                               round(time.perf_counter() - started, 3))
    try:
        response = source.client.get_object(Bucket=source.bucket, Key=key)
    except Exception as exc:
        raise source.error("get", key, exc) from exc
    size, body = response["ContentLength"], response["Body"]
    put_args: dict[str, Any] = {name: response[name] for name in HEADERS if response.get(name)}
    put_args["Metadata"] = response.get("Metadata", {})
    if response.get("TagCount"):
        put_args["Tagging"] = _tagging(source, key)
    try:
        if size <= threshold:
            method, parts, composite = "put", 1, None
            _put_single(source, destination, key, body, size, sha256, put_args)
        else:
            method = "multipart"
            composite = _put_multipart(source, destination, key, body, size, sha256, put_args,
                                       part_size_for(size, threshold))
            parts = int(composite.rsplit("-", 1)[1])
    finally:
        body.close()
    copied(method, size)
    verified_by = verify_stored(destination, key, sha256=sha256, size=size, method=method, composite=composite)
    return CopyOutcome(method, size, sha256, parts, verified_by, round(time.perf_counter() - started, 3))


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


def _put_single(source: StorageProvider, destination: StorageProvider, key: str, body: Any, size: int,
                sha256: str, put_args: dict[str, Any]) -> None:
    data = _read_source(source, key, body, size + 1)
    digest = hashlib.sha256(data).digest()
    if len(data) != size or digest.hex() != sha256:
        raise SourceNotVerified(source.name, key, digest.hex() if len(data) == size else
                                f"{len(data)} bytes (listed {size})", sha256)
    try:
        destination.client.put_object(Bucket=destination.bucket, Key=key, Body=data, ContentLength=size,
                                      ChecksumSHA256=_b64(digest), **put_args)
    except Exception as exc:
        raise destination.error("put", key, exc) from exc


def _put_multipart(source: StorageProvider, destination: StorageProvider, key: str, body: Any, size: int,
                   sha256: str, put_args: dict[str, Any], part_size: int) -> str:
    client, bucket = destination.client, destination.bucket
    try:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256",
                                                **put_args)["UploadId"]
    except Exception as exc:
        raise destination.error("start multipart upload of", key, exc) from exc
    whole, digests, parts, done = hashlib.sha256(), [], [], 0
    try:
        while done < size:
            data = _read_source(source, key, body, min(part_size, size - done))
            if not data:
                raise SourceNotVerified(source.name, key, f"{done} bytes (listed {size})", sha256)
            whole.update(data)
            digest = hashlib.sha256(data).digest()
            number = len(parts) + 1
            try:
                r = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data,
                                       ChecksumSHA256=_b64(digest))
            except Exception as exc:
                raise destination.error(f"upload part {number} of", key, exc) from exc
            digests.append(digest)
            parts.append({"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": _b64(digest)})
            done += len(data)
            del data
        if whole.hexdigest() != sha256:  # never complete a copy of the wrong bytes
            raise SourceNotVerified(source.name, key, whole.hexdigest(), sha256)
        try:
            client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                             MultipartUpload={"Parts": parts})
        except Exception as exc:
            raise destination.error("complete multipart upload of", key, exc) from exc
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except Exception as exc:  # noqa: BLE001 - the original failure is what is raised
            log.warning("abort of the multipart upload of %r on %s failed (%s): its parts wait for the "
                        "bucket's lifecycle rule", key, destination.name, exc)
        raise
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
