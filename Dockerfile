# syntax=docker/dockerfile:1
#
# One image with both programs: task-api is the entry point, and the notification-service
# Deployment runs /usr/local/bin/notification-service instead.
#
#   docker build -t task-api:latest .

FROM rust:1.95-bookworm AS chef
WORKDIR /src
# cargo-chef compiles the dependencies in a layer of their own, rebuilt only when Cargo.toml or
# Cargo.lock change.
RUN cargo install cargo-chef --version 0.1.78 --locked

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The same flags as the build below (scripts/check-deploy compares them), so the cooked
# dependencies are the ones it reuses.
RUN cargo chef cook --recipe-path recipe.json --release --locked --bin task-api --bin notification-service
COPY . .
# scripts/check-deploy --with-cargo runs this exact command: keep it on one line.
RUN cargo build --release --locked --bin task-api --bin notification-service

# glibc from bookworm, like the builder; no shell and no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/task-api /src/target/release/notification-service /usr/local/bin/
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/task-api"]
