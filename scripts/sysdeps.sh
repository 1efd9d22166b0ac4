#!/usr/bin/env bash
# Installs the system packages the local stack needs, only when something is missing:
# PostgreSQL 15 (+ contrib, hypopg), Varnish with varnish-modules (xkey), gcc (Varnish
# compiles its VCL), rclone (the storage benchmark's anchor), Chromium (the report's browser
# test), Prometheus and its exporters, collectd (monitoring), Redis (the Celery broker). Debian/apt; as root, or through sudo.
# Debian's prometheus and exporter packages enable systemd units; where systemd runs, stop them
# (`systemctl disable --now prometheus prometheus-postgres-exporter prometheus-varnish-exporter`):
# the stack starts its own, on loopback and its own ports.
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15 postgresql-client-15)
[ -f /usr/share/postgresql/15/extension/pg_stat_statements.control ] || need+=(postgresql-contrib)
[ -f /usr/share/postgresql/15/extension/hypopg.control ] || need+=(postgresql-15-hypopg)
command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || need+=(varnish)
compgen -G "/usr/lib/*/varnish/vmods/libvmod_xkey.so" >/dev/null || need+=(varnish-modules)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v rclone >/dev/null 2>&1 || need+=(rclone)
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-liberation)
# monitoring (devstack up --monitoring; the monitoring tests): Prometheus 2.42 with promtool, the
# postgres and Varnish exporters, collectd's statsd + write_prometheus plugins (the StatsD bridge)
# and the two libraries write_prometheus loads (collectd-core does not pull them in)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || need+=(prometheus-postgres-exporter)
command -v prometheus-varnish-exporter >/dev/null 2>&1 || need+=(prometheus-varnish-exporter)
[ -f /usr/lib/collectd/statsd.so ] && [ -f /usr/lib/collectd/write_prometheus.so ] || need+=(collectd-core)
compgen -G "/usr/lib/*/libprotobuf-c.so.1" >/dev/null || need+=(libprotobuf-c1)
compgen -G "/usr/lib/*/libmicrohttpd.so.12" >/dev/null || need+=(libmicrohttpd12)
# scale-out (devstack up --celery; make demo-celery; the Celery tests): Redis as the broker, its exporter
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v prometheus-redis-exporter >/dev/null 2>&1 || need+=(prometheus-redis-exporter)

if ((${#need[@]} == 0)); then
    exit 0
fi
echo "[sysdeps] installing: ${need[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "[sysdeps] need root (or sudo) to install: ${need[*]}" >&2; exit 1; }
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "[sysdeps] done"
