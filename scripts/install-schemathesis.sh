#!/usr/bin/env bash
# Makes sure the schemathesis CLI (an OpenAPI fuzzer) and openapi-spec-validator (which checks a document
# against the OpenAPI 3.1 specification's schema), both from PyPI, are installed at pinned versions in
# a virtualenv of their own under the cache directory, for tests/openapi.rs. Prints nothing on stdout;
# safe to run again: installs only when a pinned version is missing.
#
# The test finds the virtualenv at $HERALD_SCHEMATHESIS_VENV, else where this script installs it:
# ${XDG_CACHE_HOME:-$HOME/.cache}/herald/schemathesis-<version>.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
venv="${XDG_CACHE_HOME:-$HOME/.cache}/herald/schemathesis-$SCHEMATHESIS_VERSION"
bin="$venv/bin/schemathesis"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" \
  && "$venv/bin/python" -m pip show openapi-spec-validator 2>/dev/null | grep -qx "Version: $VALIDATOR_VERSION"; then
  echo "install-schemathesis.sh: schemathesis $SCHEMATHESIS_VERSION found at $bin" >&2
  exit 0
fi

if ! python3 -m venv --help >/dev/null 2>&1; then
  echo "install-schemathesis.sh: installing python3-venv (schemathesis lives in a virtualenv)" >&2
  source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
  apt_install python3-venv
fi

echo "install-schemathesis.sh: installing schemathesis $SCHEMATHESIS_VERSION and openapi-spec-validator $VALIDATOR_VERSION into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$VALIDATOR_VERSION" >&2
"$bin" --version >&2
echo "install-schemathesis.sh: installed at $bin" >&2
