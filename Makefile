# flotilla's build and test entry points. `make test` is the one command that
# runs the whole suite on a fresh machine: it installs the servers the tests
# talk to (MinIO; nats-server is embedded from go.mod) and runs vet, gofmt and
# the race-enabled tests. .ci/run calls it.

MINIO_VERSION ?= v0.0.0-20260212201848-7aac2a2c5b7c
TOOLS_DIR     ?= $(HOME)/.cache/flotilla/bin
MINIO_BIN     ?= $(TOOLS_DIR)/minio
GO_TEST_FLAGS ?= -race -timeout 45m
export MINIO_BIN

.PHONY: all build run test vet fmt-check unit tools bench clean

all: build

build:
	go build ./...

# The embedded default: NATS, the object store, a coordinator and two workers
# in one process.
run:
	go run ./cmd/flotilla dev --demo

test: tools vet fmt-check
	go test $(GO_TEST_FLAGS) ./...

# Tests without the servers' install step (tests needing MinIO skip, outside CI).
unit: vet
	go test $(GO_TEST_FLAGS) ./...

vet:
	go vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

tools: $(MINIO_BIN)

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
