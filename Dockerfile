# flotilla's image: the one static flotilla binary on a distroless base (CA
# certificates, /tmp, no shell), running as an unprivileged user. Build it
# from the repository root:
#
#   docker build -t flotilla:local .
#
# compose/docker-compose.yml builds it when it is missing. Without access to
# an image registry, `make compose-images` builds the same image (and the
# NATS and MinIO servers') from source instead: see compose/images.

ARG GO_IMAGE=golang:1.26
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -buildvcs=false -ldflags="-s -w" -o /out/flotilla ./cmd/flotilla \
 && mkdir -p /out/data

FROM ${BASE_IMAGE}
COPY --from=build /out/flotilla /usr/local/bin/flotilla
# A worker's identity and task state; compose mounts a volume here.
COPY --from=build --chown=65532:65532 /out/data /var/lib/flotilla
USER 65532:65532
WORKDIR /var/lib/flotilla
ENV FLOTILLA_DATA=/var/lib/flotilla
ENTRYPOINT ["flotilla"]
CMD ["--help"]
