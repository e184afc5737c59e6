# syntax=docker/dockerfile:1
# opendify: build a static-ish release binary, then run it as a non-root user in a small
# Debian image. Build:  docker build -t opendify .
# Run:                  docker run --env-file .env -p 5000:5000 -v opendify-data:/app/data opendify

# ---- build ---------------------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
# The cargo registry and target dir are cached between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin opendify \
    && cp target/dist/opendify /usr/local/bin/opendify

# ---- runtime -------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to Dify; curl: the HEALTHCHECK below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin opendify \
    && mkdir -p /app/data /app/logs \
    && chown -R opendify:opendify /app
COPY --from=build /usr/local/bin/opendify /usr/local/bin/opendify

WORKDIR /app
USER opendify
# Inside a container the server must listen on all interfaces; set PROXY_API_KEYS
# (opendify warns loudly at startup when it is reachable without client auth).
ENV SERVER_HOST=0.0.0.0 \
    SERVER_PORT=5000 \
    CONVERSATION_STORE=/app/data/conversations.db
VOLUME ["/app/data"]
EXPOSE 5000
# /health only says the process answers; orchestrators that route traffic should use /ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${SERVER_PORT}/health" || exit 1
# SIGTERM drains: in-flight streams get SHUTDOWN_TIMEOUT (default 30 s) to finish, so give
# the container more than that before it is killed (docker stop -t 40, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["opendify"]
CMD ["serve"]
