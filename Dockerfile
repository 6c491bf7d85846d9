# graphsync, built from source. Used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin graphsync

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/graphsync --create-home graphsync
COPY --from=build /src/target/release/graphsync /usr/local/bin/graphsync
USER graphsync
VOLUME /var/lib/graphsync
EXPOSE 9187
ENTRYPOINT ["graphsync"]
CMD ["replicate", "--config", "/etc/graphsync/graph.toml", "--data-dir", "/var/lib/graphsync", "--listen", "0.0.0.0:9187"]
