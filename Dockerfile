# syntax=docker/dockerfile:1
#
# The loki binary as a small, non-root image: static (no cgo), stripped,
# on distroless "static" (CA certificates, /etc/passwd, tzdata; no shell, no
# package manager). compose/ runs every component from it; see
# docs/SCALING.md.
#
#   docker build -t loki:local .
#   docker run --rm loki:local version
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v6 -t loki:local .
#
# The entrypoint is loki itself: the command is a loki command, e.g.
# `serve hel --data-dir /var/lib/loki`. It runs as UID/GID 65532
# ("nonroot"); /var/lib/loki (LOKI_DATA_DIR) belongs to that user, so a named
# volume mounted there starts out writable by it.

ARG GO_VERSION=1.26.8

# The build runs on the builder's own platform and cross-compiles: no
# emulation, and the same flags as `task release` and CI's cross-builds.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
ARG TARGETVARIANT
ARG VERSION=""
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH GOARM=${TARGETVARIANT#v} \
      go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/usr/local/bin/loki ./cmd/loki \
 && mkdir -p /out/var/lib/loki

# busybox's static build, for one applet: wget, which the healthchecks use
# to ask /healthz (distroless has no HTTP client and no shell).
FROM busybox:1.37.0-musl AS busybox

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/usr/local/bin/loki /usr/local/bin/loki
COPY --from=busybox /bin/busybox /usr/local/bin/wget
COPY --from=build --chown=65532:65532 /out/var/lib/loki /var/lib/loki
ENV LOKI_DATA_DIR=/var/lib/loki
USER 65532:65532
# 50051: the gRPC gateway (loki serve gateway --grpc-listen 0.0.0.0:50051);
# 9464: /metrics, /healthz, /readyz (--metrics-listen 0.0.0.0:9464).
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/loki"]
CMD ["help"]
