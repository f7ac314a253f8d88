# Multi-stage build: compile in the Rust image, run on slim Debian as a non-root user.
# `.ci/run` builds the binary with the build stage's exact command, and tests/it/container.rs
# lints this file (hadolint, plus the checks below that no linter knows about).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml build.rs ./
# jemalloc's build-time settings (a background thread returning idle pages to the OS) live in
# .cargo/config.toml: without it the image's node would keep quiet connections' memory.
COPY .cargo ./.cargo
COPY src ./src
COPY tests ./tests
COPY bench ./bench
RUN cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates: callbacks and ADS nodes behind public certificates. /data exists and
# belongs to the node's user, so a fresh named volume is writable.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home scomo \
 && mkdir -p /data \
 && chown 10001:10001 /data \
 && chmod 0700 /data
COPY --from=build /src/target/release/scomo-ads /usr/local/bin/scomo-ads
USER 10001:10001
# Listen on every interface inside the container; minted URLs name SCOMO_ADS_PUBLIC_URL (the
# address devices reach), which the node requires before it mints: without it, it refuses
# rather than hand out https://0.0.0.0:8443 URLs.
ENV SCOMO_ADS_DATA=/data \
    SCOMO_ADS_LISTEN=0.0.0.0:8443 \
    SCOMO_ADS_ADMIN_LISTEN=0.0.0.0:8444
VOLUME ["/data"]
# 8443: HTTPS downloads, 8444: ADS admin API, 8445/8446: DMS (devices / EMI API) when running
# `dms` or `up`, 8080: optional plain-HTTP downloads.
EXPOSE 8443 8444 8445 8446 8080
# No curl in the slim image: the binary checks itself (the admin listener's /healthz, trusting
# the certificate generated into /data). A DMS container sets SCOMO_HEALTH_URL to its own.
HEALTHCHECK --interval=30s --timeout=6s --start-period=10s --retries=3 \
  CMD ["scomo-ads", "health"]
ENTRYPOINT ["scomo-ads"]
CMD ["serve"]
