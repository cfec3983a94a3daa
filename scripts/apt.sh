# Shared by the scripts that install what the project needs from Debian's packages (sourced, not run).
# apt_install PACKAGE...: installs the packages as root, running `apt-get update` once per shell; as
# another user it says what is missing and stops.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$(basename "$0"): $* missing; install it (apt-get install $*) or run as root" >&2
    exit 1
  fi
  if [ -z "${HERALD_APT_UPDATED:-}" ]; then
    apt-get update -qq
    HERALD_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
