#!/usr/bin/env bash
# TorchServe 0.12 needs Java 17 or newer. Install it with apt when we are root, else say what to do.
set -euo pipefail
java_major() {
  command -v java >/dev/null 2>&1 || { echo 0; return; }
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}
major=$(java_major)
if [ "${major:-0}" -ge 17 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "java ${major} found, TorchServe needs 17+: installing openjdk-17-jre-headless with apt" >&2
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless
  major=$(java_major)
  [ "${major:-0}" -ge 17 ] && exit 0
fi
echo "TorchServe 0.12 needs Java 17 or newer (found: ${major}). Install it, e.g.:" >&2
echo "  sudo apt-get install openjdk-17-jre-headless" >&2
exit 1
