#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (Cargo.toml, [package.metadata.deb])
# and prints the paths of the package, e.g. target/debian/tern_0.1.0-1_amd64.deb,
# and of its debug symbols (tern-dbgsym_*.ddeb). The package holds a release
# build of tern as /usr/bin/tern, packaging/tern.toml as the conffile
# /etc/tern/tern.toml, and the systemd unit, neither enabled nor started.
# Arguments go to `cargo deb` (e.g. --no-build to package the last build).
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned cargo-deb, installed into ~/.cargo/bin when missing or another
# version; .ci/run relies on this too.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION" >&2
fi

# systemd/tern.service runs /usr/local/bin/tern, where a hand install puts
# it; the package installs /usr/bin/tern, so it ships a copy with the two
# command lines changed. cargo-deb takes the unit from this directory
# (maintainer-scripts in Cargo.toml) and writes the maintainer scripts that
# register it without enabling or starting it.
unit_dir=target/packaging/deb
mkdir -p "$unit_dir"
sed -E 's|^(Exec[A-Za-z]*=)/usr/local/bin/tern |\1/usr/bin/tern |' systemd/tern.service >"$unit_dir/tern.service"
if grep -q '^Exec.*/usr/local/' "$unit_dir/tern.service" ||
  ! grep -q '^ExecStart=/usr/bin/tern serve ' "$unit_dir/tern.service"; then
  echo "packaging/build-deb.sh: systemd/tern.service no longer has the ExecStart= this script rewrites" >&2
  exit 1
fi

# cargo-deb prints the package's path on stdout, and its progress on stderr.
cargo deb --locked "$@"
