#!/usr/bin/env bash
# The import ladder of shared/src and api/src: a module may import only
# modules on lower rungs (or, inside one module directory, its siblings).
# The tables below are the one place to update when a module is added.
# core/ must also stay pure: no I/O crates, no clock reads.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A shared_rung=(
  [core]=0
  [clock]=1 [keyspace]=1 [config]=1 [coalesce]=1
  [storage]=2 [peer]=2 [queue]=2 [mail]=2 [process]=2
  [node]=3
  [work]=4
  [lib]=5
)
declare -A api_rung=(
  [error]=0 [state]=0
  [metrics]=1
  [middleware]=2
  [routes]=3
  [server]=4 [lib]=4 [tests]=5 [main]=5
)

fail=0
check_tree() {
  local root=$1 table=$2
  local -n rung=$table
  while IFS= read -r file; do
    local rel=${file#"$root"/}
    local top=${rel%%/*}
    top=${top%.rs}
    if [[ -z ${rung[$top]+x} ]]; then
      echo "ladder: $file: module '$top' has no rung in $table"; fail=1; continue
    fi
    local mine=${rung[$top]}
    while IFS=: read -r line text; do
      local dep
      for dep in $(grep -oE 'crate::[a-z_]+' <<<"$text" | sed 's/crate:://' | sort -u); do
        [[ $dep == "$top" ]] && continue
        [[ -z ${rung[$dep]+x} ]] && continue   # an item of lib.rs (e.g. secret_eq)
        if (( ${rung[$dep]} >= mine )); then
          echo "ladder: $file:$line: rung $mine module '$top' imports rung ${rung[$dep]} module '$dep'"
          fail=1
        fi
      done
    done < <(grep -nE 'crate::[a-z_]+' "$file" | grep -vE '^[0-9]+:\s*//' || true)
  done < <(find "$root" -name '*.rs' | sort)
}

check_tree shared/src shared_rung
check_tree api/src api_rung

# The core is pure.
if grep -rnE '\b(tokio|redis|reqwest|hyper|axum|apalis|lettre)::|SystemTime|Instant::now|(Utc|Local)::now|\brand::' shared/src/core \
   | grep -vE ':\s*//' ; then
  echo "ladder: shared/src/core must not do I/O or read the clock (see above)"; fail=1
fi

if (( fail )); then exit 1; fi
echo "ladder ok"
