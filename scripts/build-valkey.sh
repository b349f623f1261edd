#!/usr/bin/env bash
# Builds Valkey's server from Debian's source package (the release after the
# one the tests run on packages it; this one does not), so the fleet tests
# run on Valkey as well as on Debian's redis-server.
#
#   scripts/build-valkey.sh            # prints the valkey-server path
#
# The source comes from deb.debian.org (pinned version and SHA-256); output
# goes to $VALKEY_CACHE (default ~/.cache/oidc-edge/valkey), reused by every
# later run. About 1.5 minutes on 2 cores the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=8.1.1
ORIG="valkey_${VERSION}+dfsg1.orig.tar.xz"
SHA256=d9bbd82eecb82f359e649a0007ad3dc1b47cc15afa626348ca86b73c4ae2c7ee
URL="http://deb.debian.org/debian/pool/main/v/valkey/$ORIG"
CACHE=${VALKEY_CACHE:-$HOME/.cache/oidc-edge/valkey}
BIN="$CACHE/valkey-server-$VERSION"
log() { printf '[valkey] %s\n' "$*" >&2; }

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi
command -v cc >/dev/null && command -v make >/dev/null || {
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends build-essential curl xz-utils
}
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading $URL"
curl -fsSL --retry 3 -o "$work/$ORIG" "$URL"
echo "$SHA256  $work/$ORIG" | sha256sum -c --quiet -
tar -xJf "$work/$ORIG" -C "$work"
log "building valkey-server $VERSION"
make -C "$work/valkey-$VERSION" -j"$(nproc)" MALLOC=libc BUILD_TLS=no valkey-server >"$work/build.log" 2>&1 ||
  { tail -40 "$work/build.log" >&2; exit 1; }
install -m 755 "$work/valkey-$VERSION/src/valkey-server" "$BIN"
echo "$BIN"
