#!/usr/bin/env bash
# The local cluster: 3 redis-server processes and 3 nodes (api + workers) on
# 127.0.0.1:8001-8003, kept in the foreground by a supervisor.
#
#   run-cluster.sh [run]            start the cluster and supervise it until
#                                   Ctrl-C or SIGTERM, which stop everything
#   run-cluster.sh node-stop NODE   stop NODE's API and workers (its Redis keeps
#                                   running), like `docker compose stop node2`
#   run-cluster.sh node-start NODE  start what of NODE is not running (API,
#                                   workers, and its Redis if that died) with
#                                   the same configuration and data
#   run-cluster.sh node-add         start one more node (next id and ports) and
#                                   join it to the running cluster; waits until
#                                   it holds its share (POST /cluster/members)
#   run-cluster.sh node-remove NODE make NODE leave the cluster (its data moves
#                                   to the others), then stop its API and workers
#   run-cluster.sh status           every process of the running cluster
#   run-cluster.sh preflight        exit 1, saying so, if a cluster runs already
#
# The supervisor: when a process dies on its own, it says which one and how
# (exit status or signal) and keeps the rest serving; nothing is restarted
# behind the operator's back (`node-start` brings a node back). A process
# stopped by `node-stop` is reported as stopped, not as a crash. One
# supervisor per cluster folder: a second `run` finds the lock held and says
# so. node-stop/node-start talk to the running supervisor through a FIFO in
# the cluster folder, and the supervisor alone starts and stops processes.
#
# Environment (all optional):
#   KV_BIN_DIR         where the api/worker binaries are (default
#                      $CARGO_TARGET_DIR/release, else target/release)
#   KV_CLUSTER_DIR     data, logs and the supervisor's state (default .cluster/)
#   KV_NODES           nodes in the cluster (default 3, at most 16): node1..nodeN
#   KV_WORKERS         worker processes per node (default 1; 0 = none)
#   KV_API_BASE_PORT   first API port (default 8001; node i uses base+i-1)
#   KV_REDIS_BASE_PORT first Redis port (default 6381; node i uses base+i-1)
#   KV_FSYNC           Redis appendfsync: everysec (default) or always (see
#                      README, Durability)
#   KV_ENV_FILE        the .env file read first (default ./.env of the repo;
#                      empty: none)
#   REDIS_PASSWORD     password the Redis servers require (default: a random
#                      one, generated once and kept in $KV_CLUSTER_DIR/redis-password)
#   KV_TLS             1: the nodes serve HTTPS and call each other with mutual
#                      TLS (KV_TLS_CLIENT_AUTH, default internal), with a
#                      development CA and node certificates made once by
#                      scripts/gen-certs.sh in $KV_CLUSTER_DIR/tls (default 0)
# The Redis servers listen on 127.0.0.1 only.
# Every other variable (and .env) is passed through to every node, so
# `EMAIL_HOST=... make run` configures all of them.
set -euo pipefail
# The whole script is one block, read before it runs: bash reads a script as
# it goes, and a supervisor that runs for days must not execute a file that
# a `git pull` changed under it.
{

root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${KV_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}"
cluster_dir="${KV_CLUSTER_DIR:-$root/.cluster}"
workers="${KV_WORKERS:-1}"
api_base="${KV_API_BASE_PORT:-8001}"
redis_base="${KV_REDIS_BASE_PORT:-6381}"
fsync="${KV_FSYNC:-everysec}"
env_file="${KV_ENV_FILE-$root/.env}"
node_count="${KV_NODES:-3}"
case "${KV_TLS:-0}" in
  1|on|true|yes) scheme=https ;;
  0|off|false|no|"") scheme=http ;;
  *) echo "KV_TLS must be 0 or 1, got '${KV_TLS}'" >&2; exit 2 ;;
esac
tls_dir="$cluster_dir/tls"
# Bound of KV_NODES: the default ports stay below 8017 and 6397.
NODES_MAX=16

# Bounds of every wait, in tenths of a second.
REDIS_START_WAIT=100   # a Redis answering PING
API_START_WAIT=200     # an API answering /health
STOP_WAIT_S=15         # SIGTERM → SIGKILL (workers finish jobs for 10 s)
CONTROL_WAIT=600       # node-stop / node-start waiting for their effect
CHANGE_WAIT=1200       # node-add / node-remove waiting for the data to move (half-seconds)

