# ferry-receiver image: build in the Rust image, run on debian-slim as a
# non-root user.
#   docker build -t ferry-receiver .
#   docker run -p 8420:8420 -v ferry-data:/var/lib/ferry-receiver ferry-receiver

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry-receiver \
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
ENTRYPOINT ["/usr/local/bin/ferry-receiver"]
CMD ["serve", "--listen", "0.0.0.0:8420", "--data-dir", "/var/lib/ferry-receiver"]
