# The two commands of the README: `make run` and `make test`.
.PHONY: run build release test lint fmt clean-cluster

CARGO ?= cargo

# Build in release mode and start a 3-node local cluster in the foreground.
run: release
	./scripts/run-cluster.sh

release:
	$(CARGO) build --release --bins

build:
	$(CARGO) build --workspace --bins

# Every test: unit, property, handler and real-process cluster tests.
# The binaries are built once; the cluster tests start them from target/debug.
test: build
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-cluster:
	rm -rf .cluster
