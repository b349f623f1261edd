#!/usr/bin/env bash
# The release tarball: a static (musl) oidc-edge, the filter (.wasm), the
# proxy snippets rendered from the example configuration, the examples, the
# systemd unit, the docs and SHA256SUMS.
#
#   scripts/dist.sh        # prints the tarball's path last
#
# DIST_DIR (default dist/) is where it goes; the unpacked tree stays beside
# it (oidc-edge-VERSION-x86_64-linux/) for scripts/deb.sh and image.sh.
# Needs `scripts/setup.sh --dist` (the musl target, musl-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl

DIST_DIR=${DIST_DIR:-dist}
mkdir -p "$DIST_DIR"
DIST_DIR=$(cd "$DIST_DIR" && pwd)

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' sidecar/Cargo.toml | head -n 1)
[ -n "$VERSION" ] || { echo "no version in sidecar/Cargo.toml" >&2; exit 1; }

if ! rustup target list --installed | grep -qx "$TARGET"; then
  echo "the $TARGET target is missing: run scripts/setup.sh --dist" >&2
  exit 1
fi
command -v musl-gcc >/dev/null || { echo "musl-gcc is missing: run scripts/setup.sh --dist" >&2; exit 1; }

# ring's C and assembly are compiled by musl-gcc (the cc crate's choice for
# this target), so nothing links glibc.
cargo build --release --locked --target "$TARGET" -p oidc-edge-sidecar >&2
BIN=target/$TARGET/release/oidc-edge

# A dynamically linked binary would run here and fail on a machine without
# this glibc: refuse to package one.
kind=$(file -b "$BIN")
case "$kind" in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) echo "$BIN is not static: $kind" >&2; exit 1 ;;
esac
if ldd_out=$(ldd "$BIN" 2>&1) && ! grep -qE 'statically linked|not a dynamic executable' <<<"$ldd_out"; then
  echo "$BIN links shared libraries:" >&2
  echo "$ldd_out" >&2
  exit 1
fi

WASM=$(./scripts/build-wasm.sh)

# "oidc-edge 0.1.0 (commit abc1234)": the commit the binary says it is.
COMMIT=$("$BIN" --version | sed -n 's/.*(commit \(.*\))$/\1/p')
NAME=oidc-edge-$VERSION-x86_64-linux
STAGE=$DIST_DIR/$NAME
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,lib,snippets,examples,systemd,docs}

install -m 0755 "$BIN" "$STAGE/bin/oidc-edge"
install -m 0644 "$WASM" "$STAGE/lib/oidc_edge_filter.wasm"

# The snippets match the example configuration (examples/config.yaml); render
# them again from your own. Loading a config reads every secret it names,
# though no snippet contains one: a throwaway value (valid as a cookie secret
# too) stands in for each.
placeholders=()
while read -r name; do
  placeholders+=("$name=$("$BIN" secret)")
done < <(grep -oE '\{env: *[A-Za-z_][A-Za-z0-9_]*\}' packaging/config.yaml | sed 's/{env: *//; s/}//' | sort -u)
for proxy in nginx caddy traefik; do
  env "${placeholders[@]}" "$BIN" render "$proxy" --config packaging/config.yaml --out "$STAGE/snippets/$proxy" >/dev/null
done

install -m 0644 packaging/config.yaml "$STAGE/examples/config.yaml"
install -m 0644 packaging/env "$STAGE/examples/env"
install -m 0644 sidecar/demo.yaml "$STAGE/examples/demo.yaml"
cp -R packaging/compose "$STAGE/examples/compose"
cp -R packaging/kubernetes "$STAGE/examples/kubernetes"
install -m 0644 packaging/oidc-edge.service "$STAGE/systemd/oidc-edge.service"
install -m 0644 docs/install.md docs/configuration.md docs/sidecar.md "$STAGE/docs/"
install -m 0644 README.md "$STAGE/README.md"
if [ -f LICENSE ]; then install -m 0644 LICENSE "$STAGE/LICENSE"; fi
find "$STAGE" -type d -exec chmod 0755 {} +
find "$STAGE" -type f ! -perm -u+x -exec chmod 0644 {} +

(cd "$STAGE" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum >"$DIST_DIR/SHA256SUMS.tmp")
mv "$DIST_DIR/SHA256SUMS.tmp" "$STAGE/SHA256SUMS"

# The same sources give the same tarball: times from the commit, no owner names.
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
find "$STAGE" -exec touch -h -d "@$EPOCH" {} +
TARBALL=$DIST_DIR/$NAME.tar.gz
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
  -C "$DIST_DIR" -cf - "$NAME" | gzip -n -9 >"$TARBALL.tmp"
mv "$TARBALL.tmp" "$TARBALL"
(cd "$DIST_DIR" && sha256sum "$NAME.tar.gz" >"$NAME.tar.gz.sha256")

echo "oidc-edge $VERSION (commit $COMMIT): $(du -h "$TARBALL" | cut -f1)" >&2
echo "$TARBALL"
