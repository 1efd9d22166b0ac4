#!/usr/bin/env bash
# Installs the system packages the local stack needs, only when something is missing:
# PostgreSQL 15 (+ contrib, hypopg), Varnish with varnish-modules (xkey), gcc (Varnish
# compiles its VCL), rclone (the storage benchmark's anchor), Chromium (the report's browser
# test). Debian/apt; as root, or through sudo.
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
