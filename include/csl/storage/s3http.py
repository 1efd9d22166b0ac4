"""The lean S3 path: HEAD, GET and PUT of one object (or part) as SigV4-signed HTTP requests.

Replication's hot path. botocore spends 2–4 ms of CPU per request building, signing and parsing
it, httpx still ~0.7 ms; a request here on the standard library's ``http.client`` costs ~0.2 ms:
one kept-alive connection per provider per thread, a signing key derived once per day, headers
read as they come. Like the sweep's listing, it is used for providers with an endpoint URL,
addressed path-style (``<endpoint>/<bucket>/<key>``), and for starting, completing and aborting
the multipart uploads replication streams into; boto3 stays for everything else (tagging,
server-side copies).

- A PUT carries the SHA-256 we computed anyway as ``x-amz-checksum-sha256``; its payload is
  signed with the same digest, or ``UNSIGNED-PAYLOAD`` where the provider verifies checksums
  (the signed checksum header binds the bytes). No chunked encoding and no
  trailers (what ``request_checksum_calculation=when_required`` protects some providers from)
  are ever sent: the only checksum is the one we ask the provider to check.
- TLS is verified for ``https`` endpoints (certificate and host name), against
  ``AWS_CA_BUNDLE`` when set (as boto3 does).
- Failures are the provider's ``StorageError``: ``ProviderUnavailable`` when it cannot answer
  (connection, timeout, HTTP 5xx), a plain ``StorageError`` when it refuses (4xx); only a real
  404 is "not there". Credentials never appear in an error or a log line.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import http.client
import os
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

from csl.config import StorageProviderSettings
from csl.errors import ProviderUnavailable, StorageError

__all__ = ["EMPTY_SHA256", "MultipartUploads", "Page", "PageClient", "S3Http", "S3Response", "tls_context"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
META_PREFIX = "x-amz-meta-"
ATTEMPTS = 2  # a failed connection or a 5xx is tried once more (every request here is idempotent)
CHUNK = 1 << 20  # a GET's body is handed on in pieces of this size


@dataclass(frozen=True)
class S3Response:
    """What came back: the status and the headers (names in lower case)."""

    status: int
    headers: Mapping[str, str]

    @property
    def metadata(self) -> dict[str, str]:
        """The user metadata (``x-amz-meta-*``), names without the prefix."""
        return {k[len(META_PREFIX):]: v for k, v in self.headers.items() if k.startswith(META_PREFIX)}

    @property
    def size(self) -> int:
        return int(self.headers.get("content-length", "0"))


class S3Http:
    """SigV4-signed object requests to one provider's bucket, one kept-alive connection per
    thread (a run's workers each keep theirs; a dropped one is opened again).

    ``connection_class`` is the seam for tests (an ``http.client.HTTPConnection`` subclass)."""

    def __init__(self, settings: StorageProviderSettings, *, connect_timeout_s: float = 3.0,
                 read_timeout_s: float = 30.0, connection_class: type[http.client.HTTPConnection] | None = None) -> None:
        if not settings.endpoint_url:
            raise ValueError(f"provider {settings.name!r} has no endpoint URL: the lean path needs one")
        self.name = settings.name
        self.verifies_checksums = settings.verifies_checksums
        self.endpoint = settings.endpoint_url.rstrip("/")
        self._bucket_path = "/" + quote(settings.bucket, safe="")
        url = urlsplit(self.endpoint)
        https = url.scheme == "https"
        self._hostname, self._port = url.hostname or "", url.port or (443 if https else 80)
        # the Host header as http.client writes it (a default port left out), which is what is signed
        default = (https and self._port == 443) or (not https and self._port == 80)
        host = f"[{self._hostname}]" if ":" in self._hostname else self._hostname
        self._host = host if default else f"{host}:{self._port}"
        self._origin = f"{url.scheme}://{self._host}"
        self._base_path = url.path.rstrip("/")
        self._tls = tls_context(self.endpoint) if https else None  # loaded now: a bad bundle fails at once
        self._connection_class = connection_class or (http.client.HTTPSConnection if https
                                                      else http.client.HTTPConnection)
        self._connect_timeout_s, self._read_timeout_s = connect_timeout_s, read_timeout_s
        self._region = settings.region
        self._access_key = settings.access_key.reveal()
        self._secret_key = settings.secret_key
        self._keys: tuple[str, bytes] | None = None  # (date, signing key)
        self._keys_lock = threading.Lock()
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.sock is None:  # none yet, or closed by the server after its last answer
            tls = {"context": self._tls} if self._tls is not None else {}
            conn = self._connection_class(self._hostname, self._port, timeout=self._connect_timeout_s, **tls)
            conn.connect()
            conn.sock.settimeout(self._read_timeout_s)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        """Close this thread's connection (a failure, or an answer not read to its end)."""
        conn = self._local.__dict__.pop("conn", None)
        if conn is not None:
            conn.close()

    # -- signing ---------------------------------------------------------------------------
    def _signing_key(self, date: str) -> bytes:
        with self._keys_lock:
            if self._keys is None or self._keys[0] != date:
                key = ("AWS4" + self._secret_key.reveal()).encode()
                for part in (date, self._region, "s3", "aws4_request"):
                    key = hmac.new(key, part.encode(), hashlib.sha256).digest()
                self._keys = (date, key)
            return self._keys[1]

    def _signed(self, method: str, path: str, query: str, headers: dict[str, str], payload_sha256: str) -> dict[str, str]:
        """``headers`` plus host, date, payload hash and the SigV4 ``Authorization`` over all of them.
        ``path`` is URI-encoded once (S3 does not encode twice); ``query`` is canonical already.
        Header values are signed as the bytes ``http.client`` sends (Latin-1, as it read them)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = stamp[:8]
        signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
        signed.update({"host": self._host, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256})
        names = sorted(signed)
        canonical = "\n".join((method, path, query, "".join(f"{n}:{signed[n]}\n" for n in names),
                               ";".join(names), payload_sha256))
        scope = f"{date}/{self._region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode('latin-1')).hexdigest()}"
        signature = hmac.new(self._signing_key(date), to_sign.encode(), hashlib.sha256).hexdigest()
        signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, "
                                   f"SignedHeaders={';'.join(names)}, Signature={signature}")
        del signed["host"]  # the HTTP client writes it
        return signed

    def _path(self, key: str) -> str:
        return f"{self._base_path}{self._bucket_path}/{quote(key, safe='/~')}"

    def signed_bucket_get(self, query: str) -> tuple[str, dict[str, str]]:
        """(URL, headers) of a signed GET of the bucket itself with the canonical ``query``
        (sorted, each name and value URI-encoded): the sweep's listing pages."""
        path = f"{self._base_path}{self._bucket_path}"
        return f"{self._origin}{path}?{query}", self._signed("GET", path, query, {}, EMPTY_SHA256)

    @property
    def uploads(self) -> MultipartUploads:
        """Multipart uploads to this bucket (start, complete, abort)."""
        return MultipartUploads(self)

    def pages(self) -> PageClient:
        """The listing's transport over this path's connections (``StorageProvider._http``)."""
        return PageClient(self)

    # -- requests --------------------------------------------------------------------------
    def _send(self, action: str, key: str, method: str, *, query: str = "", headers: dict[str, str] | None = None,
              body: bytes | None = None, payload_sha256: str = EMPTY_SHA256) -> http.client.HTTPResponse:
        """The answer, its body not read yet (read it to its end, or ``_drop`` the connection)."""
        path = self._path(key)
        target = f"{path}?{query}" if query else path
        for attempt in range(ATTEMPTS):
            signed = self._signed(method, path, query, dict(headers or {}), payload_sha256)
            try:
                conn = self._connection()
                conn.request(method, target, body=body, headers=signed)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, closed
                self._drop()
                if attempt + 1 < ATTEMPTS:  # most often a kept-alive connection the server had closed
                    time.sleep(0.05)
                    continue
                raise ProviderUnavailable(self.name, f"{action} {key!r}: cannot reach {self.endpoint} "
                                                     f"({type(exc).__name__})") from exc
            if response.status >= 500 and attempt + 1 < ATTEMPTS:
                self._finish(response)
                time.sleep(0.2)
                continue
            return response
        raise AssertionError("unreachable")

    def _finish(self, response: http.client.HTTPResponse) -> bytes:
        """Read the rest of a (small) answer, so that its connection can carry the next request."""
        try:
            return response.read()
        except (OSError, http.client.HTTPException):
            self._drop()
            return b""

    def _refused(self, action: str, key: str, response: http.client.HTTPResponse) -> StorageError:
        from csl.storage.providers import _s3_error

        body = self._finish(response)
        code, message = _s3_error(body) if body else ("-", response.reason)
        kind = ProviderUnavailable if response.status >= 500 else StorageError
        return kind(self.name, f"{action} {key!r}: HTTP {response.status} {code}: {message}")

    def head(self, key: str) -> S3Response | None:
        """HEAD with ``x-amz-checksum-mode: ENABLED``; ``None`` only for a real 404."""
        response = self._send("head", key, "HEAD", headers={"x-amz-checksum-mode": "ENABLED"})
        self._finish(response)
        if response.status == 404:
            return None
        if response.status != 200:
            raise self._refused("head", key, response)
        return S3Response(200, _headers(response))

    @contextmanager
    def get(self, key: str) -> Iterator[tuple[S3Response, Iterator[bytes]] | None]:
        """GET as a stream: (headers, the raw bytes in chunks: never decoded, whatever the
        ``Content-Encoding``), or ``None`` for a real 404. A broken stream raises the
        provider's ``ProviderUnavailable``."""
        response = self._send("get", key, "GET", headers={"accept-encoding": "identity"})
        try:
            if response.status == 404:
                self._finish(response)
                yield None
                return
            if response.status != 200:
                raise self._refused("get", key, response)
            yield S3Response(200, _headers(response)), self._chunks(key, response)
        finally:
            if not response.isclosed():  # not read to its end: the connection cannot be used again
                self._drop()

    def _chunks(self, key: str, response: http.client.HTTPResponse) -> Iterator[bytes]:
        try:
            while chunk := response.read(CHUNK):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise ProviderUnavailable(self.name, f"read {key!r}: the stream from {self.endpoint} broke "
                                                 f"({type(exc).__name__})") from exc

    def put(self, key: str, body: bytes, *, sha256: bytes, headers: Mapping[str, str],
            part: tuple[str, int] | None = None) -> S3Response:
        """PUT ``body`` (whose SHA-256 digest is ``sha256``) with ``x-amz-checksum-sha256``: a
        provider that verifies checksums refuses bytes that do not match it (HTTP 400). With
        ``part`` (upload id, part number): one part of a multipart upload (its ETag in the headers).

        On such a provider the payload is sent ``UNSIGNED-PAYLOAD``: the signed checksum header
        already binds the bytes, and the server hashes them once, not twice. Elsewhere the
        signature covers the payload's SHA-256."""
        sent = {**headers, "content-length": str(len(body)),
                "x-amz-checksum-sha256": base64.b64encode(sha256).decode()}
        query = ""
        if part is not None:
            upload, number = part
            query = f"partNumber={number}&{_upload_query(upload)}"
        action = f"upload part {part[1]} of" if part else "put"
        payload = "UNSIGNED-PAYLOAD" if self.verifies_checksums else sha256.hex()
        response = self._send(action, key, "PUT", query=query, headers=sent, body=body, payload_sha256=payload)
        if response.status != 200:
            raise self._refused(action, key, response)
        self._finish(response)
        return S3Response(200, _headers(response))


@dataclass(frozen=True)
class Page:
    """A listing page as it came back (the names httpx's response uses: the seam tests fill)."""

    status_code: int
    content: bytes


class PageClient:
    """``get(url, headers=…)`` of signed listing URLs on ``S3Http``'s kept-alive connections: the
    sweep's listing without an HTTP library to import (httpx and what it brings cost ~0.1 s of
    start-up, more than a small listing takes). A kept-alive connection the server closed while
    idle is opened again at once; other transport failures raise ``OSError`` or
    ``http.client.HTTPException``, and the caller retries (a listing is safe to repeat)."""

    def __init__(self, lean: S3Http) -> None:
        self._lean = lean

    def get(self, url: str, *, headers: Mapping[str, str]) -> Page:
        target = urlsplit(url)
        path = f"{target.path}?{target.query}" if target.query else target.path
        for attempt in range(2):
            kept = getattr(self._lean._local, "conn", None)
            reused = kept is not None and kept.sock is not None
            try:
                conn = self._lean._connection()
                conn.request("GET", path, headers=dict(headers))
                response = conn.getresponse()
                return Page(response.status, response.read())
            except (OSError, http.client.HTTPException):
                self._lean._drop()
                if attempt or not reused:  # not a kept-alive connection the server had closed
                    raise
        raise AssertionError("unreachable")


class MultipartUploads:
    """Starting, completing and aborting a multipart upload on the lean path (its parts are
    ``S3Http.put(…, part=…)``): what boto3 would do, without importing it (~0.3 s of CPU and a
    client per run) on the way to the first part."""

    def __init__(self, lean: S3Http) -> None:
        self._lean = lean

    def start(self, key: str, *, headers: Mapping[str, str]) -> str:
        """A new upload of ``key`` whose parts carry SHA-256 checksums; its upload id."""
        sent = {**headers, "x-amz-checksum-algorithm": "SHA256"}
        response = self._lean._send("start multipart upload of", key, "POST", query="uploads=", headers=sent)
        if response.status != 200:
            raise self._lean._refused("start multipart upload of", key, response)
        upload = _xml_text(self._lean._finish(response), "UploadId")
        if not upload:
            raise StorageError(self._lean.name, f"start multipart upload of {key!r}: no UploadId in the answer")
        return upload

    def complete(self, key: str, upload: str, parts: list[tuple[str, bytes]]) -> None:
        """Complete ``upload`` from its parts in order: (ETag, SHA-256 digest) each."""
        body = ("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                + "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag>"
                          f"<ChecksumSHA256>{base64.b64encode(digest).decode()}</ChecksumSHA256></Part>"
                          for n, (etag, digest) in enumerate(parts, start=1))
                + "</CompleteMultipartUpload>").encode()
        action = "complete multipart upload of"
        response = self._lean._send(action, key, "POST", query=_upload_query(upload),
                                    headers={"content-type": "application/xml", "content-length": str(len(body))},
                                    body=body, payload_sha256=hashlib.sha256(body).hexdigest())
        if response.status != 200:
            raise self._lean._refused(action, key, response)
        answer = self._lean._finish(response)
        if b"<Error>" in answer:  # S3 may answer 200 and fail in the body
            from csl.storage.providers import _s3_error

            code, message = _s3_error(answer[answer.index(b"<Error>"):])
            raise ProviderUnavailable(self._lean.name, f"{action} {key!r}: {code}: {message}")

    def abort(self, key: str, upload: str) -> None:
        response = self._lean._send("abort multipart upload of", key, "DELETE", query=_upload_query(upload))
        if response.status not in (200, 204, 404):
            raise self._lean._refused("abort multipart upload of", key, response)
        self._lean._finish(response)


def _upload_query(upload: str) -> str:
    return f"uploadId={quote(upload, safe='-_.~')}"


def _xml_text(body: bytes, name: str) -> str | None:
    """The text of the first element called ``name`` (any namespace) in an S3 XML answer."""
    from xml.etree.ElementTree import ParseError, fromstring

    try:
        root = fromstring(body)
    except ParseError:
        return None
    return root.findtext(f"{{*}}{name}") or root.findtext(name)


def _headers(response: http.client.HTTPResponse) -> dict[str, str]:
    return {name.lower(): value for name, value in response.getheaders()}


def tls_context(endpoint_url: str | None) -> ssl.SSLContext:
    """The TLS context for an S3 endpoint: certificates always verified, for an ``https``
    endpoint against ``AWS_CA_BUNDLE`` when set (as boto3 does), else the system's store.
    Made once per bundle and shared by every client (loading a CA store costs ~20 ms of CPU)."""
    https = (endpoint_url or "https:").startswith("https:")
    return _tls_context(os.environ.get("AWS_CA_BUNDLE") or None if https else None)


@functools.cache
def _tls_context(cafile: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)
