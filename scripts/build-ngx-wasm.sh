#!/usr/bin/env bash
# Builds Kong's ngx_wasm_module (the proxy-wasm host for nginx) as a dynamic
# module for the nginx your distribution ships (Debian's nginx + nginx-dev),
# with the Wasmtime 26 C API compiled from crates.io and linked in statically,
# so that nginx loads the very same oidc-edge .wasm as Envoy.
#
#   scripts/build-ngx-wasm.sh            # prints the nginx binary, then the module path
#
# Module source, first found: $NGX_WASM_SRC, ../shared/vendor/ngx_wasm_module
# (next to the checkout), else a clone of Kong/ngx_wasm_module at $NGX_WASM_TAG.
# Output and build files go to $NGX_WASM_CACHE (default ~/.cache/oidc-edge/ngx-wasm),
# outside the checkout, so every test run and CI job on a machine reuses them;
# each step is skipped when its stamp matches its inputs (FORCE=1 rebuilds).
# First build: about 5 minutes on 2 cores, nearly all of it Wasmtime.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

NGX_WASM_TAG=${NGX_WASM_TAG:-prerelease-0.6.0}
CACHE=${NGX_WASM_CACHE:-$HOME/.cache/oidc-edge/ngx-wasm}
JOBS=${JOBS:-$(nproc)}
log() { printf '[ngx-wasm] %s\n' "$*" >&2; }
die() { printf '[ngx-wasm] error: %s\n' "$*" >&2; exit 1; }
stamp_ok() { [ "${FORCE:-0}" != 1 ] && [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
mkdir -p "$CACHE"/{build,modules,wasmtime}

# 1. Debian packages: the compiler, nginx and the headers it was built with.
pkgs=(build-essential dpkg-dev patch cmake pkg-config libpcre2-dev libssl-dev zlib1g-dev nginx nginx-dev git ca-certificates)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  log "apt-get install ${missing[*]}"
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep apt from starting nginx on :80
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d; policy=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
  [ -n "$policy" ] && $sudo rm -f /usr/sbin/policy-rc.d
fi
[ -f /usr/share/nginx/src/conf_flags ] || die "nginx-dev's /usr/share/nginx/src is missing"

# 2. The module source.
SRC=${NGX_WASM_SRC:-}
if [ -z "$SRC" ] && [ -f "$ROOT/../shared/vendor/ngx_wasm_module/config" ]; then
  SRC="$ROOT/../shared/vendor/ngx_wasm_module"
fi
if [ -z "$SRC" ]; then
  SRC="$CACHE/src-$NGX_WASM_TAG"
  if [ ! -f "$SRC/config" ]; then
    log "cloning Kong/ngx_wasm_module $NGX_WASM_TAG"
    git clone -q --depth 1 --branch "$NGX_WASM_TAG" https://github.com/Kong/ngx_wasm_module "$SRC"
  fi
fi
[ -f "$SRC/config" ] && [ -d "$SRC/src/wasm" ] || die "no ngx_wasm_module source at $SRC"
SRC=$(cd "$SRC" && pwd -P)

# 3. Wasmtime's C API, from crates.io (pinned by nginx/wasmtime-c-api/Cargo.lock).
WT="$CACHE/wasmtime"
CRATE="$ROOT/nginx/wasmtime-c-api"
wt_stamp="wasmtime-c-api-impl=26.0.0 $(cat "$CRATE/Cargo.toml" "$CRATE/Cargo.lock" "$CRATE/src/lib.rs" | sha256sum | cut -c1-16)"
if stamp_ok "$WT/.stamp" "$wt_stamp" && [ -f "$WT/lib/libwasmtime.a" ]; then
  log "Wasmtime C API up to date"
else
  log "building the Wasmtime C API (several minutes)"
  wb="$CACHE/build/wasmtime-c-api"
  rm -rf "$wb"; mkdir -p "$wb/src"
  cp "$CRATE/Cargo.toml" "$CRATE/Cargo.lock" "$wb/"; cp "$CRATE/src/lib.rs" "$wb/src/"
  (cd "$wb" && CARGO_TARGET_DIR="$wb/target" cargo build -q --release --locked -j "$JOBS")
  inc=$(ls -d "$wb"/target/release/build/wasmtime-c-api-impl-*/out/include | head -n1)
  [ -f "$inc/wasmtime.h" ] || die "Wasmtime headers were not generated"
  rm -rf "$WT"; mkdir -p "$WT/include" "$WT/lib"
  cp -R "$inc/." "$WT/include/"
  # The 26.0.0 crate builds `wat` but leaves it undefined in conf.h;
  # ngx_wasm_module calls wasmtime_wat2wasm.
  sed -i 's|^/\* #undef WASMTIME_FEATURE_WAT \*/|#define WASMTIME_FEATURE_WAT|' "$WT/include/wasmtime/conf.h"
  cp "$wb/target/release/libwasmtime.a" "$WT/lib/"
  echo "$wt_stamp" > "$WT/.stamp"
fi

# 4. The dynamic module, with Debian's own configure flags (--with-compat).
MOD="$CACHE/modules/ngx_wasmx_module.so"
src_hash=$(cd "$SRC" && find config auto src -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
patches_hash=$(cat "$ROOT"/nginx/patches/*.patch | sha256sum | cut -c1-16)
mod_stamp="nginx-dev=$(dpkg-query -W -f='${Version}' nginx-dev) src=$src_hash patches=$patches_hash recipe=$(sha256sum "$0" | cut -c1-16) $(cat "$WT/.stamp")"
if stamp_ok "$CACHE/modules/.stamp" "$mod_stamp" && [ -f "$MOD" ]; then
  log "module up to date"
else
  log "building ngx_wasmx_module.so"
  nb="$CACHE/build/nginx"
  rm -rf "$nb"; mkdir -p "$nb/module"
  cp -R /usr/share/nginx/src "$nb/src"
  (cd "$SRC" && cp -R config auto src "$nb/module/" && { [ ! -d lib ] || cp -R lib "$nb/module/"; })
  # Debian builds nginx --with-debug, which would pull in the module's
  # test-only debug modules (they crash `nginx -t`): leave them out.
  sed -i 's/\[ \$NGX_DEBUG = YES \]/[ "${NGX_WASM_DEBUG_MODULES:-NO}" = YES ]/' "$nb/module/config"
  # Our fixes to the module (each patch says why).
  for patch in "$ROOT"/nginx/patches/*.patch; do
    patch -s -d "$nb/module" -p1 <"$patch" || die "cannot apply $patch"
  done
  (
    cd "$nb/src"
    . ./conf_flags
    NGX_IPC=0 NGX_WASM_RUNTIME=wasmtime NGX_WASM_RUNTIME_INC="$WT/include" NGX_WASM_RUNTIME_LIB="$WT/lib" \
    NGX_WASM_RUNTIME_LD_OPT="$WT/lib/libwasmtime.a" \
      ./configure --with-cc-opt="$(dpkg-buildflags --get CFLAGS) -fPIC $(dpkg-buildflags --get CPPFLAGS)" \
        --with-ld-opt="$(dpkg-buildflags --get LDFLAGS) -fPIC" "${NGX_CONF_FLAGS[@]}" \
        --add-dynamic-module="$nb/module" --builddir="$nb/objs" >"$nb/configure.log" 2>&1 ||
      { tail -n 30 "$nb/configure.log" >&2; exit 1; }
    make -j "$JOBS" -f "$nb/objs/Makefile" -C "$nb/src" modules >"$nb/make.log" 2>&1 ||
      { tail -n 30 "$nb/make.log" >&2; exit 1; }
  ) || die "module build failed (logs in $nb)"
  cp "$nb/objs/ngx_wasmx_module.so" "$MOD.tmp"
  strip --strip-unneeded "$MOD.tmp"
  mv -f "$MOD.tmp" "$MOD"
  echo "$mod_stamp" > "$CACHE/modules/.stamp"
fi
echo /usr/sbin/nginx
echo "$MOD"
