# sidepool container image: one static (musl) binary in an empty image.
#
#   docker build -t sidepool:0.1.0 .
#   docker run --rm --read-only -e SIDEPOOL_LISTEN__ADMIN=0.0.0.0:9901 -p 127.0.0.1:9901:9901 sidepool:0.1.0
#
# The image runs as UID/GID 65532 and works on a read-only root filesystem: sidepool writes nothing to
# disk. The config is /etc/sidepool/sidepool.toml (a copy of config/sidepool.toml); mount your own over
# it, or override single keys with SIDEPOOL_<SECTION>__<KEY> environment variables. Both listeners bind
# loopback by default, which is right when the bot shares the container's network namespace (compose
# `network_mode: service:sidepool`, a Kubernetes pod). To let Prometheus scrape from elsewhere, set
# SIDEPOOL_LISTEN__ADMIN=0.0.0.0:9901; never expose the proxy port. See docs/deployment.md.

# ---- build: a static binary for the musl target of the build machine (x86_64 or aarch64) ----
FROM rust:1.95-bookworm AS build

# ring compiles C and assembly; for a musl target it needs musl-gcc, from musl-tools. The base image is
# pinned; Debian stable only ever carries one (security-patched) version of a package, so pinning the
# package version here would break the build at the next point release rather than make it repeatable.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*

RUN rustup target add "$(uname -m)-unknown-linux-musl"

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src

# The cache mounts keep downloaded crates and compiled dependencies between builds (BuildKit, Buildah).
# The binary is copied out of the cached target directory, which does not end up in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    target="$(uname -m)-unknown-linux-musl" \
    && cargo build --release --locked --target "$target" \
    && install -D -m 0755 "target/$target/release/sidepool" /out/sidepool

# ---- runtime: nothing but the binary and its config ----
# No CA bundle is needed: the web PKI roots are compiled into the binary (webpki-roots); extra roots
# go in tls.ca_files. No libc, no shell, no /etc/passwd: the user is numeric. The container runtime
# provides /etc/resolv.conf and /etc/hosts, which is all the DNS resolver reads.
FROM scratch

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sidepool" \
      org.opencontainers.image.description="HTTP connection-pooling sidecar: plain HTTP/1.1 in from local bots, pooled verified TLS out to exchanges" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="scratch"

COPY --from=build /out/sidepool /usr/local/bin/sidepool
COPY config/sidepool.toml /etc/sidepool/sidepool.toml

# mimalloc (the allocator built in) reads this at start: no transparent huge pages for this
# process even on hosts whose THP setting is `always`, where they would add megabytes of RSS.
ENV MIMALLOC_ALLOW_THP=0

USER 65532:65532

# 8080: the proxy, for local bots only (never publish it); 9901: admin (/metrics, /healthz, /readyz).
EXPOSE 8080 9901

# `sidepool health` asks the admin listener's /readyz. It reads SIDEPOOL_LISTEN__ADMIN like the server
# does (0.0.0.0 is reached through 127.0.0.1) and gives up after 3 s.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/sidepool", "health"]

# SIGTERM (the default stop signal) stops accepting and drains in-flight requests for
# listen.drain_timeout (30 s): give `docker stop` / compose stop_grace_period more than that.
ENTRYPOINT ["/usr/local/bin/sidepool"]
CMD ["--config", "/etc/sidepool/sidepool.toml"]
