#!/usr/bin/env bash
# Builds the container image from the Dockerfile with podman and runs it as
# the README says an operator does: `tern check` on the configuration the
# image carries, then `tern serve` with host networking on a mounted
# configuration directory (on loopback), read-only and without capabilities,
# which the image's own client relays through (`tern turn`); a reload after
# the file is replaced (SIGHUP); then SIGTERM, which must stop it with exit
# status 0. .ci/run runs it as root after packaging/check-deb.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "packaging/check-container.sh: $*" >&2
  exit 1
}

image=localhost/tern:check
work=target/container-check
mkdir -p "$work"

# What this machine's podman needs and a usual host does not: runc, because
# crun refuses a cgroup v1 host whose v2 hierarchy also has a controller
# (hugetlb here); and resource limits no higher than podman's own, because
# root here lacks CAP_SYS_RESOURCE and podman's defaults (1048576 open files,
# more processes than the 32768 it sets for itself) would need it. The
# build runs on the host's network as the service does.
podman_flags=(--runtime runc --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768 --network host)

# The Dockerfile's base images come from a registry; where none answers,
# stand-ins of the same Debian release: a minimal trixie from Debian's mirror
# (mmdebstrap), and for the build stage the same with a C toolchain and this
# machine's Rust toolchain (rustc and cargo, as the Rust image has them).
# The stand-in's CARGO_HOME is this machine's, so that the build below can
# reuse this machine's build (see there).
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rust_image=docker.io/library/rust:1-slim-trixie
debian_image=docker.io/library/debian:trixie-slim
pulled() { podman image exists "$1" || timeout 120 podman pull -q "$1" >/dev/null 2>&1; }
if ! pulled "$rust_image" || ! pulled "$debian_image"; then
  sysroot=$(rustc --print sysroot)
  rust_version=$(rustc --version | cut -d' ' -f2)
  rust_image=localhost/tern-ci/rust:$rust_version-trixie
  debian_image=localhost/tern-ci/debian:trixie
  echo "no registry for the base images: using stand-ins $debian_image and $rust_image"
  if ! podman image exists "$debian_image"; then
    echo "building $debian_image with mmdebstrap"
    mmdebstrap --quiet --variant=minbase trixie - | podman import --quiet - "$debian_image" >/dev/null
  fi
  if ! podman image exists "$rust_image"; then
    echo "building $rust_image with mmdebstrap"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates,gcc,libc6-dev \
      --customize-hook="cp -a '$sysroot/bin/rustc' '$sysroot/bin/cargo' \"\$1/usr/local/bin/\"" \
      --customize-hook="cp -a '$sysroot/lib/.' \"\$1/usr/local/lib/\"" \
      trixie - | podman import --quiet --change "ENV CARGO_HOME=$cargo_home" - "$rust_image" >/dev/null
  fi
fi

# The build stage fetches crates over HTTPS: it trusts what this host
# trusts, so that a host behind a TLS-inspecting proxy (whose CA the base
# image lacks) builds too.
#
# CI makes one release build (packaging/check-deb.sh, just before). With the
# stand-in, the build stage sees that build's target/ and this machine's
# crate sources at the paths cargo recorded, so cargo finds everything up to
# date and the stage only installs the binary; elsewhere, or after a change,
# it compiles in the image. Both are overlays: what the build stage writes
# there is thrown away, never mixed into this machine's build. Only the build's
# RUN steps see these mounts; the image holds none of them.
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
podman build "${podman_flags[@]}" \
  --volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro" \
  --volume "$PWD/target:/src/target:O" \
  --volume "$cargo_home/registry:$cargo_home/registry:O" \
  --build-arg RUST_IMAGE="$rust_image" --build-arg DEBIAN_IMAGE="$debian_image" \
  --tag "$image" .

[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = tern ] || fail "the image does not run as tern"
[ "$(podman run --rm "${podman_flags[@]}" --entrypoint /usr/bin/id "$image" -u)" = 10001 ] || fail "the image's user is not uid 10001"

# The configuration the image carries is valid and relays nothing.
checked=$(podman run --rm "${podman_flags[@]}" "$image" check --config /etc/tern/tern.toml)
grep -q '^# TURN relaying: off' <<<"$checked" || fail "the image's configuration does not keep TURN off:
$checked"

# A mounted configuration directory, readable by the image's user and nobody
# else, listening on a free loopback port. The directory, not the file, is
# mounted: a file replaced on the host (by an editor, by `mv`) is a new
# inode, which a mount of the old file would never show.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
etc="$PWD/$work/etc-tern"
rm -rf "$etc"
install -d -m 0750 -g 10001 "$etc"
write_config() {
  cat >"$etc/tern.toml.new" <<EOF
listen = ["127.0.0.1:$port"]
workers = 1
allow_peers = ["127.0.0.0/8"]
[auth]
users = { $1 = "$2" }
EOF
  chgrp 10001 "$etc/tern.toml.new"
  chmod 0640 "$etc/tern.toml.new"
  mv "$etc/tern.toml.new" "$etc/tern.toml"
}
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
write_config check "$password"

name="tern-check-$$"
stop() { podman rm --force --time 5 "$name" >/dev/null 2>&1 || true; }
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
podman run --detach --name "$name" "${podman_flags[@]}" --read-only --cap-drop all \
  --security-opt no-new-privileges -v "$etc:/etc/tern:ro" "$image" >/dev/null

logs() { podman logs "$name" 2>&1 | tail -n 40; }
client() { podman run --rm "${podman_flags[@]}" "$image" "$@"; }
served=false
for _ in $(seq 1 30); do
  if client stun "127.0.0.1:$port" --timeout 1s >/dev/null 2>&1; then
    served=true
    break
  fi
  [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || break
  sleep 1
done
$served || fail "tern in the container did not answer STUN on 127.0.0.1:$port:
$(logs)"
client turn "127.0.0.1:$port" --user check --pass "$password" >/dev/null ||
  fail "TURN through tern in the container failed:
$(logs)"

# A reload reads the replaced file: the new user relays, the old one no longer does.
second=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
write_config reloaded "$second"
podman kill --signal HUP "$name" >/dev/null
reloaded=false
for _ in $(seq 1 30); do
  if podman logs "$name" 2>&1 | grep -q 'configuration reloaded'; then
    reloaded=true
    break
  fi
  sleep 1
done
$reloaded || fail "tern in the container did not reload on SIGHUP:
$(logs)"
client turn "127.0.0.1:$port" --user reloaded --pass "$second" >/dev/null ||
  fail "TURN with the reloaded user failed:
$(logs)"
! client turn "127.0.0.1:$port" --user check --pass "$password" --timeout 2s >/dev/null 2>&1 ||
  fail "the user the reload removed still relays"

podman stop --time 20 "$name" >/dev/null
status=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[ "$status" = 0 ] || fail "tern in the container exited with $status on SIGTERM:
$(logs)"
echo "packaging/check-container.sh: $image builds, checks, serves TURN on host networking, reloads and stops cleanly"
