# vmnet: everything CI runs is `make test`; `make demo` is the main job.
SHELL := /bin/bash
GO ?= go
export PATH := $(PATH):/usr/local/go/bin
BIN := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# How long each fuzz target runs in `make test`: a smoke run, counted in
# executions, not seconds. Go 1.26's fuzz coordinator can fail a target with
# a bare "context deadline exceeded" when a -fuzztime duration ends while a
# worker is mid-call on a loaded machine (go.dev/issue/75804, fixed in Go
# 1.27); a count has no deadline to race. `make fuzz` runs 5 million
# executions each, for the same reason: 1 to 5 minutes a target here.
FUZZTIME ?= 30000x

.PHONY: all build test unit deps lint fuzz fuzz-smoke bench demo clean

all: build

# vmnet-helper drops privileges on every thread through libcap's psx in a
# cgo build too, but runs setuid root: CGO_ENABLED=0 makes it a static
# binary, with no dynamic loader, libc or NSS module in the privileged
# process (ld.so's secure mode has had holes: CVE-2023-4911). vmnet-cni is
# static too, so a DaemonSet can copy it onto any node (docs/kubernetes.md).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/vmnet-helper ./cmd/vmnet-helper
	CGO_ENABLED=0 $(GO) build -o $(BIN)/vmnet-cni ./cmd/vmnet-cni

# deps installs the Debian packages the privileged and integration tests use.
deps:
	@if [ "$$(id -u)" = 0 ]; then .ci/install-deps; else echo "make deps: not root, installing nothing"; fi

# test is what CI runs: lint, every test (privileged ones need root), the
# race detector on the concurrent packages, and short fuzz runs.
test: deps lint build
	$(GO) test -count=1 -timeout 40m ./...
	$(GO) test -count=1 -race -timeout 20m ./virtio/... ./vhostuser/... ./backend/...
	$(MAKE) fuzz-smoke

# unit runs the tests that need neither root nor packages.
unit:
	$(GO) test -count=1 ./virtio/...

# lint checks formatting, vet and staticcheck, that every Go name README.md and
# docs/ write exists (doccheck), and that imports follow the layers (layers).
lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) run ./internal/tools/doccheck
	$(GO) run ./internal/tools/layers

# fuzz-smoke runs every fuzz target for FUZZTIME; fuzz runs them for 5 million executions each.
fuzz-smoke:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

fuzz:
	$(MAKE) fuzz-smoke FUZZTIME=5000000x

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...

# demo boots a guest on a vmnet-helper vhost-user NIC, measures ping and
# iperf3 both ways, prints a table and removes everything it made.
demo: deps build
	$(GO) build -o $(BIN)/vmnet-demo ./integration/demo
	$(BIN)/vmnet-demo --helper $(BIN)/vmnet-helper

clean:
	rm -rf $(BIN)
