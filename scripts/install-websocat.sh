#!/usr/bin/env bash
# Makes sure the websocat binary is available (PATH or ~/.cargo/bin), building a pinned version with
# cargo if it is missing. Used by test.sh before tests/websocat.rs drives it; safe to run again.
set -euo pipefail

# The latest stable release: 4.x is still an alpha with a different command line.
WEBSOCAT_VERSION=1.14.1
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

if command -v websocat >/dev/null 2>&1; then
  echo "install-websocat.sh: $(websocat --version) found at $(command -v websocat)" >&2
  exit 0
fi
if [ -x "$cargo_bin/websocat" ]; then
  echo "install-websocat.sh: $("$cargo_bin/websocat" --version) found at $cargo_bin/websocat (not on PATH)" >&2
  exit 0
fi

# Its default features include wss:// through native-tls, which links the system's OpenSSL.
if ! pkg-config --exists openssl 2>/dev/null; then
  echo "install-websocat.sh: installing pkg-config and libssl-dev (websocat links OpenSSL)" >&2
  source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
  apt_install pkg-config libssl-dev
fi

echo "install-websocat.sh: building websocat $WEBSOCAT_VERSION with cargo (a few minutes)" >&2
# --locked: the crate's own Cargo.lock, so newer dependency releases cannot break an old tool's build.
cargo install websocat --version "=$WEBSOCAT_VERSION" --locked
echo "install-websocat.sh: installed $("$cargo_bin/websocat" --version) at $cargo_bin/websocat" >&2
