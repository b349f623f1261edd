#!/usr/bin/env bash
# The sidecar's container image (packaging/Containerfile) with buildah, from
# the static binary scripts/dist.sh builds: localhost/oidc-edge:VERSION in
# the local container storage (podman sees it; `buildah push` sends it to a
# registry), and DIST_DIR/oidc-edge-VERSION-image.tar for `docker load`.
#
#   scripts/image.sh                       # prints the image name last
#   IMAGE_STORAGE=/tmp/x scripts/image.sh  # a throwaway store (vfs) instead
#
# No RUN step: chroot isolation and no daemon are enough to build it.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v buildah >/dev/null || { echo "buildah is missing: run scripts/setup.sh --dist" >&2; exit 1; }
[ -r /etc/ssl/certs/ca-certificates.crt ] || { echo "no CA bundle: run scripts/setup.sh --dist (ca-certificates)" >&2; exit 1; }

DIST_DIR=${DIST_DIR:-dist}
mkdir -p "$DIST_DIR"
DIST_DIR=$(cd "$DIST_DIR" && pwd)
export DIST_DIR
TARBALL=$(./scripts/dist.sh)
STAGE=${TARBALL%.tar.gz}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' sidecar/Cargo.toml | head -n 1)
REVISION=$("$STAGE/bin/oidc-edge" --version | sed -n 's/.*(commit \(.*\))$/\1/p')
IMAGE=localhost/oidc-edge:$VERSION

buildah=(buildah)
if [ -n "${IMAGE_STORAGE:-}" ]; then
  mkdir -p "$IMAGE_STORAGE"
  buildah+=(--root "$IMAGE_STORAGE/root" --runroot "$IMAGE_STORAGE/run" --storage-driver vfs)
fi
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

CONTEXT=$DIST_DIR/image-context
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
cp "$STAGE/bin/oidc-edge" "$CONTEXT/oidc-edge"
cp /etc/ssl/certs/ca-certificates.crt "$CONTEXT/ca-certificates.crt"

# Docker's format: the OCI image config has no HEALTHCHECK.
"${buildah[@]}" bud --quiet --format docker \
  --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
  -f packaging/Containerfile -t "$IMAGE" "$CONTEXT" >&2
ARCHIVE=$DIST_DIR/oidc-edge-$VERSION-image.tar
rm -f "$ARCHIVE"
"${buildah[@]}" push --quiet "$IMAGE" "docker-archive:$ARCHIVE:$IMAGE" >&2
rm -rf "$CONTEXT"
echo "$IMAGE (and $ARCHIVE)" >&2
echo "$IMAGE"
