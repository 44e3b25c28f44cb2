#!/usr/bin/env bash
# Installs what `make bench` needs, when missing and run as root.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
fi
