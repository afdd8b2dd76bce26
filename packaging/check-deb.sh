#!/usr/bin/env bash
# Builds the Debian package (packaging/build-deb.sh), installs it on this
# machine with dpkg, checks what it installed and that it enabled and started
# nothing, and purges it, checking that nothing is left. .ci/run runs it; it
# needs root (or sudo) and refuses to touch a tern package already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
fail() {
  echo "packaging/check-deb.sh: $*" >&2
  exit 1
}

if dpkg-query -W -f='${Status}' tern 2>/dev/null | grep -qv 'not-installed'; then
  fail "a tern package is installed already; this check would purge it"
fi

# It prints the package and its debug symbols (.ddeb), in either order.
deb=$(bash packaging/build-deb.sh | grep '\.deb$')
[ -f "$deb" ] || fail "packaging/build-deb.sh printed no package ($deb)"
echo "installing $deb"

# From here on the machine is put back however the script ends: a failed
# check, a half-done install, an interrupt.
purge() { as_root dpkg --purge tern >/dev/null 2>&1 || true; }
trap purge EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
as_root dpkg -i "$deb"

unit=/usr/lib/systemd/system/tern.service
config=/etc/tern/tern.toml

[ -x /usr/bin/tern ] || fail "/usr/bin/tern is not installed"
dpkg-query -W -f='${Conffiles}\n' tern | grep -q "^ $config " || fail "$config is not a conffile"
[ "$(as_root stat -c '%a %U %G' "$config")" = "600 root root" ] || fail "$config is not root-only: $(as_root stat -c '%a %U %G' "$config")"
[ -f "$unit" ] || fail "$unit is not installed"
grep -q '^ExecStart=/usr/bin/tern serve ' "$unit" || fail "$unit does not run /usr/bin/tern"
if command -v systemd-analyze >/dev/null 2>&1; then
  # It reports a misspelt key or a bad value and still exits 0.
  said=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify $unit: $said"
  [ -z "$said" ] || fail "systemd-analyze verify $unit: $said"
fi

# The configuration as installed is valid and relays nothing.
checked=$(as_root /usr/bin/tern check --config "$config")
grep -q '^# TURN relaying: off' <<<"$checked" || fail "tern check on $config: TURN is not off:
$checked"

# Nothing enabled (deb-systemd-helper creates the symlink with or without a
# running systemd), nothing started.
for wants in /etc/systemd/system/*.wants/tern.service; do
  [ ! -e "$wants" ] || fail "installing enabled the unit: $wants"
done
if [ -d /run/systemd/system ]; then
  ! systemctl is-active --quiet tern || fail "installing started tern.service"
fi
for exe in /proc/[0-9]*/exe; do
  [ "$(readlink "$exe" 2>/dev/null)" != /usr/bin/tern ] || fail "a tern runs after installing: $exe"
done

trap - EXIT
as_root dpkg --purge tern
! dpkg-query -W -f='${Status}' tern 2>/dev/null | grep -qv 'not-installed' || fail "tern is still installed after the purge"
# The mask the removal left (deb-systemd-helper) goes with the purge.
for path in /usr/bin/tern /etc/tern "$unit" /usr/share/doc/tern /etc/systemd/system/tern.service; do
  [ ! -e "$path" ] && [ ! -L "$path" ] || fail "$path is left after the purge"
done
echo "packaging/check-deb.sh: $deb installs, checks and purges cleanly"
