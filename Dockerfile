# Multi-stage build for machines with a registry: compile in the Rust image,
# run in a slim Debian with redis-server (for the redis services) and a
# non-root user. Without a registry, see docker/Dockerfile.local.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins && strip target/release/api target/release/worker target/release/kvctl

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends redis-server ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --home-dir /data --create-home kv
COPY --from=build /src/target/release/api /src/target/release/worker /src/target/release/kvctl /usr/local/bin/
USER 10001:10001
WORKDIR /data
EXPOSE 8001 6379
CMD ["api"]
