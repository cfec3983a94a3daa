#!/usr/bin/env bash
# Makes sure headless Chromium and its WebDriver (Debian's chromium and chromium-driver) are installed, for
# the browser test (tests/browser.rs). Safe to run again: installs only what is missing.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# Without a font the page renders as boxes; the test's screenshots are looked at by people.
[ -n "$(fc-list 2>/dev/null | head -n 1)" ] || missing+=(fonts-dejavu-core)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-browser.sh: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi
# Debian's launcher script prints a harmless shell warning on some machines; only the exit code matters.
for bin in /usr/bin/chromium /usr/bin/chromedriver; do
  if ! "$bin" --version >/dev/null 2>&1; then
    echo "install-browser.sh: $bin is installed but does not run ($bin --version failed)" >&2
    exit 1
  fi
done
