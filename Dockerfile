# syntax=docker/dockerfile:1
# Herald's images: `docker build --target server .` or `--target worker .` (compose.yaml picks them).

# Builder: the official Rust image at exactly the workspace's rust-version (Cargo.toml), so every
# image build also proves that the stated minimum still builds Herald; tests/toolchain.rs keeps the
# two equal.
FROM rust:1.89-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build directory between builds; the binaries are copied out
# in the same step because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald-server -p herald-worker \
    && cp target/release/herald-server target/release/herald-worker /usr/local/bin/

# Common runtime: ca-certificates for amqps:// and rediss:// URLs, curl for the server's healthcheck.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 herald \
    && useradd --system --uid 10001 --gid herald --no-create-home --shell /usr/sbin/nologin herald \
    && install -d -o 10001 -g 10001 /var/lib/herald
# A numeric user, so orchestrators that insist on non-root (runAsNonRoot) can verify it.
USER 10001:10001

FROM runtime AS server
COPY --from=builder /usr/local/bin/herald-server /usr/local/bin/herald-server
# Inside a container the default 127.0.0.1 would be unreachable from outside it.
ENV HERALD_LISTEN=0.0.0.0:8080
# Run embedded (no backend URLs), the server keeps its jobs in herald-data/ of its working directory:
# one the herald user can write (mount a volume there to keep them across containers).
WORKDIR /var/lib/herald
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/herald-server"]

FROM runtime AS worker
COPY --from=builder /usr/local/bin/herald-worker /usr/local/bin/herald-worker
ENTRYPOINT ["/usr/local/bin/herald-worker"]
