# imdsguard — build, test, demo.
SHELL := /bin/bash
GO ?= go
BIN := bin/imdsguard
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)

.PHONY: build test test-unit test-e2e demo vet tools soak

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/imdsguard

# test: installs what is missing (apt packages, the metadata mock), then the
# unit tests, then the end-to-end tests in simulated ECS container
# instances (root only: they skip, saying so, for other users).
test: tools vet test-unit test-e2e test-packaging

# DOCKER=28 (or 20.10, 26, or a comma list) runs the e2e suite on those
# dockerd versions only; the default is all three (README, Tests).
DOCKER ?= 20.10,26,28
test-e2e: tools docker-roots
	IMDSGUARD_E2E_DOCKER=$(DOCKER) $(GO) test -count=1 -v -timeout 60m ./e2e/...

# soak: the chaos soak (e2e/soak_test.go) for $(SOAK) on the last of
# $(DOCKER)'s versions; a short one runs inside test-e2e.
SOAK ?= 10m
soak: tools docker-roots
	IMDSGUARD_E2E_DOCKER=$(DOCKER) IMDSGUARD_SOAK=$(SOAK) IMDSGUARD_SOAK_OUT=$(CURDIR)/bench/results/soak-$$(date -u +%F).md \
		$(GO) test -count=1 -v -run '^TestSoak$$' -timeout $(SOAK_TIMEOUT) ./e2e/
SOAK_TIMEOUT ?= 90m

# demo: a container reads IMDS, imdsguard starts, the container cannot,
# its neighbours still answer, drift is repaired; then everything is torn down.
demo: tools build
	$(GO) run ./e2e/demo --imdsguard $(BIN)

vet:
	$(GO) vet ./...

# -v: a root-only test that skips says why in CI's output.
test-unit:
	$(GO) test -count=1 -v ./agent/... ./attempts/... ./docker/... ./tasknet/... ./status/... ./firewall/... ./ecsconfig/... ./cmd/... ./packaging/...

# tools: what the e2e sandbox (e2e/sandbox) needs. Apt packages are
# installed only when missing; the metadata mock is pinned. firewalld is
# for the sandbox's private instance only: a policy-rc.d keeps apt from
# starting it on the machine, and it is not enabled at boot.
E2E_APT := docker.io iptables nftables busybox-static iproute2 debootstrap firewalld
MOCK_VERSION := v1.13.0
tools:
	@missing=$$(for p in $(E2E_APT); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1; fi; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; rc=$$?; \
		if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
		case " $$missing " in *" firewalld "*) \
			if [ -d /run/systemd/system ]; then systemctl disable firewalld >/dev/null 2>&1 || true; fi;; esac; \
		[ $$rc = 0 ] || exit $$rc; \
	fi
	@if [ ! -x $(TOOLS)/bin/ec2-metadata-mock ]; then \
		GOBIN=$(TOOLS)/bin $(GO) install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$(MOCK_VERSION); \
	fi

# docker-roots: Debian roots with newer dockerd for the e2e matrix (docker
# 26.1 from trixie, 28.5 from sid), built once under $(DOCKER_ROOTS) and
# rebuilt when missing or incomplete (.complete is written last). Each is
# built in a temporary directory and renamed into place, so an interrupted
# build never looks finished. The sandbox runs dockerd, the agent and
# iptables from such a root (e2e/sandbox/rootexec.go).
DOCKER_ROOTS := /var/cache/imdsguard-docker
DOCKER_SUITES := trixie sid
DOCKER_ROOT_PKGS := docker.io,iptables,nftables,iproute2,busybox-static,ca-certificates
.PHONY: docker-roots
docker-roots: tools
	@if [ "$$(id -u)" != 0 ]; then echo "docker-roots: skipped, needs root"; exit 0; fi; \
	mkdir -p $(DOCKER_ROOTS); \
	for suite in $(DOCKER_SUITES); do \
		want=$$(echo $(DOCKER_ROOT_PKGS) | md5sum | cut -c1-12); \
		if [ "$$(cat $(DOCKER_ROOTS)/$$suite/.complete 2>/dev/null)" = "$$want" ]; then continue; fi; \
		echo "docker-roots: building $$suite"; \
		tmp=$$(mktemp -d $(DOCKER_ROOTS)/.$$suite.XXXXXX) || exit 1; \
		if ! debootstrap --variant=minbase --include=$(DOCKER_ROOT_PKGS) $$suite $$tmp http://deb.debian.org/debian >$$tmp.log 2>&1; then \
			tail -20 $$tmp.log; rm -rf $$tmp $$tmp.log; exit 1; fi; \
		rm -f $$tmp.log $$tmp/var/cache/apt/archives/*.deb; \
		chmod 755 $$tmp; echo $$want > $$tmp/.complete; \
		rm -rf $(DOCKER_ROOTS)/$$suite.old; \
		if [ -e $(DOCKER_ROOTS)/$$suite ]; then mv $(DOCKER_ROOTS)/$$suite $(DOCKER_ROOTS)/$$suite.old; fi; \
		mv $$tmp $(DOCKER_ROOTS)/$$suite && rm -rf $(DOCKER_ROOTS)/$$suite.old || exit 1; \
	done

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
# BENCH_ARGS: e.g. -scenarios layers (bench/README.md).
bench: build tools
	GO=$(GO) $(GO) run ./bench -out bench/results $(BENCH_ARGS)

# About 7 minutes; small counts, for checking the harness, not for claims.
bench-quick: build tools
	GO=$(GO) $(GO) run ./bench -quick -out bench/results $(BENCH_ARGS)

# bench-attempts: the blocked-attempt flood (e2e/attemptflood_test.go): a
# container starts 10,000 connections a second to IMDS for $(ATTEMPT_FLOOD)
# while the chain is flushed every 5 s; the agent's CPU, RSS, lost events
# and repair times go to bench/results/attempts-flood-DATE.md.
ATTEMPT_FLOOD ?= 60s
.PHONY: bench-attempts
bench-attempts: tools
	IMDSGUARD_ATTEMPT_FLOOD=$(ATTEMPT_FLOOD) IMDSGUARD_ATTEMPT_FLOOD_OUT=$(CURDIR)/bench/results/attempts-flood-$$(date -u +%F).md \
		$(GO) test -count=1 -v -timeout 20m -run TestAttemptFlood ./e2e/
