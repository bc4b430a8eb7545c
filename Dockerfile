# twinreg image, used by docker-compose.yml (`docker-compose up -d --build`) or on its own:
#   docker build -t twinreg .
#   docker run twinreg serve --config /etc/twinreg/twinreg.toml   (mount the file and certificates)
#
# Stage 1 builds the `twinreg` binary (protoc and its well-known types, from libprotobuf-dev, are
# needed by the gRPC code generation of build.rs and etcd-client); the workspace's other members
# (crates/) come along only so the workspace manifest resolves;
# stage 2 is a slim Debian of the same release (same glibc) with only that binary, running as an
# unprivileged user.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs rust-toolchain.toml ./
COPY proto proto
COPY src src
COPY crates crates
RUN cargo build --release --locked --bin twinreg \
 && install -m 0755 target/release/twinreg /usr/local/bin/twinreg

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 twinreg \
 && useradd --system --uid 10001 --gid twinreg --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin twinreg
COPY --from=build /usr/local/bin/twinreg /usr/local/bin/twinreg
# docker-compose.yml's `certs` service hands /certs/twinreg to this uid:gid, and runs the
# replicas as it.
USER 10001:10001
# 8443: REST and gRPC over mutual TLS. 9090: /healthz, /readyz, /metrics (plain HTTP; set
# server.admin_listen = "0.0.0.0:9090" to reach it from outside the container).
EXPOSE 8443 9090
ENTRYPOINT ["twinreg"]
CMD ["serve", "--config", "/etc/twinreg/twinreg.toml"]
