# mailgate: one container with every front-end, the relay workers and the admin endpoint.
#   docker build -t mailgate .
#   docker run -d --name mailgate -p 8025:8025 -p 8026:8026 -p 1025:1025 -p 8080:8080 \
#       -p 25:2525 -p 587:2587 -p 465:2465 -p 127.0.0.1:9025:9025 \
#       -v mailgate-data:/var/lib/mailgate mailgate
# Behind a proxy or offline: scripts/container-test.sh makes the two base images locally
# (docs/operations.md, "Building the image behind a proxy or offline").

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core-store core-store
COPY gateway gateway
COPY frontends frontends
COPY tests tests
COPY config config
# Needs BuildKit (Docker's default builder; DOCKER_BUILDKIT=1 with Debian's docker.io). The
# crates.io downloads and the build directory are caches kept between builds: a source change
# recompiles only the crates it touches, every dependency stays compiled, and docs or README
# changes are not in the build context at all (.dockerignore).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mailgate \
 && strip -o /usr/local/bin/mailgate target/release/mailgate \
 && cat /usr/share/ca-certificates/mozilla/*.crt > /usr/local/share/mozilla-ca-bundle.crt
# The runtime trusts Debian's Mozilla bundle as shipped: built from its files, not from the
# builder's /etc/ssl/certs, so no CA added to the builder (a proxy's) reaches the image.

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/mailgate --shell /usr/sbin/nologin mailgate \
 && mkdir -p /var/lib/mailgate /etc/mailgate \
 && chown mailgate:mailgate /var/lib/mailgate \
 && chmod 0700 /var/lib/mailgate
COPY --from=builder /usr/local/bin/mailgate /usr/local/bin/mailgate
COPY --from=builder /usr/local/share/mozilla-ca-bundle.crt /etc/ssl/certs/ca-certificates.crt
COPY config/container.toml /etc/mailgate/mailgate.toml
# The container's defaults lie under whatever file is mounted over /etc/mailgate/mailgate.toml:
# a file that sets only `domains` keeps the data in the volume and the listeners on 0.0.0.0.
ENV MAILGATE_CONFIG=/etc/mailgate/mailgate.toml \
    MAILGATE_DEFAULTS=container \
    NO_COLOR=1
WORKDIR /var/lib/mailgate
USER mailgate
VOLUME ["/var/lib/mailgate"]
# MMTP, MMTP over TLS, IMMP, XHMTP (HTTP), SMTP MX, submission (STARTTLS, TLS), admin
EXPOSE 8025 8026 1025 8080 2525 2587 2465 9025
# `health` finds the admin listener in the configuration, wherever it was moved.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["mailgate", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mailgate"]
CMD ["serve"]
