#!/usr/bin/env bash
# Every test: the layout check, lint, dependency checks (cargo deny), core and
# sidecar unit tests (the core also on wasm32 under Node's WASI), the filter's
# lint for the wasm target, a brief pass of every fuzz target, pyflakes over
# the Python tests, the release packages (tarball, .deb installed and purged,
# container image, the filter's OCI image, the compose and Kubernetes
# examples), then the end-to-end
# conformance suite through five real gates — Envoy + filter, nginx +
# ngx_wasm_module + filter, stock nginx + auth_request + sidecar, Caddy +
# forward_auth + sidecar, Traefik + forwardAuth + sidecar — with the real
# OpenID provider.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dist

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

step "no unwrap/expect in the filter"
if grep -rnE '\.unwrap\(\)|\.expect\(' filters/; then
  echo "the filter must not panic: replace these with explicit handling" >&2
  exit 1
fi
step "cargo fmt --check (rustfmt.toml)"
cargo fmt --all --check
step "layout: no import cycle in src/, no file over 400 lines of code"
python3 scripts/check-layout.py
step "cargo clippy (native and wasm32)"
cargo clippy --workspace --all-targets -q -- -D warnings
cargo clippy --target wasm32-wasip1 -p oidc-edge-filter -q -- -D warnings -D clippy::unwrap_used -D clippy::expect_used
step "cargo deny: bans, licenses, sources (deny.toml)"
cargo deny --workspace --locked check --hide-inclusion-graph bans licenses sources
# The advisory database is a git repository on GitHub: fetched where GitHub
# is reachable, else read from a copy already in $CARGO_HOME/advisory-dbs,
# else not checked, and said so.
db_home=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
if timeout 60 cargo deny fetch db >/dev/null 2>&1; then
  step "cargo deny: advisories (database fetched now)"
  cargo deny --workspace --offline check --hide-inclusion-graph advisories
elif db=$(ls -d "$db_home"/advisory-db-*/.git 2>/dev/null | head -n 1) && [ -n "$db" ]; then
  step "cargo deny: advisories (database unreachable; the local copy of $(git -C "${db%/.git}" log -1 --format=%cs))"
  cargo deny --workspace --offline check --hide-inclusion-graph advisories
else
  printf '\033[1;33m==> cargo deny: advisories NOT checked: the advisory database cannot be fetched from here and %s holds no copy (run `cargo deny fetch db` where GitHub is reachable)\033[0m\n' "$db_home"
fi
step "core and sidecar unit tests (native)"
cargo test -q -p oidc-edge -p oidc-edge-sidecar
step "core unit tests and the filter's adapter tests (wasm32-wasip1 under Node's WASI; the filter's against a fake host)"
cargo test -q -p oidc-edge -p oidc-edge-filter --lib --target wasm32-wasip1
step "fuzz targets, 3 s each (libFuzzer on nightly, else bounded property tests on stable)"
./scripts/fuzz.sh 3
step "pyflakes (the e2e suite, its harness, the soak, the bench, the packaging tests)"
.venv/bin/python -m pyflakes tests scripts/oci-wasm.py
step "release packages: tarball, .deb (dpkg -i, then purged), container image, the filter's OCI image, compose and Kubernetes examples"
.venv/bin/python -m pytest tests/packaging -q -p no:cacheprovider
step "ngx_wasm_module for Debian's nginx (about 5 minutes the first time, then cached)"
./scripts/build-ngx-wasm.sh >/dev/null
step "Valkey from Debian's source package, for the fleet tests (about 1.5 minutes the first time, then cached)"
./scripts/build-valkey.sh >/dev/null
step "end-to-end (Envoy, nginx + ngx_wasm_module, nginx + sidecar, Caddy + sidecar, Traefik + sidecar; real OpenID provider)"
.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider "$@"