lock="$cluster_dir/supervisor.lock"
pidfile="$cluster_dir/supervisor.pid"
control="$cluster_dir/control"
# The running supervisor's ports and workers, so node-stop/node-start/status
# need only the same KV_CLUSTER_DIR, not the same environment.
ports="$cluster_dir/supervisor.ports"

die() { echo "$*" >&2; exit 1; }
# Every HTTP call of this script: over TLS, trusting the cluster's CA.
curl() {
  if [ "$scheme" = https ]; then command curl --cacert "$tls_dir/ca.pem" "$@"; else command curl "$@"; fi
}

for v in workers api_base redis_base; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "KV_${v^^} must be a number, got '${!v}'"
done
# The node ids node1..nodeN (N from KV_NODES, or from the running supervisor).
set_nodes() {
  [[ $node_count =~ ^[0-9]+$ ]] && [ "$node_count" -ge 1 ] && [ "$node_count" -le "$NODES_MAX" ] \
    || die "KV_NODES must be a number from 1 to $NODES_MAX, got '$node_count'"
  nodes=()
  local i
  for ((i = 1; i <= node_count; i++)); do nodes+=("node$i"); done
}
set_nodes
case "$fsync" in
  always|everysec) ;;
  *) echo "KV_FSYNC must be always or everysec, got '$fsync'" >&2; exit 2 ;;
esac

api_port() { echo $((api_base + $1)); }
redis_port() { echo $((redis_base + $1)); }
node_index() {
  local i
  for i in "${!nodes[@]}"; do [ "${nodes[$i]}" = "$1" ] && { echo "$i"; return 0; }; done
  return 1
}

# Whether the lock is held by a running supervisor (the lock file is kept;
# flock on it is what counts, so a SIGKILLed supervisor leaves no stale lock).
supervisor_running() {
  [ -e "$lock" ] || return 1
  ! flock -n "$lock" true 2>/dev/null
}

already_running() {
  local pid; pid="$(cat "$pidfile" 2>/dev/null || echo '?')"
  echo "a local cluster is already running (supervisor pid $pid, folder $cluster_dir)." >&2
  echo "  stop it: Ctrl-C in its terminal, or kill $pid" >&2
  echo "  one node: make node-stop NODE=node2 / make node-start NODE=node2; make status" >&2
  exit 1
}

# ---- node-stop / node-start / status: clients of the running supervisor ----

# The running cluster's ports and worker count, as its supervisor wrote them.
read_ports() {
  if [ -r "$ports" ]; then
    read -r api_base redis_base workers node_count ports_scheme <"$ports"
    node_count="${node_count:-3}"
    scheme="${ports_scheme:-http}"
    set_nodes
  fi
  return 0
}

# Sends one line to the supervisor's FIFO (bounded: a supervisor that died
# between the check and the write leaves no reader, and open would block).
send_control() {
  supervisor_running || die "no local cluster is running in $cluster_dir (start one with make run)"
  timeout 5 bash -c 'printf "%s\n" "$1" >"$2"' _ "$1" "$control" \
    || die "the supervisor did not take the request (is it stuck? see its terminal)"
}

# Node NODE's processes other than Redis that have a pid file, one per line.
node_pidfiles() {
  local f
  for f in "$cluster_dir/$1"/api.pid "$cluster_dir/$1"/worker-*.pid; do
    [ -e "$f" ] && echo "$f"
  done
  return 0
}

client() {
  local cmd=$1 node=${2:-}
  # The running cluster's nodes and ports, not this shell's KV_NODES.
  read_ports
  [ -n "$node" ] || die "usage: $0 $cmd NODE (one of ${nodes[*]})"
  local i; i="$(node_index "$node")" || die "unknown node '$node' (one of ${nodes[*]})"
  send_control "$cmd $node"
  local n
  if [ "$cmd" = stop ]; then
    for ((n = 0; n < CONTROL_WAIT; n++)); do
      [ -z "$(node_pidfiles "$node")" ] && { echo "$node stopped (API and workers; its Redis keeps running on port $(redis_port "$i"))"; return 0; }
      sleep 0.1
    done
    die "$node did not stop within $((CONTROL_WAIT / 10)) s; see the supervisor's terminal"
  fi
  local url; url="$scheme://127.0.0.1:$(api_port "$i")"
  for ((n = 0; n < CONTROL_WAIT; n++)); do
    if [ -e "$cluster_dir/$node/api.pid" ] && curl -fsS -m 1 "$url/health" >/dev/null 2>&1; then
      echo "$node started: $url (workers: $workers); it restores itself from its peers"
      return 0
    fi
    sleep 0.1
  done
  die "$node did not answer $url/health within $((CONTROL_WAIT / 10)) s; see $cluster_dir/$node/api.log"
}

