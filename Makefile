# imdsguard — build, test, demo.
SHELL := /bin/bash
GO ?= go
BIN := bin/imdsguard
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)

.PHONY: build test test-unit test-e2e deps demo bench vet tools

build:
	$(GO) build -o $(BIN) ./cmd/imdsguard

vet:
	$(GO) vet ./...

test-unit:
	$(GO) test -count=1 ./agent/... ./firewall/... ./ecsconfig/... ./cmd/...

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
