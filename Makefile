# flotilla's build and test entry points. `make test` is the one command that
# runs the whole suite on a fresh machine: it installs the servers the tests
# talk to (MinIO; nats-server is embedded from go.mod) and runs vet, gofmt and
# the race-enabled tests. .ci/run calls it.

MINIO_VERSION ?= v0.0.0-20260212201848-7aac2a2c5b7c
TOOLS_DIR     ?= $(HOME)/.cache/flotilla/bin
MINIO_BIN     ?= $(TOOLS_DIR)/minio
# -count=1: CI must run the tests, not report results cached from earlier runs.
GO_TEST_FLAGS ?= -race -count=1 -timeout 60m
# Test artifacts (the dashboard test's screenshot) are kept here.
ARTIFACTS_DIR ?= $(HOME)/.cache/flotilla/artifacts
export MINIO_BIN

.PHONY: all build run test vet fmt-check unit tools chromium bench clean up down compose-images up-local up-cluster down-cluster

all: build

build:
	go build ./...

# The embedded default: NATS, the object store, a coordinator and two workers
# in one process.
run:
	go run ./cmd/flotilla dev --demo

# The Docker Compose cluster (compose/docker-compose.yml): NATS, MinIO, a
# coordinator and $(WORKERS) workers. `make up` builds the flotilla image from
# ./Dockerfile and pulls the server images; `make up-local` pulls nothing: it
# builds all three images from source on this machine (compose/images).
# `make down` keeps the data volumes.
COMPOSE         ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_PROJECT ?= flotilla
WORKERS         ?= 3
COMPOSE_RUN      = $(COMPOSE) -p $(COMPOSE_PROJECT) -f compose/docker-compose.yml

up:
	$(COMPOSE_RUN) up -d --build --scale worker=$(WORKERS)

down:
	$(COMPOSE_RUN) down

# The same fleet on a three-node NATS cluster (compose/docker-compose.cluster.yml),
# every stream and bucket R3.
COMPOSE_CLUSTER = $(COMPOSE_RUN) -f compose/docker-compose.cluster.yml

up-cluster:
	$(COMPOSE_CLUSTER) up -d --build --scale worker=$(WORKERS)

down-cluster:
	$(COMPOSE_CLUSTER) down

compose-images: tools
	go run ./compose/images -minio-bin $(MINIO_BIN)

up-local: compose-images
	FLOTILLA_IMAGE=flotilla:local NATS_IMAGE=flotilla-local/nats:local MINIO_IMAGE=flotilla-local/minio:local \
		$(COMPOSE_RUN) up -d --no-build --scale worker=$(WORKERS)

test: tools vet fmt-check
	@mkdir -p $(ARTIFACTS_DIR)
	go test $(GO_TEST_FLAGS) -artifacts -outputdir $(ARTIFACTS_DIR) ./...

# Tests without the servers' install step (tests needing MinIO skip, outside CI).
unit: vet
	go test $(GO_TEST_FLAGS) ./...

vet:
	go vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

tools: $(MINIO_BIN) chromium

# Headless Chromium drives the dashboard test (tests/observe). Debian's
# package, installed once; nothing happens when a chromium is on PATH.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "$$CHROMIUM" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (headless browser for the dashboard test)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	else echo "no apt-get: install Chromium yourself, or set CHROMIUM=/path/to/chrome (the dashboard test needs it in CI)"; fi

# MinIO is built from source with the Go toolchain (about five minutes the
# first time) and cached outside the repository, keyed by version.
$(MINIO_BIN): Makefile
	@mkdir -p $(TOOLS_DIR)
	@if [ -x "$@" ] && [ "$$(cat $@.version 2>/dev/null)" = "$(MINIO_VERSION)" ]; then touch $@; else \
		echo "installing minio $(MINIO_VERSION) into $(TOOLS_DIR) (first time only)"; \
		GOBIN=$(TOOLS_DIR) CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install github.com/minio/minio@$(MINIO_VERSION) && \
		echo "$(MINIO_VERSION)" > $@.version; fi

bench: tools
	go test -run '^$$' -bench . -benchtime 1x ./...

clean:
	go clean ./...
