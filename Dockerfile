# tern in a container: a release build in the Rust image, then a slim Debian
# image with only the binary, run as an unprivileged user (README, "Running
# it as a service"):
#
#   podman build -t tern .                     # or docker build
#   podman run -d --name tern --network host --read-only --cap-drop all \
#     -v /etc/tern:/etc/tern:ro tern
#
# Mount the directory that holds tern.toml (and the TLS files), not the file:
# a file replaced on the host is a new inode, which a mount of the old file
# never shows, and a reload (`podman kill -s HUP tern`) would read the old one.
#
# Host networking: TURN relays each allocation on its own UDP port from
# relay_ports (49152-65535 by default), and tells clients the address it
# bound. Publishing that range through the container's NAT takes a rule or a
# proxy per port and hides the host's addresses from tern; with
# --network host it binds the host's addresses and ports directly.
#
# The base images are build arguments so that a machine without a container
# registry can build from local copies (packaging/check-container.sh, which
# CI runs).
ARG RUST_IMAGE=docker.io/library/rust:1-slim-trixie
ARG DEBIAN_IMAGE=docker.io/library/debian:trixie-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tern \
    && install -D --strip -m 0755 target/release/tern /out/tern

FROM ${DEBIAN_IMAGE}
# A fixed id, so that a mounted configuration can be made readable by it on
# the host (chgrp 10001, mode 0640) without being readable by anyone else.
RUN groupadd --gid 10001 tern \
    && useradd --uid 10001 --gid tern --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tern
COPY --from=build /out/tern /usr/bin/tern
# The build image's CA roots, for what checks a server's certificate: the
# bundled client's probes (`tern turn turns:HOST`).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# As the Debian package installs it: valid, no credentials, so STUN only
# until a configuration with users or secrets is mounted over it.
COPY --chmod=0644 packaging/tern.toml /etc/tern/tern.toml
USER tern
ENTRYPOINT ["/usr/bin/tern"]
CMD ["serve", "--config", "/etc/tern/tern.toml"]
