# Multi-stage build: compile in the Rust image, run on slim Debian as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY src ./src
COPY tests ./tests
COPY bench ./bench
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /data scomo
COPY --from=build /src/target/release/scomo-ads /usr/local/bin/scomo-ads
USER scomo
VOLUME ["/data"]
# 8443: HTTPS downloads, 8444: ADS admin API, 8445/8446: DMS (devices / EMI API) when running
# `dms` or `up`, 8080: optional plain-HTTP downloads.
EXPOSE 8443 8444 8445 8446 8080
ENTRYPOINT ["scomo-ads"]
CMD ["serve", "--data", "/data", "--listen", "0.0.0.0:8443", "--admin-listen", "0.0.0.0:8444"]
