"""What an uploaded file really is: extension, declared MIME type and magic bytes must agree.

The platform checked MIME type and extension only, so a renamed ``.exe`` passed. Here the
content decides; the extension and the declared type must both name that same kind. The file
name and the declared type travel as object metadata and HTTP headers, so control characters
(CR/LF, NUL, bidi overrides …) in them are refused too: bad input, never a provider failure.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from csl.errors import BadInput

__all__ = ["KINDS", "MediaKind", "UploadRejected", "sniff", "validate"]

MB = 1024 * 1024


class UploadRejected(BadInput, ValueError):
    """The file is refused; the message says which check failed and why."""


@dataclass(frozen=True)
class MediaKind:
    name: str
    mime_types: tuple[str, ...]
    extensions: tuple[str, ...]
    max_bytes: int
    category: str  # audio | image


KINDS = {k.name: k for k in (
    MediaKind("wav", ("audio/wav", "audio/x-wav", "audio/wave"), ("wav",), 200 * MB, "audio"),
    MediaKind("mp3", ("audio/mpeg", "audio/mp3"), ("mp3",), 50 * MB, "audio"),
    MediaKind("flac", ("audio/flac", "audio/x-flac"), ("flac",), 200 * MB, "audio"),
    MediaKind("ogg", ("audio/ogg", "audio/vorbis", "audio/opus"), ("ogg", "oga", "opus"), 50 * MB, "audio"),
    MediaKind("m4a", ("audio/mp4", "audio/x-m4a", "audio/aac", "audio/aacp"), ("m4a", "aac", "mp4"), 50 * MB, "audio"),
    MediaKind("jpeg", ("image/jpeg",), ("jpg", "jpeg"), 10 * MB, "image"),
    MediaKind("png", ("image/png",), ("png",), 10 * MB, "image"),
    MediaKind("webp", ("image/webp",), ("webp",), 10 * MB, "image"),
)}


def _mp3_frame(data: bytes) -> bool:
    # frame sync (11 bits), MPEG version not reserved, layer III/II/I not reserved, bitrate not "bad"
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version, layer, bitrate = (data[1] >> 3) & 0x3, (data[1] >> 1) & 0x3, data[2] >> 4
    return version != 1 and layer != 0 and bitrate != 0xF and data[1] & 0xF6 != 0xF0  # not ADTS AAC


def sniff(data: bytes) -> str | None:
    """The kind named by the file's magic bytes, or None."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:3] == b"ID3" or _mp3_frame(head):
        return "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp" and head[8:12] in (b"M4A ", b"M4B ", b"mp42", b"isom", b"mp41", b"dash"):
        return "m4a"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:  # ADTS AAC
        return "m4a"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _check_text(what: str, text: str, *, max_bytes: int) -> None:
    if not isinstance(text, str) or not text.strip():
        raise UploadRejected(f"{what} is empty")
    bad = next((c for c in text if unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS), None)
    if bad is not None:
        raise UploadRejected(f"{what} {text!r} contains the control character U+{ord(bad):04X}")
    if len(text.encode()) > max_bytes:
        raise UploadRejected(f"{what} is {len(text.encode())} bytes long, more than {max_bytes}")


def validate(data: bytes, *, filename: str, content_type: str, limits: dict[str, int] | None = None) -> MediaKind:
    """The file's kind when name, declared type, content and size all agree; else ``UploadRejected``."""
    _check_text("file name", filename, max_bytes=255)
    if "/" in filename or "\\" in filename:
        raise UploadRejected(f"file name {filename!r} must be a name, not a path")
    _check_text("content type", content_type, max_bytes=255)
    if not content_type.isascii():
        raise UploadRejected(f"content type {content_type!r} must be ASCII")
    if not data:
        raise UploadRejected(f"{filename!r}: the file is empty")
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    by_extension = [k for k in KINDS.values() if extension in k.extensions]
    if not by_extension:
        allowed = ", ".join(sorted({e for k in KINDS.values() for e in k.extensions}))
        raise UploadRejected(f"{filename!r}: extension {extension or '(none)'!r} is not allowed (allowed: {allowed})")
    declared = content_type.split(";", 1)[0].strip().lower()
    by_type = [k for k in KINDS.values() if declared in k.mime_types]
    if not by_type:
        raise UploadRejected(f"{filename!r}: content type {declared!r} is not allowed")
    actual = sniff(data)
    if actual is None:
        raise UploadRejected(f"{filename!r}: the content is not a recognised audio or image file "
                             f"(first bytes {data[:8].hex()}), whatever its name says")
    kind = KINDS[actual]
    if kind not in by_extension:
        raise UploadRejected(f"{filename!r}: the content is {actual.upper()}, but the extension says {extension!r}")
    if kind not in by_type:
        raise UploadRejected(f"{filename!r}: the content is {actual.upper()}, but it was declared {declared!r}")
    limit = (limits or {}).get(kind.name, kind.max_bytes)
    if len(data) > limit:
        raise UploadRejected(f"{filename!r}: {len(data):,} bytes is over the {kind.name} limit of {limit:,} bytes")
    return kind
