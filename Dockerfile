# payhook container image. Pure Rust: the build needs no C toolchain.
FROM rust:1-slim AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY benches ./benches
COPY tests ./tests
ENV CC=/bin/false CXX=/bin/false
RUN cargo build --release --bin payhook

FROM debian:bookworm-slim
COPY --from=build /src/target/release/payhook /usr/local/bin/payhook
ENV HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["payhook"]
CMD ["serve"]
