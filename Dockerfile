# ferry-receiver image: build in the Rust image, run on debian-slim as a
# non-root user.
#   docker build -t ferry-receiver .
#   docker run -p 8420:8420 -v ferry-data:/var/lib/ferry-receiver ferry-receiver
# .dockerignore keeps target/ (gigabytes on a developer's machine), .git
# and the fuzz corpus out of the build context.
# tests/e2e/fleet/container.rs checks the pieces this file relies on.

FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies in a layer of their own: the manifests and the lock file
# with empty stand-ins for every workspace target, so that a change to our
# sources rebuilds only our crates, not the ~300 dependencies.
COPY Cargo.toml Cargo.lock ./
COPY proto/Cargo.toml proto/
COPY durable/Cargo.toml durable/
COPY settings/Cargo.toml settings/
COPY agent/Cargo.toml agent/
COPY receiver/Cargo.toml receiver/
COPY tests/Cargo.toml tests/
COPY xtask/Cargo.toml xtask/
COPY fuzz/check/Cargo.toml fuzz/check/
RUN for c in proto durable settings agent receiver tests fuzz/check; do mkdir -p $c/src && touch $c/src/lib.rs; done \
 && for m in agent/src/main.rs receiver/src/main.rs xtask/src/main.rs tests/e2e/main.rs; do \
      mkdir -p "$(dirname $m)" && echo 'fn main() {}' > $m; done \
 && cargo build --release --locked -p ferry-receiver

# Our sources. Their mtimes come from the build context and may be older
# than the stand-ins' build: touch them so that cargo rebuilds our crates.
COPY proto proto
COPY durable durable
COPY settings settings
COPY receiver receiver
RUN find proto durable settings receiver -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p ferry-receiver \
 && install -m 0755 target/release/ferry-receiver /usr/local/bin/ferry-receiver

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/ferry-receiver --shell /usr/sbin/nologin ferry \
 && install -d -o ferry -g ferry -m 0750 /var/lib/ferry-receiver
COPY --from=build /usr/local/bin/ferry-receiver /usr/local/bin/ferry-receiver
USER ferry
VOLUME /var/lib/ferry-receiver
EXPOSE 8420
STOPSIGNAL SIGTERM
# GET /healthz by the binary itself: the slim image has no curl or shell
# tools to spare. 0.0.0.0 is probed on 127.0.0.1.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/ferry-receiver", "healthcheck", "--listen", "0.0.0.0:8420"]
ENTRYPOINT ["/usr/local/bin/ferry-receiver"]
CMD ["serve", "--listen", "0.0.0.0:8420", "--data-dir", "/var/lib/ferry-receiver"]
