# imdsguard — build, test, demo.
SHELL := /bin/bash
GO ?= go
BIN := bin/imdsguard
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)

.PHONY: build test test-unit test-e2e deps demo bench vet

build:
	$(GO) build -o $(BIN) ./cmd/imdsguard

vet:
	$(GO) vet ./...

test-unit:
	$(GO) test -count=1 ./agent/... ./firewall/... ./ecsconfig/... ./cmd/...
