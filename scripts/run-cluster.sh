#!/usr/bin/env bash
# Starts a whole local cluster in the foreground: 3 redis-server processes and
# 3 nodes (api + workers) on 127.0.0.1:8001-8003. Ctrl-C or SIGTERM stops all.
#
# Environment (all optional):
#   KV_BIN_DIR         where the api/worker binaries are (default target/release)
#   KV_CLUSTER_DIR     data and logs (default .cluster/)
#   KV_WORKERS         worker processes per node (default 1; 0 = none)
#   KV_REDIS_BASE_PORT first Redis port (default 6381; node i uses base+i-1)
#   KV_FSYNC           Redis appendfsync: everysec (default) or always (see
#                      README, Durability)
#   REDIS_PASSWORD     password the Redis servers require (default: a random
#                      one, generated once and kept in $KV_CLUSTER_DIR/redis-password)
# The Redis servers listen on 127.0.0.1 only.
# Every other variable (and .env) is passed through to every node, so
# `EMAIL_HOST=... make run` configures all of them.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${KV_BIN_DIR:-$root/target/release}"
cluster_dir="${KV_CLUSTER_DIR:-$root/.cluster}"
workers="${KV_WORKERS:-1}"
redis_base="${KV_REDIS_BASE_PORT:-6381}"
fsync="${KV_FSYNC:-everysec}"
case "$fsync" in
  always|everysec) ;;
  *) echo "KV_FSYNC must be always or everysec, got '$fsync'" >&2; exit 2 ;;
esac
nodes=(node1 node2 node3)
api_ports=(8001 8002 8003)

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server is not installed. On Debian/Ubuntu: apt-get install -y redis-server" >&2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "running as root: installing it now" >&2
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else
    exit 1
  fi
fi
for b in api worker; do
  [ -x "$bin_dir/$b" ] || { echo "missing $bin_dir/$b: run cargo build --release first" >&2; exit 1; }
done

if [ -f "$root/.env" ]; then
  set -a; . "$root/.env"; set +a
fi

peers=""
for i in 0 1 2; do peers+="${peers:+,}${nodes[$i]}=http://127.0.0.1:${api_ports[$i]}"; done

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "stopping cluster..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "cluster stopped"
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

mkdir -p "$cluster_dir"
pwfile="$cluster_dir/redis-password"
if [ -z "${REDIS_PASSWORD:-}" ]; then
  if [ ! -s "$pwfile" ]; then
    (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$pwfile")
  fi
  REDIS_PASSWORD="$(cat "$pwfile")"
fi
# Passed to redis-server in a config file on stdin, so it is not in `ps`.
export REDISCLI_AUTH="$REDIS_PASSWORD"
for i in 0 1 2; do
  node="${nodes[$i]}"; rport=$((redis_base + i)); dir="$cluster_dir/$node"
  mkdir -p "$dir/redis"
  printf 'requirepass %s\n' "$REDIS_PASSWORD" | redis-server - --port "$rport" --bind 127.0.0.1 \
    --protected-mode yes --dir "$dir/redis" --appendonly yes \
    --appendfsync "$fsync" --save "" --daemonize no --logfile "$dir/redis.log" >/dev/null &
  pids+=($!)
done
for i in 0 1 2; do
  rport=$((redis_base + i))
  for _ in $(seq 100); do
    redis-cli -p "$rport" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$rport" ping >/dev/null 2>&1 || { echo "redis on port $rport did not start; see $cluster_dir" >&2; exit 1; }
done

for i in 0 1 2; do
  node="${nodes[$i]}"; rport=$((redis_base + i)); dir="$cluster_dir/$node"
  common=(env -u REDIS_URL KV_NODE_ID="$node" KV_PEERS="$peers" REDIS_HOST=127.0.0.1 REDIS_PORT="$rport"
    REDIS_PASSWORD="$REDIS_PASSWORD")
  "${common[@]}" KV_LISTEN="127.0.0.1:${api_ports[$i]}" "$bin_dir/api" >>"$dir/api.log" 2>&1 &
  pids+=($!)
  for w in $(seq 1 "$workers"); do
    [ "$workers" -gt 0 ] || break
    "${common[@]}" KV_WORKER_NAME="$node-w$w" "$bin_dir/worker" >>"$dir/worker-$w.log" 2>&1 &
    pids+=($!)
  done
done

for i in 0 1 2; do
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:${api_ports[$i]}/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

echo "cluster up (logs and data in $cluster_dir):"
for i in 0 1 2; do
  echo "  ${nodes[$i]}: http://127.0.0.1:${api_ports[$i]}  redis 127.0.0.1:$((redis_base + i))  workers: $workers"
done
echo "redis password: in $pwfile (redis-cli -p $redis_base --askpass, or REDISCLI_AUTH=...)"
echo "try: curl -s -XPOST localhost:8001/kv/ -H 'content-type: application/json' -d '{\"key\":\"username123\",\"value\":\"mci_admin\"}'"
echo "Ctrl-C stops everything."
# Exit (and clean up) as soon as any process dies, or on a signal.
wait -n "${pids[@]}" || true
echo "a cluster process exited; see logs in $cluster_dir" >&2
