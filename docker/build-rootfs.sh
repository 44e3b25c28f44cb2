#!/usr/bin/env bash
# Builds docker/rootfs.tar: a minimal root filesystem for the FROM-scratch
# image of docker/Dockerfile.local, made only from what this machine has
# (no registry needed): the release api and worker binaries, redis-server
# and redis-cli from Debian, the shared libraries they load (found with
# ldd), and a non-root user.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${KV_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}"
out="$root/docker/rootfs.tar"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install -y redis-server)" >&2; exit 1; }
for b in api worker; do
  [ -x "$bin_dir/$b" ] || { echo "missing $bin_dir/$b: cargo build --release first" >&2; exit 1; }
done

mkdir -p "$stage"/{usr/local/bin,etc,tmp,data}
chmod 1777 "$stage/tmp"
cp "$bin_dir/api" "$bin_dir/worker" "$stage/usr/local/bin/"
cp "$(command -v redis-server)" "$(command -v redis-cli)" "$stage/usr/local/bin/"
strip "$stage/usr/local/bin/api" "$stage/usr/local/bin/worker" 2>/dev/null || true

copy_libs() {
  ldd "$1" | awk '/=>/ {print $3} /^\s*\/lib/ {print $1}' | while read -r lib; do
    [ -n "$lib" ] && [ -e "$lib" ] || continue
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
  done
}
for b in "$stage"/usr/local/bin/*; do copy_libs "$b"; done
# The dynamic loader at its canonical path.
mkdir -p "$stage/lib64"
cp -L /lib64/ld-linux-x86-64.so.2 "$stage/lib64/"

cat > "$stage/etc/passwd" <<'P'
root:x:0:0:root:/root:/sbin/nologin
kv:x:10001:10001:kvstore:/data:/sbin/nologin
P
cat > "$stage/etc/group" <<'G'
root:x:0:
kv:x:10001:
G
echo "hosts: files dns" > "$stage/etc/nsswitch.conf"
chown -R 10001:10001 "$stage/data"

tar -C "$stage" -cf "$out" .
echo "wrote $out ($(du -h "$out" | cut -f1))"
