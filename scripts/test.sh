#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against the real RabbitMQ and
# Redis of this machine (started or installed first if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
