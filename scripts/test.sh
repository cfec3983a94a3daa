#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against the real RabbitMQ and
# Redis of this machine (started or installed first if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
# The terminal test drives the real websocat; the browser test drives Debian's Chromium.
scripts/install-websocat.sh
scripts/install-browser.sh
# The OpenAPI test (tests/openapi.rs) runs schemathesis against a real server.
scripts/install-schemathesis.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all -- --check
# Also the minimum Rust version with one toolchain: clippy's incompatible_msrv lint holds Herald's use
# of the standard library to Cargo.toml's rust-version, and tests/toolchain.rs the locked dependencies.
cargo clippy --workspace --all-targets --locked -- -D warnings
# The cluster tests are a target of their own (run below, against the cluster): lint them too.
cargo clippy -p herald-tests --test cluster --locked -- -D warnings
cargo test --workspace --locked "$@"
# The optional malachite backend (off by default) against the built-in kernel.
cargo clippy -p herald-models -p herald-worker --features herald-models/malachite --all-targets --locked -- -D warnings
cargo test -p herald-models --features malachite --lib --locked

# The cluster tests (tests/cluster.rs): three RabbitMQ nodes, a Redis primary, replica and three
# Sentinels on other loopback ports, started here and stopped whatever the outcome. The exports stay in
# this subshell, so nothing else runs against the cluster.
scripts/cluster.sh stop >/dev/null 2>&1 || true
trap 'scripts/cluster.sh stop >/dev/null 2>&1 || true' EXIT
(
  eval "$(scripts/cluster.sh start)"
  cargo test -p herald-tests --test cluster --locked -- --test-threads=1 --nocapture
)