# The cluster secret the nodes were started with (KV_CLUSTER_SECRET, from
# the environment or the .env file), for membership requests.
cluster_secret() {
  local secret="${KV_CLUSTER_SECRET:-}"
  if [ -z "$secret" ] && [ -n "$env_file" ] && [ -f "$env_file" ]; then
    secret="$(sed -n 's/^KV_CLUSTER_SECRET=//p' "$env_file" | tail -n 1 | tr -d '"'"'"'')"
  fi
  echo "${secret:-kv-dev-cluster-secret}"
}

# A running node that is a member, other than $1: its URL.
member_url() {
  local i url
  for i in "${!nodes[@]}"; do
    [ "${nodes[$i]}" = "${1:-}" ] && continue
    url="$scheme://127.0.0.1:$(api_port "$i")"
    curl -fsS -m 2 "$url/health" 2>/dev/null | grep -q '"member":true' && { echo "$url"; return 0; }
  done
  return 1
}

# Waits (bounded) until the change driven by $1 is done; says how it went.
wait_change() {
  local url=$1 n body
  for ((n = 0; n < CHANGE_WAIT; n++)); do
    body="$(curl -fsS -m 2 "$url/cluster/members" 2>/dev/null || true)"
    if grep -q '"state":"done"' <<<"$body"; then echo "done: $body"; return 0; fi
    grep -q '"state":"abandoned"' <<<"$body" && die "the change was abandoned: $body"
    sleep 0.5
  done
  die "the change did not finish within $((CHANGE_WAIT / 2)) s; see GET $url/cluster/members"
}

membership() {
  local cmd=$1 node=${2:-} url secret
  read_ports
  supervisor_running || die "no local cluster is running in $cluster_dir (start one with make run)"
  secret="$(cluster_secret)"
  if [ "$cmd" = add ]; then
    local before=$node_count n
    send_control "add -"
    for ((n = 0; n < CONTROL_WAIT; n++)); do
      read_ports
      (( node_count > before )) && break
      sleep 0.1
    done
    (( node_count > before )) || die "the supervisor did not start a new node; see its terminal"
    local i=$((node_count - 1)); node="${nodes[$i]}"
    local new_url="$scheme://127.0.0.1:$(api_port "$i")"
    for ((n = 0; n < CONTROL_WAIT; n++)); do
      curl -fsS -m 1 "$new_url/health" >/dev/null 2>&1 && break
      sleep 0.1
    done
    url="$(member_url "$node")" || die "no member of the cluster answers"
    echo "$node started at $new_url; joining it through $url"
    curl -fsS -m 10 -X POST -H "x-kv-cluster-secret: $secret" -H 'content-type: application/json' \
      -d "{\"id\":\"$node\",\"url\":\"$new_url\"}" "$url/cluster/members" >/dev/null \
      || die "the join was refused: curl -X POST $url/cluster/members (see its answer)"
    wait_change "$url"
    return 0
  fi
  [ -n "$node" ] || die "usage: $0 node-remove NODE (one of ${nodes[*]})"
  node_index "$node" >/dev/null || die "unknown node '$node' (one of ${nodes[*]})"
  url="$(member_url "$node")" || die "no other member of the cluster answers"
  echo "$node leaves the cluster through $url"
  curl -fsS -m 10 -X DELETE -H "x-kv-cluster-secret: $secret" "$url/cluster/members/$node" >/dev/null \
    || die "the leave was refused: curl -X DELETE $url/cluster/members/$node (see its answer)"
  wait_change "$url"
  client stop "$node"
}

