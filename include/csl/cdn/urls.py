"""Public URLs of objects in a zone, with transforms.

- audio: ``bitrate`` in 64, 96, 128, 192, 256, 320; ``format`` in mp3, ogg, aac, flac, wav;
  ``quality`` in low, medium, high;
- images: ``width`` and ``height`` 1..8192; ``format`` in auto, webp, avif, jpeg, png;
  ``quality`` 1..100;
- static: no transforms.

On a Cloudflare zone image transforms use Cloudflare's path form
(``https://host/cdn-cgi/image/width=800,height=600,format=webp,quality=85/images/<key>``);
everywhere else they are query parameters in a fixed order (``?width=800&format=webp``).

Keys are hostile input: percent-quoted; empty keys, absolute URLs (``scheme:``, ``//host``),
leading ``/``, backslashes, control characters and ``.``/``..`` segments are refused. Invalid
options raise ``CdnInputError`` naming the option and the allowed values. Signed URLs (CloudFront)
are the provider's: pass its signer as ``signer=`` (a callable taking and returning the URL).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from csl.cdn.base import CdnInputError, Zone

__all__ = ["AUDIO_TRANSFORMS", "IMAGE_TRANSFORMS", "check_transforms", "object_path", "object_url"]

AUDIO_TRANSFORMS: dict[str, tuple[Any, ...]] = {
    "bitrate": (64, 96, 128, 192, 256, 320),
    "format": ("mp3", "ogg", "aac", "flac", "wav"),
    "quality": ("low", "medium", "high"),
}
IMAGE_TRANSFORMS: dict[str, tuple[Any, ...] | range] = {
    "width": range(1, 8193),
    "height": range(1, 8193),
    "format": ("auto", "webp", "avif", "jpeg", "png"),
    "quality": range(1, 101),
}
_TRANSFORMS = {"audio": AUDIO_TRANSFORMS, "images": IMAGE_TRANSFORMS, "static": {}}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _allowed(values: tuple[Any, ...] | range) -> str:
    if isinstance(values, range):
        return f"whole numbers {values.start}..{values.stop - 1}"
    return ", ".join(str(v) for v in values)


def check_transforms(zone: str, transforms: Mapping[str, Any]) -> dict[str, Any]:
    """The transforms as canonical values (whole numbers as ``int``), or ``CdnInputError`` naming
    the option and what it may be."""
    allowed = _TRANSFORMS.get(zone)
    if allowed is None:
        raise CdnInputError(f"zone must be one of {', '.join(_TRANSFORMS)}, got {zone!r}")
    checked: dict[str, Any] = {}
    for name, value in transforms.items():
        if value is None:
            continue
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise CdnInputError(f"transform option {name!r} is not one of zone {zone!r}'s options ({known})")
        values = allowed[name]
        numeric = isinstance(values, range) or all(isinstance(v, int) for v in values)
        if numeric:
            if isinstance(value, str) and value.isascii() and value.isdigit():
                value = int(value)
            ok = isinstance(value, int) and not isinstance(value, bool) and value in values
        else:
            ok = isinstance(value, str) and value in values
        if not ok:
            raise CdnInputError(f"transform option {name!r} = {value!r}: allowed {_allowed(values)}")
        checked[name] = value
    return {name: checked[name] for name in allowed if name in checked}  # a fixed order: stable URLs


def object_path(key: str) -> str:
    """``key`` as a URL path below a zone (no leading ``/``), percent-quoted; hostile keys refused."""
    if not isinstance(key, str) or not key:
        raise CdnInputError(f"object key must be non-empty text, got {key!r}")
    if any(not ch.isprintable() for ch in key):
        raise CdnInputError(f"object key {key!r} contains control characters")
    if _SCHEME.match(key) or key.startswith(("/", "\\")) or "\\" in key:
        raise CdnInputError(f"object key {key!r} must be a relative key (no scheme, no leading '/', no '\\')")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise CdnInputError(f"object key {key!r} has an empty, '.' or '..' segment")
    return quote(key, safe="/~-._")


def object_url(zone: Zone, key: str, transforms: Mapping[str, Any] | None = None, *,
               signer: Callable[[str], str] | None = None) -> str:
    """The public URL of ``key`` in ``zone``, with ``transforms`` (see the module docstring)."""
    path = object_path(key)
    options = check_transforms(zone.name, transforms or {})
    base = zone.base_url.rstrip("/")
    if options and zone.name == "images" and zone.provider == "cloudflare":
        parts = urlsplit(base)
        spec = ",".join(f"{name}={value}" for name, value in options.items())
        url = f"{parts.scheme}://{parts.netloc}/cdn-cgi/image/{spec}{parts.path}/{path}"
    else:
        url = f"{base}/{path}" + (f"?{urlencode(options)}" if options else "")
    return signer(url) if signer is not None else url
