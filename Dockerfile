# mailgate: one container with every front-end, the relay workers and the admin endpoint.
#   docker build -t mailgate .
#   docker run -d --name mailgate -p 8025:8025 -p 8026:8026 -p 1025:1025 -p 8080:8080 \
#       -p 127.0.0.1:9025:9025 -v mailgate-data:/var/lib/mailgate mailgate

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mailgate \
 && cp target/release/mailgate /usr/local/bin/mailgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/mailgate --shell /usr/sbin/nologin mailgate \
 && mkdir -p /var/lib/mailgate /etc/mailgate \
 && chown mailgate:mailgate /var/lib/mailgate
COPY --from=builder /usr/local/bin/mailgate /usr/local/bin/mailgate
COPY config/container.toml /etc/mailgate/mailgate.toml
ENV MAILGATE_CONFIG=/etc/mailgate/mailgate.toml
USER mailgate
VOLUME ["/var/lib/mailgate"]
# MMTP, MMTP over TLS, IMMP, XHMTP (HTTP), admin (/healthz, /metrics)
EXPOSE 8025 8026 1025 8080 2525 2587 2465 9025
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["mailgate", "health", "--url", "http://127.0.0.1:9025"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mailgate"]
CMD ["serve"]
