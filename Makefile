# The two commands of the README: `make run` and `make test`.

# Nodes of the `make run` cluster (node1..nodeN on ports 8001.., Redis 6381..).
NODES ?= 3
# TLS=1: the `make run` cluster serves HTTPS, with mutual TLS between nodes
# (a development CA and certificates made in .cluster/tls).
TLS ?= 0
.PHONY: run node-stop node-start node-add node-remove status build release test lint fmt clean-cluster compose-up compose-test bench chaos schemathesis fuzz scale

CARGO ?= cargo
# Where cargo puts its builds (CARGO_TARGET_DIR when set, as cargo does).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

# Build in release mode and start a local cluster of NODES nodes (default 3)
# in the foreground,
# supervised: a process that dies is reported and the rest keep serving.
# Refuses (before building) when one already runs.
run:
	@KV_NODES=$(NODES) ./scripts/run-cluster.sh preflight
	$(MAKE) --no-print-directory release
	KV_NODES=$(NODES) KV_TLS=$(TLS) ./scripts/run-cluster.sh

# One node of the running `make run` cluster: its API and workers stop (its
# Redis keeps running), or start again with the same configuration and data.
node-stop:
	@./scripts/run-cluster.sh node-stop $(or $(NODE),$(error NODE is required, e.g. make node-stop NODE=node2))

node-start:
	@./scripts/run-cluster.sh node-start $(or $(NODE),$(error NODE is required, e.g. make node-start NODE=node2))

# Grow the running `make run` cluster by one node (next id and ports), or
# make a node leave it; each waits until the data has moved.
node-add:
	@./scripts/run-cluster.sh node-add

node-remove:
	@./scripts/run-cluster.sh node-remove $(or $(NODE),$(error NODE is required, e.g. make node-remove NODE=node4))

# The running cluster's processes.
status:
	@./scripts/run-cluster.sh status

# The cluster's binaries (api, worker, kvctl), optimised with fat LTO (see
# Cargo.toml); the bench and fault tools are built by their own targets.
release:
	$(CARGO) build --release -p kv-api -p kv-worker -p kv-cli --bins

build:
	$(CARGO) build --workspace --bins

# Every test: unit, property, handler and real-process cluster tests.
# The binaries are built once; the cluster tests start them from target/debug.
test: build
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	./scripts/check-ladder.sh
	./scripts/check-k8s.sh

fmt:
	$(CARGO) fmt --all

clean-cluster:
	rm -rf .cluster

# The compose cluster without a registry: images built FROM scratch from this
# machine's release binaries and Debian's redis-server (docker/build-rootfs.sh).
compose-up: release
	./docker/build-rootfs.sh
	docker-compose -f docker-compose.yml -f docker-compose.local.yml up --build

# Brings the compose cluster up, runs the seed's scenarios, a stop/start of
# node2 and a partition through the containers, and tears it all down.
compose-test: release
	./docker/build-rootfs.sh
	$(CARGO) test -p kv-tests --test compose -- --ignored --nocapture

# This store against a 3-member etcd and raw redis-server, in one run
# (installs wrk, etcd-server and redis-server with apt-get when missing).
bench: release
	./scripts/bench-deps.sh
	KV_BIN_DIR=$(TARGET_DIR)/release $(CARGO) run --release -q -p kv-tests --bin kvbench

# The HTTP API against its OpenAPI document: ~1000 generated requests, twice
# (with and without a client token); any 5xx or undocumented answer fails.
# Installs schemathesis from PyPI into target/schemathesis-venv on first use.
schemathesis: build
	$(CARGO) test -p kv-tests --test schemathesis -- --ignored --test-threads 1 --nocapture

# A longer fuzzing run of every decoder (make test runs a short one).
FUZZ_CASES ?= 20000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p kv-shared --test fuzz_decode

# One seeded fault-injection run against 5 nodes on 127.0.78.11-15 (needs
# root: iptables, tc), then the history checkers and the recovery figures.
# The same SEED replays the same fault schedule.
SEED ?= 1
DURATION ?= 60
RESTORE_KEYS ?= 10000
chaos: release
	$(CARGO) build --release -q -p kv-tests --bin chaos
	SEED=$(SEED) DURATION=$(DURATION) RESTORE_KEYS=$(RESTORE_KEYS) KV_CHAOS_MOVES=$(MOVES) KV_CHAOS_TLS=$(TLS) \
	  KV_BIN_DIR=$(TARGET_DIR)/release $(TARGET_DIR)/release/chaos

# How repair costs grow with the data: anti-entropy between identical nodes
# at each SCALE_RECORDS size, and a wiped node restoring RESTORE_RECORDS.
SCALE_RECORDS ?= 100000,1000000
RESTORE_RECORDS ?= 2000000
scale: release
	$(CARGO) build --release -q -p kv-tests --bin kvscale
	SCALE_RECORDS=$(SCALE_RECORDS) RESTORE_RECORDS=$(RESTORE_RECORDS) \
	  KV_BIN_DIR=$(TARGET_DIR)/release $(TARGET_DIR)/release/kvscale
