#!/usr/bin/env bash
# Builds the container image from the Dockerfile with podman and runs it as
# an operator would: `tern check` on the configuration the image carries, then
# `tern serve` with host networking on a mounted configuration (on loopback),
# which the image's own client relays through (`tern turn`), then SIGTERM,
# which must stop it with exit status 0. .ci/run runs it as root.
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
rust_image=docker.io/library/rust:1-slim-trixie
debian_image=docker.io/library/debian:trixie-slim
pulled() { podman image exists "$1" || timeout 300 podman pull -q "$1" >/dev/null 2>&1; }
if ! pulled "$rust_image" || ! pulled "$debian_image"; then
  sysroot=$(rustc --print sysroot)
  rust_version=$(rustc --version | cut -d' ' -f2)
  rust_image=localhost/tern-ci/rust:$rust_version-trixie
  debian_image=localhost/tern-ci/debian:trixie
  echo "no registry for the base images: building $debian_image and $rust_image with mmdebstrap"
  if ! podman image exists "$debian_image"; then
    mmdebstrap --quiet --variant=minbase trixie "$work/debian.tar"
    podman import --quiet "$work/debian.tar" "$debian_image" >/dev/null
  fi
  if ! podman image exists "$rust_image"; then
    mmdebstrap --quiet --variant=minbase --include=ca-certificates,gcc,libc6-dev \
      --customize-hook="cp -a '$sysroot/bin/rustc' '$sysroot/bin/cargo' \"\$1/usr/local/bin/\"" \
      --customize-hook="cp -a '$sysroot/lib/.' \"\$1/usr/local/lib/\"" \
      trixie "$work/rust.tar"
    podman import --quiet "$work/rust.tar" "$rust_image" >/dev/null
  fi
  rm -f "$work/debian.tar" "$work/rust.tar"
fi

# The build stage fetches crates over HTTPS: it trusts what this host
# trusts, so that a host behind a TLS-inspecting proxy (whose CA the base
# image lacks) builds too. Only the build's RUN steps see it.
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
podman build "${podman_flags[@]}" --volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro" --build-arg RUST_IMAGE="$rust_image" --build-arg DEBIAN_IMAGE="$debian_image" \
  --tag "$image" .
# The build stage's layers: gigabytes of build output the image does not carry.
podman image prune --force >/dev/null

[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = tern ] || fail "the image does not run as tern"
[ "$(podman run --rm "${podman_flags[@]}" --entrypoint /usr/bin/id "$image" -u)" = 10001 ] || fail "the image's user is not uid 10001"

# The configuration the image carries is valid and relays nothing.
checked=$(podman run --rm "${podman_flags[@]}" "$image" check --config /etc/tern/tern.toml)
grep -q '^# TURN relaying: off' <<<"$checked" || fail "the image's configuration does not keep TURN off:
$checked"

# A mounted configuration, readable by the image's user and nobody else, on a
# free loopback port.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
config="$PWD/$work/tern.toml"
cat >"$config" <<EOF
listen = ["127.0.0.1:$port"]
workers = 1
allow_peers = ["127.0.0.0/8"]
[auth]
users = { check = "$password" }
EOF
chgrp 10001 "$config"
chmod 0640 "$config"

name="tern-check-$$"
stop() { podman rm --force --time 5 "$name" >/dev/null 2>&1 || true; }
trap stop EXIT
podman run --detach --name "$name" "${podman_flags[@]}" -v "$config:/etc/tern/tern.toml:ro" "$image" >/dev/null

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
$(podman logs "$name" 2>&1)"
client turn "127.0.0.1:$port" --user check --pass "$password" ||
  fail "TURN through tern in the container failed:
$(podman logs "$name" 2>&1)"

podman stop --time 20 "$name" >/dev/null
status=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[ "$status" = 0 ] || fail "tern in the container exited with $status on SIGTERM:
$(podman logs "$name" 2>&1)"
echo "packaging/check-container.sh: $image builds, checks, serves TURN on host networking and stops cleanly"
