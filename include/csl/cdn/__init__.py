"""The CDN in front of the published bucket: one client per provider (``CDN_*`` settings).

- ``varnish`` — the local Varnish + xkey edge (dev, test, demo): health, surrogate-key purges

Cloudflare, CloudFront, Azure Front Door and Fastly join here (issue 15) behind the same calls.
"""

from csl.cdn.varnish import VarnishEdge

__all__ = ["VarnishEdge"]
