"""csl.cdn.headers (the TTL table, per provider, configured overrides) and csl.cdn.urls (transforms,
hostile keys)."""

from __future__ import annotations

import re

import pytest

from csl.cdn import CachePolicy, Cdn, CdnInputError, cache_headers, object_path, object_url, zone_for_content_type
from csl.cdn.base import Zone
from csl.config import DEFAULT_ZONE_TTLS, Settings

from ...conftest import REPO


# -- headers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("content_type", "zone"), [
    ("audio/mpeg", "audio"), ("audio/wav; codecs=1", "audio"), ("AUDIO/FLAC", "audio"), ("image/webp", "images"),
    ("image/png", "images"), ("text/css", "static"), ("application/javascript", "static"), (None, "static"),
    ("", "static"), ("audiox/mpeg", "static"),
])
def test_content_type_decides_the_zone(content_type, zone):
    assert zone_for_content_type(content_type) == zone


def test_the_ttl_table_not_the_seed_guides_example():
    assert DEFAULT_ZONE_TTLS == {"audio": (86400, 604800), "images": (86400, 2592000), "static": (86400, 2592000)}
    audio = cache_headers("audio", "varnish", tags=["zone:audio"])
    assert audio == {"Cache-Control": "public, max-age=86400, s-maxage=604800", "CDN-Cache-Control": "max-age=604800",
                     "Surrogate-Control": "max-age=604800", "xkey": "zone:audio"}
    for zone in ("images", "static"):
        assert cache_headers(zone, "varnish")["Cache-Control"] == "public, max-age=86400, s-maxage=2592000"
    assert "max-age=3600" not in repr(audio)


@pytest.mark.parametrize(("provider", "header", "value"), [
    ("cloudflare", "Cache-Tag", "zone:audio, contributor:c1"), ("fastly", "Surrogate-Key", "zone:audio contributor:c1"),
    ("varnish", "xkey", "zone:audio contributor:c1"), ("cloudfront", None, None), ("azure", None, None),
])
def test_each_provider_gets_its_own_tag_header(provider, header, value):
    headers = cache_headers("audio", provider, tags=["zone:audio", "contributor:c1", "zone:audio"])
    tag_headers = {k: v for k, v in headers.items() if k in ("Cache-Tag", "Surrogate-Key", "xkey")}
    assert tag_headers == ({header: value} if header else {})


@pytest.mark.parametrize("tag", ["two words", "a,b", "bad\nline", "", "-leading"])
def test_tags_are_refused_when_they_would_split_or_inject(tag):
    with pytest.raises(CdnInputError, match="cache tag"):
        cache_headers("audio", "varnish", tags=[tag])


def test_configured_ttls_win_and_are_validated():
    settings = Settings.from_env({"CDN_ENABLED": "true", "CDN_BASE_URL": "https://cdn.example",
                                  "CDN_AUDIO_BROWSER_TTL": "3600", "CDN_AUDIO_EDGE_TTL": "86400",
                                  "CDN_IMAGES_PROVIDER": "fastly", "CDN_IMAGES_ZONE_ID": "svc",
                                  "CDN_FASTLY_API_TOKEN": "t"})
    policy = CachePolicy.from_settings(settings.edge)
    audio = policy.for_content_type("audio/mpeg")
    assert audio.cache_control == "public, max-age=3600, s-maxage=86400"
    assert audio.metadata == {"cdn-cache-control": "max-age=86400", "surrogate-control": "max-age=86400",
                              "xkey": "zone:audio"}
    image = policy.for_content_type("image/png", tags=["sample:1"])
    assert image.cache_control == "public, max-age=86400, s-maxage=2592000"
    assert image.metadata["surrogate-key"] == "zone:images sample:1" and "xkey" not in image.metadata
    assert policy.for_content_type("text/css").put_args()["CacheControl"] == "public, max-age=86400, s-maxage=2592000"
    for bad in ((-1, 5), (5, 10**9), (True, 5), (1.5, 5)):
        with pytest.raises(CdnInputError, match="TTL"):
            cache_headers("audio", "varnish", ttls=bad)
    with pytest.raises(CdnInputError, match="zone"):
        cache_headers("video", "varnish")


def test_the_edge_fallback_is_the_tables_browser_ttl():
    # objects stored before cache headers existed: the VCL gives them the table's browser TTL
    vcl = (REPO / "stack" / "varnish" / "edge.vcl").read_text()
    fallback = re.search(r'set beresp\.http\.Cache-Control = "public, max-age=(\d+), s-maxage=\{\{EDGE_TTL\}\}"', vcl)
    assert fallback and {int(fallback.group(1))} == {browser for browser, _ in DEFAULT_ZONE_TTLS.values()}


