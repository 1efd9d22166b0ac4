"""The configured CDN: zones audio / images / static, each with its provider, built lazily.

::

    with Cdn.from_settings(settings) as cdn:          # settings: csl.config.Settings or CdnSettings
        zone = cdn.zone_for_url("https://cdn.example.com/audio/samples/ab/x.mp3")
        cdn.provider(zone.name).purge(zone, batch)    # one provider per zone, built once
        cdn.health()                                  # {zone: reachability, latency, hit ratio}

``build_provider(zone, settings)`` is the one factory: the local edge is ``csl.cdn.varnish``;
the remote providers' modules (``csl.cdn.cloudflare``, ``cloudfront``, ``azure``, ``fastly``)
are imported only when a zone uses them, with the credentials from ``CdnSettings.credentials``.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import urlsplit

from csl.cdn.base import CdnInputError, CdnProvider, Zone
from csl.config import CdnSettings, Settings
from csl.errors import ConfigError

__all__ = ["PROVIDER_CLASSES", "Cdn", "build_provider", "zone_for_url", "zone_from_settings"]

log = logging.getLogger("csl.cdn")

# provider name → (module, class); imported when first needed
PROVIDER_CLASSES = {
    "varnish": ("csl.cdn.varnish", "VarnishEdge"),
    "cloudflare": ("csl.cdn.cloudflare", "CloudflareProvider"),
    "cloudfront": ("csl.cdn.cloudfront", "CloudFrontProvider"),
    "azure": ("csl.cdn.azure", "AzureFrontDoorProvider"),
    "fastly": ("csl.cdn.fastly", "FastlyProvider"),
}


_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def zone_for_url(zones: Mapping[str, Zone], url: str) -> Zone:
    """The zone whose base URL the URL lies under (the longest such base URL); ``CdnInputError``
    naming the URL when none does."""
    if not isinstance(url, str):
        raise CdnInputError(f"a URL must be text, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or _CONTROL.search(url) or "#" in url:
        raise CdnInputError(f"not an absolute http(s) URL: {url!r}")
    best: Zone | None = None
    for zone in zones.values():
        base = zone.base_url.rstrip("/")
        if url.startswith(base + "/") and (best is None or len(base) > len(best.base_url.rstrip("/"))):
            best = zone
    if best is None:
        served = ", ".join(f"{z.name}: {z.base_url}" for z in zones.values()) or "no zone is configured"
        raise CdnInputError(f"URL {url!r} is outside every CDN zone ({served})")
    return best


def _cdn_settings(settings: Settings | CdnSettings) -> CdnSettings:
    return settings.edge if isinstance(settings, Settings) else settings


def zone_from_settings(zone: Any) -> Zone:
    """A ``csl.cdn.base.Zone`` from a ``csl.config.CdnZoneSettings``; its TTLs ride in the options."""
    return Zone(name=zone.name, provider=zone.provider, base_url=zone.base_url, zone_id=zone.zone_id,
                options={**zone.options, "browser_ttl_s": zone.browser_ttl_s, "edge_ttl_s": zone.edge_ttl_s})


def _provider_class(name: str, setting: str) -> type:
    try:
        module_name, class_name = PROVIDER_CLASSES[name]
    except KeyError:
        raise ConfigError(setting, f"unknown CDN provider {name!r} (known: {', '.join(PROVIDER_CLASSES)})") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(setting, f"CDN provider {name!r} is not available in this installation "
                          f"(module {module_name} not found)") from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ConfigError(setting, f"CDN provider {name!r}: {module_name} has no {class_name}") from None


def build_provider(zone: Zone, settings: Settings | CdnSettings, **seams: Any) -> CdnProvider:
    """The provider client for ``zone``, with its credentials; ``seams`` (``transport=``,
    ``client=``) go to the constructor (tests)."""
    cdn = _cdn_settings(settings)
    creds = cdn.credentials
    missing = creds.missing_for(zone.provider)
    if missing:
        raise ConfigError(missing[0], f"not set; required because zone {zone.name!r} uses provider {zone.provider!r}")
    cls = _provider_class(zone.provider, f"CDN_{zone.name.upper()}_PROVIDER")
    if zone.provider == "varnish":
        parts = urlsplit(zone.base_url)
        return cls(cdn, base_url=f"{parts.scheme}://{parts.netloc}",
                   work_dir=zone.options.get("work_dir") or cdn.varnish_work_dir, **seams)
    # the API's own address, where the zone's options move it (a private endpoint, a sovereign
    # cloud, a local server speaking the API in tests): api_base, login_base (Azure), endpoint_url
    endpoints = {name: _http_option(zone, name) for name in ENDPOINT_OPTIONS[zone.provider] if name in zone.options}
    if zone.provider == "cloudflare":
        return cls(api_token=creds.cloudflare_api_token, plan=creds.cloudflare_plan, **endpoints, **seams)
    if zone.provider == "cloudfront":
        key_id = creds.cloudfront_access_key_id
        return cls(access_key_id=key_id.reveal() if key_id else None,
                   secret_access_key=creds.cloudfront_secret_access_key, **endpoints, **seams)
    if zone.provider == "azure":
        return cls(tenant_id=creds.azure_tenant_id.reveal(), client_id=creds.azure_client_id.reveal(),
                   client_secret=creds.azure_client_secret, **endpoints, **seams)
    return cls(api_token=creds.fastly_api_token, **endpoints, **seams)


ENDPOINT_OPTIONS = {"cloudflare": ("api_base",), "cloudfront": ("endpoint_url",),
                    "azure": ("api_base", "login_base"), "fastly": ("api_base",)}


def _http_option(zone: Zone, name: str) -> str:
    from csl.config import parse_http_url

    return parse_http_url(f"CDN_{zone.name.upper()}_OPTIONS.{name}", zone.options[name])


class Cdn:
    """The configured zones and their providers (each built on first use, once)."""

    def __init__(self, zones: Mapping[str, Zone], settings: CdnSettings, *,
                 seams: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.zones: dict[str, Zone] = dict(zones)
        self.settings = settings
        self._seams = dict(seams or {})  # provider name → constructor seams (tests)
        self._providers: dict[str, CdnProvider] = {}

    @classmethod
    def from_settings(cls, settings: Settings | CdnSettings, *,
                      seams: Mapping[str, Mapping[str, Any]] | None = None) -> Cdn:
        cdn = _cdn_settings(settings)
        return cls({zone.name: zone_from_settings(zone) for zone in cdn.zones or ()}, cdn, seams=seams)

    def zone(self, name: str) -> Zone:
        try:
            return self.zones[name]
        except KeyError:
            known = ", ".join(self.zones) or "none configured"
            raise CdnInputError(f"unknown CDN zone {name!r} (zones: {known})") from None

    def provider(self, zone_name: str) -> CdnProvider:
        """The zone's provider client, built on first use and kept until ``close``."""
        zone = self.zone(zone_name)
        if zone_name not in self._providers:
            self._providers[zone_name] = build_provider(zone, self.settings, **self._seams.get(zone.provider, {}))
        return self._providers[zone_name]

    def zone_for_url(self, url: str) -> Zone:
        """The zone whose base URL ``url`` is under (the longest base URL wins)."""
        return zone_for_url(self.zones, url)

    def url(self, zone_name: str, key: str, *, signer: Any = None, **transforms: Any) -> str:
        """The public URL of ``key`` in the zone, with transforms (``csl.cdn.urls.object_url``)."""
        from csl.cdn.urls import object_url

        return object_url(self.zone(zone_name), key, transforms, signer=signer)

    def health(self) -> dict[str, dict[str, Any]]:
        """Per zone: reachability, latency and, where the provider has it, the hit ratio; a zone
        whose provider cannot even be built is down with the reason. Never raises."""
        report = {}
        for name, zone in self.zones.items():
            try:
                info = dict(self.provider(name).health(zone))
            except Exception as exc:  # noqa: BLE001 - a health check reports, it never raises
                info = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            info.setdefault("zone", name)
            info.setdefault("provider", zone.provider)
            info.setdefault("base_url", zone.base_url)
            info.setdefault("hit_ratio", None)
            report[name] = info
        return report

    def close(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            try:
                provider.close()
            except Exception as exc:  # noqa: BLE001 - closing one must not keep the others open
                log.warning("closing CDN provider %s failed: %s", getattr(provider, "name", "?"), exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cdn(zones={ {name: zone.base_url for name, zone in self.zones.items()} })"
