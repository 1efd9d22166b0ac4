"""The storage service: validated uploads to the primary, failover to the fallback with a
replicate-back record, deletes everywhere, signed URLs.

Every object is stored with the cache headers of its content type's CDN zone
(``csl.cdn.headers.CachePolicy``: ``Cache-Control`` and the tag metadata, e.g. ``xkey:
zone:audio``), which the edge serves as the object says.

Everything an upload carries (bytes, file name, content type, contributor, folder) is checked
before any provider is called (``UploadRejected``, nothing written anywhere); only an
unavailable primary (connection error, timeout, 5xx) fails over, a refusal (4xx) is raised.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from csl.errors import ProviderUnavailable, StorageError
from csl.storage.media import UploadRejected, validate
from csl.storage.providers import RESERVED_PREFIXES, SHA256_META, StorageProvider, sha256_hex

__all__ = ["StorageService", "UploadResult", "check_upload_prefix", "queue_replication"]

log = logging.getLogger("csl.storage")


@dataclass(frozen=True)
class UploadResult:
    key: str
    provider: str
    kind: str
    size: int
    sha256: str
    replicate_back: bool  # True when the primary failed and the fallback took the object


class StorageService:
    """Uploads go to the primary; when it fails they go to the fallback *and* a row in
    ``csl_ops.replication_queue`` records that the object must be copied back. Deletes go to
    every provider and report per provider. Signed URLs are bounded by ``max_url_expiry_s``."""

    def __init__(self, primary: StorageProvider, fallback: StorageProvider | None = None, *,
                 record: Any = None, max_url_expiry_s: int = 3600, limits: dict[str, int] | None = None,
                 multipart_threshold: int = 8 * 1024 * 1024, cache_policy: Any = None, purges: Any = None) -> None:
        from csl.cdn.headers import CachePolicy

        self.primary = primary
        self.cache_policy = cache_policy or CachePolicy()  # the TTL table on the local edge by default
        self.fallback = fallback
        self._record = record  # callable(conn-less) that stores a replication row; see csl.storage.queue_replication
        self.max_url_expiry_s = max_url_expiry_s
        self.limits = limits
        self.multipart_threshold = multipart_threshold
        self._purges = purges  # callable(provider=, key=, bucket=, reason=): see csl.cdn.queue.queue_purges

    @property
    def providers(self) -> list[StorageProvider]:
        return [p for p in (self.primary, self.fallback) if p is not None]

    def upload(self, data: bytes, *, filename: str, content_type: str, prefix: str = "uploads",
               contributor: str | None = None) -> UploadResult:
        """Validate, then store under ``<prefix>/<2 hex>/<uuid>.<ext>`` with SHA-256 metadata.

        Everything is checked before any provider is called (``UploadRejected``, nothing
        written): the file (``csl.storage.media.validate``), the prefix (``check_upload_prefix``) and the
        metadata (``contributor`` an ASCII id; the file name is stored percent-encoded). Only a
        primary that is unavailable (``ProviderUnavailable``) sends the object to the fallback;
        a refusal (4xx) is raised as it is."""
        from urllib.parse import quote

        kind = validate(data, filename=filename, content_type=content_type, limits=self.limits)
        folder = check_upload_prefix(prefix)
        if contributor is not None and not _CONTRIBUTOR.fullmatch(contributor):
            raise UploadRejected(f"contributor must be an ASCII id (letters, digits, '._:@-', at most 128), "
                                 f"got {contributor!r}")
        object_id = str(uuid.uuid4())
        extension = filename.rsplit(".", 1)[-1].lower()
        key = f"{folder}{object_id.replace('-', '')[:2]}/{object_id}.{extension}"
        digest = sha256_hex(data)
        metadata = {SHA256_META: digest, "original-name": quote(filename, safe=" ._-()"), "kind": kind.name}
        if contributor:
            metadata["contributor"] = contributor
        headers = self.cache_policy.for_content_type(content_type)
        metadata.update(headers.metadata)
        try:
            self._put(self.primary, key, data, content_type, metadata, headers.cache_control)
            return UploadResult(key, self.primary.name, kind.name, len(data), digest, False)
        except ProviderUnavailable as exc:
            if self.fallback is None:
                raise
            log.warning("primary provider unavailable (%s); storing %s on %s and queueing the copy back",
                        exc, key, self.fallback.name)
            self._put(self.fallback, key, data, content_type, metadata, headers.cache_control)
            if self._record is not None:
                self._record(key=key, source=self.fallback.name, target=self.primary.name,
                             reason=f"upload fell back: {exc}", sha256=digest, size=len(data))
            return UploadResult(key, self.fallback.name, kind.name, len(data), digest, True)

    def _put(self, provider: StorageProvider, key: str, data: bytes, content_type: str,
             metadata: dict[str, str], cache_control: str) -> None:
        if len(data) <= self.multipart_threshold:
            provider.put(key, data, content_type=content_type, metadata=metadata, cache_control=cache_control)
            return
        import io

        from boto3.s3.transfer import TransferConfig

        try:  # multipart: the whole-object SHA-256 travels in the metadata, computed beforehand
            provider.client.upload_fileobj(io.BytesIO(data), provider.bucket, key,
                                           ExtraArgs={"ContentType": content_type, "Metadata": metadata,
                                                      "CacheControl": cache_control},
                                           Config=TransferConfig(multipart_threshold=self.multipart_threshold))
        except Exception as exc:
            raise provider._fail("multipart put", key, exc) from exc

    def delete(self, key: str) -> dict[str, str]:
        """Delete from every provider, with its published (public-read) copy where it has one; the
        report says, per provider, what happened. A published copy was served: the edge is owed a
        purge (``purges``)."""
        report = {}
        for provider in self.providers:
            try:
                public = provider.withdraw_published(key)
                provider.delete(key)
                report[provider.name] = "deleted"
            except StorageError as exc:
                report[provider.name] = f"error: {exc}"
                continue
            if public is not None and self._purges is not None:
                self._purges(provider=provider.name, key=key, bucket=public, reason="deleted")
        return report

    def signed_url(self, key: str, *, expires_s: int = 900, provider: StorageProvider | None = None) -> str:
        if not 1 <= expires_s <= self.max_url_expiry_s:
            raise StorageError((provider or self.primary).name,
                               f"signed URL expiry must be 1..{self.max_url_expiry_s} s, got {expires_s}")
        target = provider or self.primary
        return target.client.generate_presigned_url("get_object", Params={"Bucket": target.bucket, "Key": key},
                                                    ExpiresIn=expires_s)


_CONTRIBUTOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_upload_prefix(prefix: str) -> str:
    """The upload folder ``prefix`` as ``a/b/``, or ``UploadRejected`` naming what is wrong: it
    must be relative, made of plain segments (letters, digits, ``._-``, no ``.``/``..``), and
    outside the reserved folders (health probes, quarantine, temporary uploads)."""
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise UploadRejected(f"upload prefix must name a folder such as 'uploads', got {prefix!r}")
    folder = prefix.removesuffix("/")
    if folder.startswith("/"):
        raise UploadRejected(f"upload prefix must be a relative folder (no leading '/'), got {prefix!r}")
    reserved = next((r for r in RESERVED_PREFIXES if (folder + "/").startswith(r)), None)
    if reserved:
        raise UploadRejected(f"upload prefix {prefix!r} is under the reserved folder {reserved!r} "
                             "(health probes, quarantine, temporary uploads)")
    bad = next((part for part in folder.split("/") if not _SEGMENT.fullmatch(part)), None)
    if bad is not None:
        raise UploadRejected(f"upload prefix {prefix!r}: segment {bad!r} is not allowed (letters, digits, '._-'; "
                             "not empty, not starting with '.' or '_')")
    if len(folder) > 200:
        raise UploadRejected(f"upload prefix is {len(folder)} characters long, more than 200")
    return folder + "/"


def queue_replication(connect: Any) -> Any:
    """A ``record`` callable for ``StorageService`` that writes ``csl_ops.replication_queue``."""
    def record(*, key: str, source: str, target: str, reason: str, sha256: str, size: int) -> None:
        with connect() as conn:
            conn.execute(
                "INSERT INTO csl_ops.replication_queue (object_key, source_provider, target_provider, reason, sha256, "
                "size_bytes) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (object_key, target_provider) "
                "WHERE status = 'pending' DO UPDATE SET sha256 = excluded.sha256, size_bytes = excluded.size_bytes, "
                "reason = excluded.reason, created_at = now()", (key, source, target, reason, sha256, size))
            if not conn.autocommit:
                conn.commit()
    return record


