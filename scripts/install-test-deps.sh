#!/bin/sh
# Debian packages the tests need: GStreamer's RTSP server (tests/rtsp_server.py, run with the system
# /usr/bin/python3 where `gi` lives), redis-server and openssl. Idempotent and quiet: when everything is
# installed it only asks dpkg-query and exits 0; otherwise it runs apt-get (as root, or through sudo).
set -eu

PACKAGES="gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
redis-server openssl"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-test-deps: missing Debian packages:$missing (run as root or install sudo)" >&2
    exit 1
fi

echo "install-test-deps: installing$missing" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# the package lists may be absent on a fresh image, or stale: refresh them once before installing;
# apt's chatter goes to a log that is shown only when something fails
# shellcheck disable=SC2086  # word splitting of the package list is intended
if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-test-deps: apt-get failed" >&2
    exit 1
fi
