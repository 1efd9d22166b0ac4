vcl 4.1;
# The local caching edge: Varnish + xkey in front of the primary provider's published bucket
# (public-read copies of the approved samples, csl.publication; the bucket of record is private).
# devstack.py renders the {{…}} placeholders. Purges (by URL, by surrogate key, by key prefix, a
# whole zone) are accepted from the purgers ACL only; hotlinks from referers outside the allowed
# hosts get 403. Zones: /audio/, /images/ and /static/ all map onto the published bucket; an
# object's zone (x-zone) follows its Content-Type like csl.cdn.headers.zone_for_content_type.
# Caching follows the object: its own Cache-Control (csl.cdn.headers, stored by the upload and the
# publication copy) is served, and the edge keeps it for Surrogate-Control's max-age
# (x-amz-meta-surrogate-control), else Cache-Control's s-maxage; an object without headers of
# its own gets the edge default ({{EDGE_TTL}} s, CDN_CACHE_TTL).
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
        if (req.http.x-ban-prefix) {
            # "x-ban-prefix: samples/zz/": a key prefix in the published bucket, regex-free but for
            # "[.]" (csl.cdn.varnish escapes "." so); banned on obj.http.x-url, which the lurker can test
            if (req.http.x-ban-prefix !~ "^([A-Za-z0-9/_~%-]|\[\.\])+$") {
                return (synth(400, "Bad ban prefix"));
            }
            # no quotes: ban() would keep them as part of the regex; the prefix has no spaces
            if (std.ban("obj.http.x-url ~ ^/{{BUCKET}}/" + req.http.x-ban-prefix)) {
                return (synth(200, "Banned"));
            }
            return (synth(400, "Ban refused: " + std.ban_error()));
        }
        if (req.http.x-ban-zone) {
            # "x-ban-zone: audio": everything the zone's objects hold
            if (req.http.x-ban-zone !~ "^(audio|images|static)$") {
                return (synth(400, "Bad ban zone"));
            }
            if (std.ban("obj.http.x-zone == " + req.http.x-ban-zone)) {
                return (synth(200, "Banned"));
            }
            return (synth(400, "Ban refused: " + std.ban_error()));
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

# /<zone>/<key> (zones audio, images, static; or /<key>) -> /{{BUCKET}}/<key>; the query string
# (csl.cdn.urls' transforms) is dropped
sub map_url {
    set req.url = regsub(req.url, "\?.*$", "");
    if (req.url ~ "^/(audio|images|static)/.") {
        set req.url = regsub(req.url, "^/(audio|images|static)/", "/{{BUCKET}}/");
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
    # what bans test (the lurker sees obj.*, never req.*): the object's bucket path and its zone
    set beresp.http.x-url = bereq.url;
    if (beresp.http.Content-Type ~ "(?i)^audio/") {
        set beresp.http.x-zone = "audio";
    } elsif (beresp.http.Content-Type ~ "(?i)^image/") {
        set beresp.http.x-zone = "images";
    } else {
        set beresp.http.x-zone = "static";
    }
    if (beresp.status == 200 || beresp.status == 206) {
        # surrogate keys: the object, its folder, and the object's own tags (x-amz-meta-xkey, e.g.
        # "zone:audio"); csl.publication purges "obj:/<bucket>/<key>" when it withdraws or replaces a copy
        set beresp.http.xkey = "obj:" + bereq.url + " dir:" + regsub(bereq.url, "/[^/]*$", "");
        if (beresp.http.x-amz-meta-xkey) {
            set beresp.http.xkey = beresp.http.xkey + " " + beresp.http.x-amz-meta-xkey;
        }
        unset beresp.http.Vary;
        unset beresp.http.Set-Cookie;
        set beresp.grace = 1h;
        if (!beresp.http.Cache-Control) {
            # stored before cache headers were set: the edge default
            set beresp.http.Cache-Control = "public, max-age=86400, s-maxage={{EDGE_TTL}}";
            set beresp.ttl = {{EDGE_TTL}}s;
        } elsif (beresp.http.Cache-Control ~ "(?i)(private|no-store)") {
            set beresp.uncacheable = true;
            set beresp.ttl = 120s;
            return (deliver);
        }
        if (beresp.http.x-amz-meta-surrogate-control ~ "(?i)(^|[ ,])max-age=[0-9]+") {
            set beresp.ttl = std.duration(regsub(beresp.http.x-amz-meta-surrogate-control,
                "(?i)^(.*[ ,])?max-age=([0-9]+).*$", "\2") + "s", {{EDGE_TTL}}s);
        } elsif (beresp.http.Cache-Control ~ "(?i)s-maxage=[0-9]+") {
            set beresp.ttl = std.duration(regsub(beresp.http.Cache-Control,
                "(?i)^.*s-maxage=([0-9]+).*$", "\1") + "s", {{EDGE_TTL}}s);
        }
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
    unset resp.http.x-url;
    unset resp.http.x-zone;
    unset resp.http.x-amz-meta-xkey;
    unset resp.http.x-amz-meta-surrogate-control;
    unset resp.http.x-amz-meta-cdn-cache-control;
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
