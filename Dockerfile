# payhook container image: a static musl binary on `scratch`.
#
#   docker build --build-arg PAYHOOK_GIT_REVISION=$(git rev-parse --short HEAD) -t payhook .
#
# Build stage: pure Rust. CC=/bin/false proves no C is compiled, and the
# musl binary is linked by rust-lld (shipped with rustup) with musl's own
# self-contained libc, so no C toolchain touches what ships. (The image's
# `cc` still links cargo's build scripts and proc macros, which run here and
# are not shipped.) scripts/check-static, run by scripts/test, builds the
# same binary the same way and checks it is statically linked. TLS to Kafka
# and to Postgres is in it (rustls on graviola, pure Rust).
FROM rust:1-slim-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl
ENV CC=/bin/false \
    CXX=/bin/false \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    CARGO_PROFILE_RELEASE_STRIP=symbols
# .git is not copied: pass the revision for `payhook --version` and
# payhook_build_info (build.rs falls back to "unknown").
ARG PAYHOOK_GIT_REVISION=unknown
ENV PAYHOOK_GIT_REVISION=${PAYHOOK_GIT_REVISION}
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY sql ./sql
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin payhook \
    && cp target/x86_64-unknown-linux-musl/release/payhook /payhook

# Runtime: nothing but the binary and the CA bundle (for TLS to brokers and
# databases). No shell, no package manager, no libc.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /payhook /payhook
# Webhooks on 8080; probes, /metrics and /status on the admin listener,
# 9090, which is not the providers' to reach: publish only 8080 to them
# (docs/threat-model.md). The public /readyz then says its status word only.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    HTTP_ADDR=0.0.0.0:8080 \
    ADMIN_ADDR=0.0.0.0:9090
# A numeric non-root user: scratch has no /etc/passwd to name one.
USER 65532:65532
EXPOSE 8080 9090
# No shell or curl in the image: payhook probes its own /healthz (the
# address comes from HTTP_ADDR, 0.0.0.0 probed on loopback).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/payhook", "healthcheck"]
ENTRYPOINT ["/payhook"]
CMD ["serve"]
