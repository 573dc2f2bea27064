# payhook container image. Pure Rust: the default build needs no C toolchain.
# `docker build --build-arg FEATURES=kafka-tls .` adds TLS to Kafka, which
# compiles C (rskafka's ring) with the image's gcc; see the README.
FROM rust:1-slim AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY benches ./benches
COPY tests ./tests
ARG FEATURES=""
RUN if [ -n "$FEATURES" ]; then \
      cargo build --release --bin payhook --features "$FEATURES"; \
    else \
      CC=/bin/false CXX=/bin/false cargo build --release --bin payhook; \
    fi

FROM debian:bookworm-slim
COPY --from=build /src/target/release/payhook /usr/local/bin/payhook
ENV HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["payhook"]
CMD ["serve"]
