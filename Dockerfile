# pairdb's images, in stages. Build each from the repository root:
#   docker build --target coordinator  --build-arg PAIRDB_GIT_COMMIT=$(git rev-parse HEAD) -t pairdb/coordinator:0.1.0 .
#   docker build --target storage-node --build-arg PAIRDB_GIT_COMMIT=$(git rev-parse HEAD) -t pairdb/storage-node:0.1.0 .
# The build stage runs the project's own scripts, as CI does: scripts/setup.sh (minimal: the
# build's system packages and RocksDB's C++ library, built once) and scripts/cargo. Both
# images carry pairdbctl: the storage pod's preStop hook (`node maintenance on`) and init
# container (`k8s node-zone`) run it. tests/tests/k8s_manifests.rs checks that every command
# the manifests run is in the image that runs it.

FROM rust:1-bookworm AS build
ARG PAIRDB_GIT_COMMIT=unknown
ENV PAIRDB_CACHE=/cache \
    PAIRDB_SETUP_MINIMAL=1 \
    PAIRDB_GIT_COMMIT=${PAIRDB_GIT_COMMIT}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/cache \
    scripts/setup.sh \
 && scripts/cargo build --release --locked \
      -p pairdb-coordinator -p pairdb-storage-node -p pairdbctl \
 && mkdir -p /out \
 && cp /cache/target/release/pairdb-coordinator /cache/target/release/pairdb-storage-node \
       /cache/target/release/pairdbctl /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 pairdb \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pairdb

FROM runtime AS coordinator
COPY --from=build /out/pairdb-coordinator /out/pairdbctl /usr/local/bin/
USER 10001:10001
EXPOSE 50051 9100
CMD ["pairdb-coordinator", "serve"]

FROM runtime AS storage-node
COPY --from=build /out/pairdb-storage-node /out/pairdbctl /usr/local/bin/
RUN mkdir -p /var/lib/pairdb && chown 10001:10001 /var/lib/pairdb
USER 10001:10001
VOLUME /var/lib/pairdb
EXPOSE 7001 9101
CMD ["pairdb-storage-node"]
