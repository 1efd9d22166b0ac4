vcl 4.1;
# The local caching edge: Varnish + xkey in front of the primary provider's published bucket
# (public-read copies of the approved samples, csl.publication; the bucket of record is private).
# devstack.py renders the {{…}} placeholders. Purges (by URL or by surrogate key)
# are accepted from loopback only; hotlinks from referers outside the allowed hosts get 403.
# Only published keys are served (csl.storage.PUBLISHED_PREFIXES, checked by a test): the
# quarantine, temporary uploads, health probes and users' generation results get 403 here,
# before the backend is asked (its bucket policy refuses them too).

import xkey;
import std;
import purge;

backend public_bucket {
    .host = "127.0.0.1";
    .port = "{{BACKEND_PORT}}";
    .connect_timeout = 2s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 30s;
    .probe = {
        .url = "/healthz";          # SeaweedFS S3 port: 200 without credentials
        .interval = 2s;
        .timeout = 1s;
        .window = 3;
        .threshold = 2;
        .initial = 2;
    }
}

acl purgers {
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.url == "/__health") {
        return (synth(200, "OK"));
    }

    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (req.http.xkey-purge) {
            # "xkey-purge: tag1 tag2"; "xkey-soft: 1" asks for a soft purge (grace keeps serving)
            if (req.http.xkey-soft) {
                set req.http.n-gone = xkey.softpurge(req.http.xkey-purge);
            } else {
                set req.http.n-gone = xkey.purge(req.http.xkey-purge);
            }
            return (synth(200, "Purged " + req.http.n-gone));
        }
        call map_url;
        return (hash);
    }

    if (req.method != "GET" && req.method != "HEAD") {
        return (synth(405, "Method Not Allowed"));
    }

    # hotlink protection: no Referer is allowed (direct plays); otherwise the host must be ours
    if (req.http.Referer && req.http.Referer !~ "{{REFERER_REGEX}}") {
        return (synth(403, "Hotlinking not allowed"));
    }

    call map_url;
    if (req.http.X-Edge-Bad) {
        return (synth(404, "Not Found"));
    }
    # dot segments, doubled or encoded separators could reach another folder behind the check
    if (req.url !~ "^/{{BUCKET}}/(samples)/[^/]" || req.url ~ "/\.\.?(/|$)" || req.url ~ "//"
            || req.url ~ "(?i)%(2e|2f|5c|00)" || req.url ~ "\\") {
        return (synth(403, "Not published"));
    }
    unset req.http.Cookie;
    unset req.http.Authorization;
    return (hash);
}

# /audio/<key> (or /<key>) -> /{{BUCKET}}/<key>; the query string is dropped
sub map_url {
    set req.url = regsub(req.url, "\?.*$", "");
    if (req.url ~ "^/audio/.") {
        set req.url = regsub(req.url, "^/audio/", "/{{BUCKET}}/");
    } elsif (req.url ~ "^/{{BUCKET}}/") {
        set req.http.X-Edge-Bad = "1";
    } elsif (req.url ~ "^/.") {
        set req.url = "/{{BUCKET}}" + req.url;
    } else {
        set req.http.X-Edge-Bad = "1";
    }
}

sub vcl_hash {
    hash_data(req.url);
    return (lookup);
}

sub vcl_hit {
    if (req.method == "PURGE") {
        set req.http.purged = purge.hard();
        return (synth(200, "Purged " + req.http.purged));
    }
}

sub vcl_miss {
    if (req.method == "PURGE") {
        set req.http.purged = purge.hard();
        return (synth(200, "Purged " + req.http.purged));
    }
}

sub vcl_backend_fetch {
    set bereq.http.Host = "127.0.0.1:{{BACKEND_PORT}}";
    unset bereq.http.Referer;
}

sub vcl_backend_response {
    if (beresp.status == 200 || beresp.status == 206) {
        # surrogate keys: the object, its folder, and any tags stored as x-amz-meta-xkey;
        # csl.publication purges "obj:/<bucket>/<key>" when it withdraws or replaces a copy
        set beresp.http.xkey = "obj:" + bereq.url + " dir:" + regsub(bereq.url, "/[^/]*$", "");
        if (beresp.http.x-amz-meta-xkey) {
            set beresp.http.xkey = beresp.http.xkey + " " + beresp.http.x-amz-meta-xkey;
        }
        unset beresp.http.Vary;
        unset beresp.http.Set-Cookie;
        set beresp.ttl = {{EDGE_TTL}}s;
        set beresp.grace = 1h;
        set beresp.http.Cache-Control = "public, max-age=3600, s-maxage={{EDGE_TTL}}";
        return (deliver);
    }
    if (beresp.status == 404) {
        # tagged too: publishing the key purges the "not found" the edge would otherwise serve
        set beresp.http.xkey = "obj:" + bereq.url;
        set beresp.ttl = 10s;
        unset beresp.http.Vary;
        return (deliver);
    }
    set beresp.uncacheable = true;
    set beresp.ttl = 10s;
    return (deliver);
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
    set resp.http.X-Cache-Hits = obj.hits;
    if (client.ip ~ purgers && resp.http.xkey) {
        set resp.http.X-Xkey = resp.http.xkey;
    }
    unset resp.http.xkey;
    unset resp.http.Seaweed-X-Amz-ETag;
    unset resp.http.Seaweed-X-Amz-Owner;
    unset resp.http.X-Amz-Request-Id;
    unset resp.http.Server;
    unset resp.http.Via;
}

sub vcl_synth {
    if (req.url == "/__health") {
        set resp.http.X-Backend-Healthy = std.healthy(req.backend_hint);
    }
    set resp.http.Content-Type = "text/plain; charset=utf-8";
    set resp.body = resp.reason + {"
"};
    return (deliver);
}