# -- URLs -----------------------------------------------------------------------------------------------
AUDIO = Zone(name="audio", provider="varnish", base_url="https://cdn.example.com/audio")
IMAGES = Zone(name="images", provider="fastly", base_url="https://cdn.example.com/images", zone_id="svc")
CF_IMAGES = Zone(name="images", provider="cloudflare", base_url="https://cdn.example.com/images", zone_id="z")
STATIC = Zone(name="static", provider="varnish", base_url="https://cdn.example.com/static")


def test_audio_transforms_are_query_parameters_in_a_fixed_order():
    url = object_url(AUDIO, "samples/ab/x y.mp3", {"quality": "high", "format": "ogg", "bitrate": "192"})
    assert url == "https://cdn.example.com/audio/samples/ab/x%20y.mp3?bitrate=192&format=ogg&quality=high"
    assert object_url(AUDIO, "samples/ab/x.mp3") == "https://cdn.example.com/audio/samples/ab/x.mp3"
    assert object_url(AUDIO, "samples/ab/x.mp3", {"bitrate": None}) == "https://cdn.example.com/audio/samples/ab/x.mp3"


def test_image_transforms_use_cloudflares_path_form_on_cloudflare_only():
    options = {"width": 800, "height": 600, "format": "webp", "quality": 85}
    assert object_url(CF_IMAGES, "samples/ab/cover.png", options) == (
        "https://cdn.example.com/cdn-cgi/image/width=800,height=600,format=webp,quality=85/images/samples/ab/cover.png")
    assert object_url(IMAGES, "samples/ab/cover.png", {"quality": 85, "width": 800}) == (
        "https://cdn.example.com/images/samples/ab/cover.png?width=800&quality=85")
    assert object_url(CF_IMAGES, "samples/ab/cover.png") == "https://cdn.example.com/images/samples/ab/cover.png"


@pytest.mark.parametrize(("zone", "options", "named", "allowed"), [
    (AUDIO, {"bitrate": 100}, "bitrate", "64, 96, 128, 192, 256, 320"),
    (AUDIO, {"bitrate": "128k"}, "bitrate", "64, 96"),
    (AUDIO, {"bitrate": True}, "bitrate", "320"),
    (AUDIO, {"format": "opus"}, "format", "mp3, ogg, aac, flac, wav"),
    (AUDIO, {"quality": "ultra"}, "quality", "low, medium, high"),
    (AUDIO, {"width": 10}, "width", "bitrate, format, quality"),
    (IMAGES, {"width": 0}, "width", "1..8192"),
    (IMAGES, {"width": 8193}, "width", "1..8192"),
    (IMAGES, {"height": -5}, "height", "1..8192"),
    (IMAGES, {"height": 2.5}, "height", "1..8192"),
    (IMAGES, {"format": "gif"}, "format", "auto, webp, avif, jpeg, png"),
    (IMAGES, {"quality": 101}, "quality", "1..100"),
    (IMAGES, {"quality": "high"}, "quality", "1..100"),
    (IMAGES, {"bitrate": 128}, "bitrate", "width, height, format, quality"),
    (STATIC, {"width": 10}, "width", "none"),
])
def test_each_invalid_option_is_refused_naming_it_and_the_allowed_values(zone, options, named, allowed):
    with pytest.raises(CdnInputError) as caught:
        object_url(zone, "samples/ab/x", options)
    assert repr(named) in str(caught.value) and allowed in str(caught.value)


@pytest.mark.parametrize("key", [
    "", "/samples/x.mp3", "https://evil.example/x.mp3", "//evil.example/x.mp3", "javascript:alert(1)",
    "samples/../_quarantine/x.mp3", "samples/./x.mp3", "..", "samples//x.mp3", "samples/x.mp3\r\nSet-Cookie: a=b",
    "samples/\x00x.mp3", "samples\\..\\x.mp3", "samples/x\x7f.mp3", None,
])
def test_hostile_keys_are_refused(key):
    with pytest.raises(CdnInputError, match="key"):
        object_url(AUDIO, key)


def test_keys_are_quoted_so_they_stay_one_path():
    assert object_path("samples/ab/a?b#c%20d&e.mp3") == "samples/ab/a%3Fb%23c%2520d%26e.mp3"
    assert object_path("samples/ab/été.mp3") == "samples/ab/%C3%A9t%C3%A9.mp3"


def test_cdn_url_and_the_signed_url_hook():
    settings = Settings.from_env({"CDN_ENABLED": "true", "CDN_BASE_URL": "https://cdn.example.com"})
    with Cdn.from_settings(settings) as client:
        assert client.url("audio", "samples/ab/x.mp3", bitrate=320) == (
            "https://cdn.example.com/audio/samples/ab/x.mp3?bitrate=320")
        signed = client.url("audio", "samples/ab/x.mp3", signer=lambda url: url + "&Signature=sig")
        assert signed == "https://cdn.example.com/audio/samples/ab/x.mp3&Signature=sig"
