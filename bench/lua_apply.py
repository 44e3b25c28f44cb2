#!/usr/bin/env python3
"""Time the data apply script (shared/src/storage/scripts.rs) on its own.

Starts a private redis-server (no persistence) on a free loopback port,
loads NEWER + TREE + APPLY_DATA as the store does, applies 20,000 records
in calls of 8 (new keys), then the same keys again with newer versions
(overwrites), and prints Redis' own time per record (INFO commandstats,
so client and network time are left out) and a digest of the hash tree
it left (a variant computing another tree is wrong). Variants take the
store's argument layout (key, record, leaf field, digest per record). Extra arguments are files with
variants of the whole script to time beside it, in the same run, so
figures compare side by side.

Needs: redis-server on PATH and the Python `redis` package
(`pip install redis`). Usage: bench/lua_apply.py [variant.lua ...]
"""
import os
import hashlib
import re
import socket
import subprocess
import sys
import time

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = open(os.path.join(ROOT, "shared/src/storage/scripts.rs")).read()


def const(name):
    return re.search(r'const %s: &str = r#"(.*?)"#;' % name, SRC, re.S).group(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    entry_len = re.search(r"CHANGE_LOG_ENTRY_LEN_MAX: usize = (\d+);", SRC).group(1)
    prelude = "local ENTRY_LEN_MAX = %s\n" % entry_len
    variants = {"scripts.rs": prelude + const("NEWER") + const("TREE") + const("APPLY_DATA")}
    for path in sys.argv[1:]:
        variants[os.path.basename(path)] = open(path).read()
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        per_call, records = 8, 20_000
        for name, text in variants.items():
            r.flushall()
            r.config_resetstat()
            sha = r.script_load(text)
            total = 0
            for round_ in range(2):  # new keys, then overwrites
                for first in range(0, records, per_call):
                    keys = ["kv:n1:tree", "kv:n1:count", "kv:n1:tombs", "kv:n1:leaves", "kv:n1:keys", "kv:n1:changes", "kv:n1:changes:seq"]
                    argv = ["100000"]
                    for i in range(first, first + per_call):
                        key = "k%d" % i
                        leaf = "%04x" % (hash(key) & 0xFFFF)
                        keys.append("kv:n1:d:" + leaf)
                        version = "%d:0:n1" % (1_764_480_000_000 + round_ * 1000 + i)
                        digest = int(hashlib.sha1((key + "\0" + version).encode()).hexdigest()[:13], 16)
                        argv += [key, '%s\nV"%s"' % (version, "x" * 98), leaf, str(digest)]
                    r.evalsha(sha, len(keys), *keys, *argv)
                    total += per_call
            usec = r.info("commandstats")["cmdstat_evalsha"]["usec"]
            # The tree each variant left, so a variant that computes another
            # tree (a wrong digest) shows.
            tree = hashlib.sha1(repr(sorted(r.hgetall("kv:n1:tree").items())).encode()).hexdigest()[:10]
            print("%-14s %.2f us per record (%d records), tree %s" % (name, usec / total, total, tree))
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