status() {
  supervisor_running || { echo "no local cluster is running in $cluster_dir"; return 1; }
  read_ports
  echo "supervisor pid $(cat "$pidfile" 2>/dev/null || echo '?'), folder $cluster_dir"
  local i f pid
  for i in "${!nodes[@]}"; do
    printf '  %s  %s://127.0.0.1:%s  redis %s\n' "${nodes[$i]}" "$scheme" "$(api_port "$i")" "$(redis_port "$i")"
    for f in "$cluster_dir/${nodes[$i]}"/*.pid; do
      [ -e "$f" ] || continue
      pid="$(cat "$f")"
      printf '    %-10s pid %s\n' "$(basename "$f" .pid)" "$pid"
    done
  done
}

case "${1:-run}" in
  run) ;;
  preflight) supervisor_running && already_running; exit 0 ;;
  node-stop) client stop "${2:-}"; exit ;;
  node-start) client start "${2:-}"; exit ;;
  node-add) membership add; exit ;;
  node-remove) membership remove "${2:-}"; exit ;;
  status) status; exit ;;
  *) die "usage: $0 [run | node-stop NODE | node-start NODE | node-add | node-remove NODE | status | preflight]" ;;
esac

# ---- run: the supervisor ----------------------------------------------------

mkdir -p "$cluster_dir"
exec 9>>"$lock"
flock -n 9 || already_running
echo $$ >"$pidfile"

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
  [ -x "$bin_dir/$b" ] || die "missing $bin_dir/$b: run cargo build --release first"
done

# Processes of an earlier supervisor that was killed without cleaning up.
leftovers=()
for f in "$cluster_dir"/node*/*.pid; do
  [ -e "$f" ] || continue
  pid="$(cat "$f")"
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
     && grep -qaE '(api|worker|redis-server)' "/proc/$pid/cmdline" 2>/dev/null; then
    leftovers+=("$pid")
  else
    rm -f "$f"
  fi
done
[ ${#leftovers[@]} -eq 0 ] || die "processes of an earlier cluster still run (its supervisor was killed): kill ${leftovers[*]}"

# Ports taken by something else.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for i in "${!nodes[@]}"; do
  for p in "$(api_port "$i")" "$(redis_port "$i")"; do
    port_open "$p" && die "port $p on 127.0.0.1 is in use by another program (KV_API_BASE_PORT / KV_REDIS_BASE_PORT move the cluster)"
  done
done

if [ -n "$env_file" ] && [ -f "$env_file" ]; then
  set -a
  # shellcheck source=/dev/null
  . "$env_file"
  set +a
fi

# Nodes beyond the first ones were added to a running cluster (they join).
first_count=$node_count
peers=""
for i in "${!nodes[@]}"; do peers+="${peers:+,}${nodes[$i]}=$scheme://127.0.0.1:$(api_port "$i")"; done

pwfile="$cluster_dir/redis-password"
if [ -z "${REDIS_PASSWORD:-}" ]; then
  if [ ! -s "$pwfile" ]; then
    (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$pwfile")
  fi
  REDIS_PASSWORD="$(cat "$pwfile")"
fi
# Passed to redis-server in a config file on stdin, so it is not in `ps`.
export REDISCLI_AUTH="$REDIS_PASSWORD"

echo "$api_base $redis_base $workers $node_count $scheme" >"$ports"
rm -f "$control"
mkfifo -m 600 "$control"
# Read and write, so the supervisor never blocks opening it and never sees
# end-of-file when a client closes it.
exec 3<>"$control"
# The supervisor's own stderr, for messages written while bash's job
# notices ("… Killed …") are sent to /dev/null.
exec 4>&2

# A closed stdout (`make run | tee log`, and tee got the Ctrl-C too) must
# not stop the supervisor halfway through stopping the cluster.
trap '' PIPE
say() { echo "[cluster $(date +%H:%M:%S)] $*" >&4 2>/dev/null || true; }

# The process table: "node/role" ↔ pid. role = redis, api, worker-N.
declare -A pid_of=()    # node/role → pid
declare -A name_of=()   # pid → node/role
declare -A stop_by=()   # pid → second (of $SECONDS) by which it must be gone
declare -A starting=()  # node → 1 while a node-start waits for its processes to end

# Starts one process of node i in the background and records it. Its stdin
# is the caller's (0<&0: bash would give it /dev/null); fds 3, 4 and 9
# (FIFO, stderr copy, lock) are not passed on, so a leftover child never
# holds the lock; SIGPIPE is its own business again (exec keeps the pid).
spawn() {
  local i=$1 role=$2; shift 2
  local node="${nodes[$i]}"
  ( trap - PIPE; exec "$@" ) 0<&0 3<&- 4>&- 9>&- &
  local pid=$!
  pid_of["$node/$role"]=$pid
  name_of[$pid]="$node/$role"
  echo "$pid" >"$cluster_dir/$node/$role.pid"
}

running() { [ -n "${pid_of[$1]:-}" ]; }

start_redis() {
  local i=$1; local node="${nodes[$i]}" rport; rport="$(redis_port "$i")"
  local dir="$cluster_dir/$node"
  mkdir -p "$dir/redis"
  # The password reaches redis-server as a config file on stdin, not in argv.
  spawn "$i" redis redis-server - --port "$rport" --bind 127.0.0.1 --protected-mode yes \
    --dir "$dir/redis" --appendonly yes --appendfsync "$fsync" --save "" --daemonize no \
    --logfile "$dir/redis.log" <<<"requirepass $REDIS_PASSWORD" >/dev/null
}

wait_redis() {
  local rport; rport="$(redis_port "$1")"
  local n
  for ((n = 0; n < REDIS_START_WAIT; n++)); do
    (( stop_requested )) && return 1
    redis-cli -p "$rport" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "redis of ${nodes[$1]} on port $rport did not answer PING; see $cluster_dir/${nodes[$1]}/redis.log"
  return 1
}

node_env() {
  local i=$1
  node_cmd=(env -u REDIS_URL KV_NODE_ID="${nodes[$i]}" KV_PEERS="$peers" REDIS_HOST=127.0.0.1
    REDIS_PORT="$(redis_port "$i")" REDIS_PASSWORD="$REDIS_PASSWORD")
  # A node added to the running cluster starts outside it and joins
  # (after a restart it resumes the topology its Redis keeps).
  if (( i >= first_count )); then
    node_cmd+=(KV_JOIN=1 KV_PEERS="$peers,${nodes[$i]}=$scheme://127.0.0.1:$(api_port "$i")")
  fi
  if [ "$scheme" = https ]; then
    local node="${nodes[$i]}"
    [ -f "$tls_dir/$node.pem" ] || "$root/scripts/gen-certs.sh" "$tls_dir" "$node:127.0.0.1,localhost" \
      || say "cannot make the certificate of $node (is openssl installed?)"
    node_cmd+=(KV_TLS_CERT="$tls_dir/$node.pem" KV_TLS_KEY="$tls_dir/$node.key" KV_TLS_CA="$tls_dir/ca.pem"
      KV_TLS_CLIENT_AUTH="${KV_TLS_CLIENT_AUTH:-internal}")
  fi
}

# One more node (node_count+1) on the next ports, started to join.
add_node() {
  (( node_count < NODES_MAX )) || { say "node-add: at most $NODES_MAX nodes"; return; }
  local i=$node_count
  local p
  for p in "$(api_port "$i")" "$(redis_port "$i")"; do
    port_open "$p" && { say "node-add: port $p is in use by another program"; return; }
  done
  node_count=$((node_count + 1))
  set_nodes
  echo "$api_base $redis_base $workers $node_count $scheme" >"$ports"
  say "node-add: starting ${nodes[$i]} on $scheme://127.0.0.1:$(api_port "$i") (it joins the cluster)"
  start_node "$i" || say "node-add: ${nodes[$i]} did not start"
}

start_api() {
  local i=$1; local node="${nodes[$i]}"
  node_env "$i"
  spawn "$i" api "${node_cmd[@]}" KV_LISTEN="127.0.0.1:$(api_port "$i")" "$bin_dir/api" \
    </dev/null >>"$cluster_dir/$node/api.log" 2>&1
}

start_worker() {
  local i=$1 w=$2; local node="${nodes[$i]}"
  node_env "$i"
  spawn "$i" "worker-$w" "${node_cmd[@]}" KV_WORKER_NAME="$node-w$w" "$bin_dir/worker" \
    </dev/null >>"$cluster_dir/$node/worker-$w.log" 2>&1
}

# Starts whatever of node i is not running: its Redis (waiting for PING),
# its API and its workers.
start_node() {
  local i=$1; local node="${nodes[$i]}" w
  mkdir -p "$cluster_dir/$node"
  if ! running "$node/redis"; then
    start_redis "$i"
    wait_redis "$i" || return 1
  fi
  running "$node/api" || start_api "$i"
  for ((w = 1; w <= workers; w++)); do
    running "$node/worker-$w" || start_worker "$i" "$w"
  done
}

# Asks the given processes to stop (SIGTERM) and gives them STOP_WAIT_S
# before SIGKILL; `reap` reports each as stopped when it is gone.
request_stop() {
  local key pid
  for key in "$@"; do
    pid="${pid_of[$key]:-}"
    [ -n "$pid" ] || continue
    [ -n "${stop_by[$pid]:-}" ] && continue
    stop_by[$pid]=$((SECONDS + STOP_WAIT_S))
    kill -TERM "$pid" 2>/dev/null || true
  done
}

node_roles() {  # node's API and workers, as node/role keys that are running
  local key
  for key in "${!pid_of[@]}"; do
    [[ $key == "$1/api" || $key == "$1"/worker-* ]] && echo "$key"
  done
  return 0
}

describe_status() {
  local st=$1
  if (( st > 128 )); then
    echo "killed by SIG$(kill -l $((st - 128)) 2>/dev/null || echo "$((st - 128))") (status $st)"
  else
    echo "exit status $st"
  fi
}

# Notices every tracked process that ended, says which and how, and forgets
# it; sends SIGKILL to a stopping process past its deadline.
reap() {
  local pid key st
  for pid in "${!name_of[@]}"; do
    key="${name_of[$pid]}"
    if kill -0 "$pid" 2>/dev/null; then
      if [ -n "${stop_by[$pid]:-}" ] && (( SECONDS >= stop_by[$pid] )); then
        say "$key (pid $pid) still running ${STOP_WAIT_S} s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        stop_by[$pid]=$((SECONDS + 3600))
      fi
      continue
    fi
    st=0; wait "$pid" || st=$?
    # Ctrl-C in a terminal reaches every process of the group at once, so
    # they may end before the supervisor acts on its own SIGINT.
    if [ -n "${stop_by[$pid]:-}" ] || (( stop_requested )); then
      say "$key (pid $pid) stopped ($(describe_status "$st"))"
    else
      say "$key (pid $pid) died: $(describe_status "$st"); the rest of the cluster keeps serving. Bring it back: make node-start NODE=${key%%/*} (log: $cluster_dir/${key%%/*}/${key#*/}.log)"
    fi
    unset 'name_of[$pid]' 'stop_by[$pid]' 'pid_of[$key]'
    rm -f "$cluster_dir/$key.pid"
  done
}

# One request from the FIFO: "stop NODE" or "start NODE".
handle() {
  local cmd=$1 node=${2:-} i
  [ "$cmd" = add ] && { add_node; return; }
  i="$(node_index "$node")" || { say "ignored request '$cmd $node': unknown node"; return; }
  case "$cmd" in
    stop)
      unset 'starting[$node]'
      local keys; mapfile -t keys < <(node_roles "$node")
      say "node-stop $node: stopping ${keys[*]:-nothing (not running)}; its Redis keeps running"
      request_stop "${keys[@]}"
      ;;
    start)
      starting[$node]=1
      ;;
    add) add_node ;;
    *) say "ignored request '$cmd $node'" ;;
  esac
}

