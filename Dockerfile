# syntax=docker/dockerfile:1
# nowbridge: the static `bridge` binary on distroless, run as a non-root user.
#
#   docker build -t nowbridge:dev --build-arg VERSION=$(git describe --tags --always --dirty) .
#   docker run --rm -p 8080:8080 -e BRIDGE_NATS_URL=nats://nats:4222 \
#     -e BRIDGE_WEBHOOK_SECRETS_FILE=/run/secrets/webhook_secrets \
#     -v "$PWD/webhook_secrets:/run/secrets/webhook_secrets:ro" nowbridge:dev
#
# One port, BRIDGE_LISTEN (:8080), serves the webhooks, /healthz, /readyz and
# /metrics. The image's command is `bridge serve`; any other subcommand
# (status, dlq, reconcile, sim, ...) runs by naming it. Deployments on a
# cluster: deploy/compose/ and deploy/kubernetes/, docs/operations.md.

# The CI toolchain (go.mod's toolchain line).
ARG GO_VERSION=1.27.3

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
# Printed by `bridge version`.
ARG VERSION=dev
# The image's Go builds; never download another toolchain during a build.
ENV GOTOOLCHAIN=local
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/bridge ./cmd/bridge
# BRIDGE_DATA_DIR, writable by the non-root user: only the embedded JetStream
# server (BRIDGE_NATS_URL empty) stores anything there.
RUN mkdir -p /out/data

# The ServiceNow simulator for deploy/compose: the same binary on distroless's
# debug variant, whose busybox shell reads the compose secrets into the flags
# `bridge sim` takes. Built only with --target sim.
FROM gcr.io/distroless/static-debian12:debug-nonroot AS sim
COPY --from=build /out/bridge /usr/local/bin/bridge
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/bridge"]
CMD ["sim", "--listen", "0.0.0.0:8081"]

# The bridge: no shell, no package manager, user 65532 (nonroot).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bridge /usr/local/bin/bridge
COPY --from=build --chown=65532:65532 /out/data /var/lib/nowbridge
ENV BRIDGE_LISTEN=:8080 \
    BRIDGE_DATA_DIR=/var/lib/nowbridge \
    BRIDGE_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080
# distroless has no curl or wget: the binary checks its own /readyz at BRIDGE_LISTEN.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/bridge", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/bridge"]
CMD ["serve"]
