# syntax=docker/dockerfile:1
# Container images of agentgate: the gateway and the operator, from one build.
#
#   docker build --target gateway  -t ghcr.io/agentgate/agentgate:0.1.0 .
#   docker build --target operator -t ghcr.io/agentgate/agentgate-operator:0.1.0 .
#
# Both run as the non-root user 65532 on a distroless base (glibc, CA certificates, no shell), which
# is what the Helm chart's restricted security context expects (runAsNonRoot, runAsUser 65532,
# read-only root filesystem, no capabilities).

# The toolchain pinned in rust-toolchain.toml.
ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# clang and libclang for bindgen (the pg_query crate builds PostgreSQL's parser).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches speed up rebuilds; the binaries are copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p agentgate --bin agentgate -p agentgate-operator --bin agentgate-operator \
    && mkdir -p /out \
    && cp target/release/agentgate target/release/agentgate-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.source="https://github.com/agentgate/agentgate" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532

FROM runtime AS gateway
LABEL org.opencontainers.image.title="agentgate" \
      org.opencontainers.image.description="agentgate gateway: identity-aware L7 gateway for AI agents"
COPY --from=build /out/agentgate /usr/local/bin/agentgate
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agentgate"]
CMD ["--help"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="agentgate-operator" \
      org.opencontainers.image.description="agentgate operator: reconciles the agentgate.dev resources"
COPY --from=build /out/agentgate-operator /usr/local/bin/agentgate-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agentgate-operator"]
CMD ["run"]