# Starts the nodes asked for once none of their processes is still stopping.
start_pending() {
  local node key busy
  for node in "${!starting[@]}"; do
    busy=0
    for key in $(node_roles "$node"); do
      [ -n "${stop_by[${pid_of[$key]}]:-}" ] && busy=1
    done
    (( busy )) && continue
    unset 'starting[$node]'
    say "node-start $node: starting what is not running"
    start_node "$(node_index "$node")" || say "node-start $node failed"
  done
}

shutdown() {
  # A second Ctrl-C does not wait.
  trap 'say "second interrupt: SIGKILL to every process"; for p in "${!name_of[@]}"; do kill -KILL "$p" 2>/dev/null; done; exit 1' INT TERM
  say "stopping cluster..."
  local key pid
  # Every process ends now on purpose (Ctrl-C in a terminal also reaches
  # them directly): none is reported as a crash.
  for pid in "${!name_of[@]}"; do stop_by[$pid]=$((SECONDS + 2 * STOP_WAIT_S)); done
  # The APIs and workers first, then the Redis servers they write to.
  for key in "${!pid_of[@]}"; do
    [[ $key == */redis ]] && continue
    stop_by[${pid_of[$key]}]=$((SECONDS + STOP_WAIT_S))
    kill -TERM "${pid_of[$key]}" 2>/dev/null || true
  done
  while [ -n "$(for pid in "${!name_of[@]}"; do [[ ${name_of[$pid]} == */redis ]] || echo x; done)" ]; do
    reap 2>/dev/null; sleep 0.1
  done
  for key in "${!pid_of[@]}"; do
    stop_by[${pid_of[$key]}]=$((SECONDS + STOP_WAIT_S))
    kill -TERM "${pid_of[$key]}" 2>/dev/null || true
  done
  while [ ${#name_of[@]} -gt 0 ]; do reap 2>/dev/null; sleep 0.1; done
  rm -f "$control" "$pidfile" "$ports"
  say "cluster stopped"
  exit 0
}
# A signal only sets a flag: the loop below stops the cluster between two
# steps, never in the middle of starting or reaping a process.
stop_requested=0
trap 'stop_requested=1' INT TERM
# A failing command of the supervisor itself must not leave the cluster behind.
on_exit() {
  local rc=$1
  [ "$rc" -ne 0 ] || return 0
  say "supervisor error (status $rc): stopping every process"
  local p
  for p in "${!name_of[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap 'on_exit $?' EXIT

for i in "${!nodes[@]}"; do
  mkdir -p "$cluster_dir/${nodes[$i]}"
  start_redis "$i"
done
for i in "${!nodes[@]}"; do wait_redis "$i" || break; done
for i in "${!nodes[@]}"; do (( stop_requested )) || start_node "$i" || true; done

for i in "${!nodes[@]}"; do
  url="$scheme://127.0.0.1:$(api_port "$i")"
  for ((n = 0; n < API_START_WAIT; n++)); do
    (( stop_requested )) && break
    curl -fsS -m 1 "$url/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS -m 1 "$url/health" >/dev/null 2>&1 || say "${nodes[$i]} does not answer $url/health yet; see $cluster_dir/${nodes[$i]}/api.log"
done

(( stop_requested )) && shutdown
kvctl="$bin_dir/kvctl"
[ -x "$kvctl" ] || kvctl=kvctl
url1="$scheme://127.0.0.1:$(api_port 0)"
{
  echo "cluster up (logs and data in $cluster_dir):"
  for i in "${!nodes[@]}"; do
    echo "  ${nodes[$i]}: $scheme://127.0.0.1:$(api_port "$i")  redis 127.0.0.1:$(redis_port "$i")  workers: $workers"
  done
  echo "redis password: in $pwfile (redis-cli -p $redis_base --askpass, or REDISCLI_AUTH=...)"
  echo
  echo "kvctl, the command-line client (--url or KV_URL picks the node; kvctl --help):"
  [ "$url1" = http://127.0.0.1:8001 ] || echo "  export KV_URL=$url1"
  if [ "$scheme" = https ]; then echo "  export KV_CA_CERT=$tls_dir/ca.pem    # the cluster's CA (TLS)"; fi
  echo "  $kvctl put username123 mci_admin --string"
  echo "  $kvctl get username123"
  echo "  $kvctl get username123 --url $scheme://127.0.0.1:$(api_port 1)"
  echo "  $kvctl cluster"
  echo "  $kvctl route crash_test"
  echo "one node down and back (seed scenario III), from another shell:"
  echo "  make node-stop NODE=node2     # its API and workers stop; its Redis keeps running"
  echo "  make node-start NODE=node2    # it comes back with the same data and restores itself"
  echo "  make status"
  echo "Ctrl-C stops everything. A process that dies is reported here; the rest keep serving."
} >&4 2>/dev/null || true

# The loop: wake on a request (or every 0.2 s), notice ended processes,
# act on requests. Job notices of bash go to /dev/null (we say it better).
# A read that times out keeps what it had read of a line (bash saves partial
# input), so a request arriving at the moment of the timeout is not cut.
partial=""
while :; do
  (( stop_requested )) && shutdown
  line=""
  if read -r -t 0.2 -u 3 line 2>/dev/null; then
    (( stop_requested )) && shutdown
    read -r cmd node _ <<<"$partial$line" || true
    partial=""
    handle "${cmd:-}" "${node:-}"
  else
    (( stop_requested )) && shutdown
    partial+="$line"
  fi
  reap 2>/dev/null
  start_pending
done
exit
}
