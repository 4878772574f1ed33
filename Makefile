# imdsguard — build, test, demo.
SHELL := /bin/bash
GO ?= go
BIN := bin/imdsguard
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)

.PHONY: build test test-unit test-e2e demo vet tools

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/imdsguard

# test: installs what is missing (apt packages, the metadata mock), then the
# unit tests, then the end-to-end tests in simulated ECS container
# instances (root only: they skip, saying so, for other users).
test: tools vet test-unit test-e2e test-packaging

test-e2e: tools
	$(GO) test -count=1 -v -timeout 30m ./e2e/...

# demo: a container reads IMDS, imdsguard starts, the container cannot,
# its neighbours still answer, drift is repaired; then everything is torn down.
demo: tools build
	$(GO) run ./e2e/demo --imdsguard $(BIN)

vet:
	$(GO) vet ./...

# -v: a root-only test that skips says why in CI's output.
test-unit:
	$(GO) test -count=1 -v ./agent/... ./firewall/... ./ecsconfig/... ./hostlock/... ./cmd/... ./packaging/...

# tools: what the e2e sandbox (e2e/sandbox) needs. Apt packages are
# installed only when missing; the metadata mock is pinned.
E2E_APT := docker.io iptables nftables busybox-static iproute2
MOCK_VERSION := v1.13.0
tools:
	@missing=$$(for p in $(E2E_APT); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
	@if [ ! -x $(TOOLS)/bin/ec2-metadata-mock ]; then \
		GOBIN=$(TOOLS)/bin $(GO) install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$(MOCK_VERSION); \
	fi

# --- packaging (systemd units, .deb/.rpm, user data, AMI) ---
.PHONY: package test-packaging verify-units
DIST := dist
GOARCH ?= $(shell $(GO) env GOARCH)
# v1.2.3 on a tag; 1.2.3+4.gabcdef after it; 0.0.0+git.abcdef without tags.
PKG_VERSION ?= $(shell d=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo "$${d\#v}" | sed 's/-/+/; s/-/./g' || echo "0.0.0+git.$$(git rev-parse --short HEAD)")

# CGO_ENABLED=0: one static binary runs on Amazon Linux 2/2023 and Debian
# whatever glibc the build host has.
package:
	CGO_ENABLED=0 $(MAKE) --no-print-directory build
	rm -rf $(DIST)/stage && mkdir -p $(DIST)/stage/doc
	cp packaging/INSTALL.md $(DIST)/stage/doc/
	for f in README.md LICENSE; do if [ -f $$f ]; then cp $$f $(DIST)/stage/doc/; fi; done
	rm -f $(DIST)/imdsguard*.deb $(DIST)/imdsguard*.rpm
	for p in deb rpm; do \
		VERSION='$(PKG_VERSION)' GOARCH=$(GOARCH) $(GO) tool nfpm package \
			--config packaging/nfpm.yaml --packager $$p --target $(DIST)/ || exit 1; \
	done
	@ls -l $(DIST)/*.deb $(DIST)/*.rpm

verify-units:
	bash packaging/test/verify-units.sh

# Installs what it needs with apt-get; the boot test caches its Debian tree
# under /var/cache/imdsguard-test.
test-packaging: package
	bash packaging/test/run.sh

# --- benchmarks (bench/README.md); root, like the e2e sandbox ---
.PHONY: bench-quick
bench: build tools
	GO=$(GO) $(GO) run ./bench -out bench/results

# Under 5 minutes; small counts, for checking the harness, not for claims.
bench-quick: build tools
	GO=$(GO) $(GO) run ./bench -quick -out bench/results
