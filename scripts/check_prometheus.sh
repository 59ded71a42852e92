#!/usr/bin/env bash
# The many-replicas test runs a real Prometheus. Install it with apt when we are root (Debian's
# package; its service is not started), else say what to do. Only `make test` needs it.
set -euo pipefail
command -v prometheus >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "prometheus not found: installing it with apt (for the many-replicas drift test)" >&2
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends prometheus
  command -v prometheus >/dev/null 2>&1 && exit 0
fi
echo "The many-replicas drift test needs Prometheus (2.x). Install it, e.g.:" >&2
echo "  sudo apt-get install --no-install-recommends prometheus" >&2
exit 1
