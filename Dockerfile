# syntax=docker/dockerfile:1
# Build stage: the same script CI uses.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN bash scripts/build-release.sh

# Runtime: a small image, a non-root user, /data as the state volume.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bucketgate \
 && mkdir -p /data /etc/bucketgate \
 && chown bucketgate:bucketgate /data
COPY --from=build /src/target/release/bucketgate /usr/local/bin/bucketgate
COPY deploy/bucketgate.container.yaml /etc/bucketgate/bucketgate.yaml
USER bucketgate
WORKDIR /data
VOLUME ["/data"]
# SFTP, FTP control, FTP passive range, admin (health and metrics).
EXPOSE 2222 2121 50000-50100 9100
ENV BUCKETGATE_CONFIG=/etc/bucketgate/bucketgate.yaml
HEALTHCHECK --interval=30s --timeout=5s CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/9100 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
ENTRYPOINT ["/usr/local/bin/bucketgate"]
CMD ["serve"]
