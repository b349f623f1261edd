#!/usr/bin/env bash
# The Debian package, from the tarball's tree (scripts/dist.sh) with
# dpkg-deb: /usr/bin/oidc-edge, the hardened unit, /etc/oidc-edge/config.yaml
# and /etc/oidc-edge/env (conffiles; env root-only), the filter, the snippets
# and the docs with the examples.
#
#   scripts/deb.sh          # prints the package's path last
set -euo pipefail
cd "$(dirname "$0")/.."

DIST_DIR=${DIST_DIR:-dist}
mkdir -p "$DIST_DIR"
DIST_DIR=$(cd "$DIST_DIR" && pwd)
export DIST_DIR
TARBALL=$(./scripts/dist.sh)
STAGE=${TARBALL%.tar.gz}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' sidecar/Cargo.toml | head -n 1)

ROOTFS=$DIST_DIR/deb-root
rm -rf "$ROOTFS"
doc=$ROOTFS/usr/share/doc/oidc-edge
install -D -m 0755 "$STAGE/bin/oidc-edge" "$ROOTFS/usr/bin/oidc-edge"
install -D -m 0644 "$STAGE/lib/oidc_edge_filter.wasm" "$ROOTFS/usr/lib/oidc-edge/oidc_edge_filter.wasm"
mkdir -p "$ROOTFS/usr/share/oidc-edge"
cp -R "$STAGE/snippets" "$ROOTFS/usr/share/oidc-edge/snippets"
install -D -m 0644 packaging/oidc-edge.service "$ROOTFS/lib/systemd/system/oidc-edge.service"
install -D -m 0644 packaging/config.yaml "$ROOTFS/etc/oidc-edge/config.yaml"
install -D -m 0600 packaging/env "$ROOTFS/etc/oidc-edge/env"
mkdir -p "$doc"
cp -R "$STAGE/examples" "$doc/examples"
install -m 0644 "$STAGE"/docs/*.md "$STAGE/README.md" packaging/debian/copyright "$doc/"

mkdir -p "$ROOTFS/DEBIAN"
install -m 0644 packaging/debian/conffiles "$ROOTFS/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$ROOTFS/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$ROOTFS" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@INSTALLED_SIZE@/$size/" packaging/debian/control.in >"$ROOTFS/DEBIAN/control"
(cd "$ROOTFS" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' md5sum >DEBIAN/md5sums)
chmod 0644 "$ROOTFS/DEBIAN/md5sums" "$ROOTFS/DEBIAN/control"
find "$ROOTFS" -type d -exec chmod 0755 {} +

EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
find "$ROOTFS" -exec touch -h -d "@$EPOCH" {} +
DEB=$DIST_DIR/oidc-edge_${VERSION}_amd64.deb
SOURCE_DATE_EPOCH=$EPOCH dpkg-deb --root-owner-group -Zxz --build "$ROOTFS" "$DEB" >&2
rm -rf "$ROOTFS"
echo "$DEB"
