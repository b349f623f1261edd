#!/usr/bin/env bash
# Builds the filters (.wasm) and optimizes them with binaryen's wasm-opt:
# smaller (the filter stays under 1 MB) and no slower than what cargo
# writes. Both filters go through the same passes, so the benchmark's
# "of the trivial filter" compares like with like.
#
#   scripts/build-wasm.sh          # prints the filter's path last
#
# wasm-opt comes from npm (tools/package.json); each build cargo writes is
# optimized once (a stamp holds its digest, next to the optimized copy).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/wasm32-wasip1/release

if [ ! -x tools/node_modules/.bin/wasm-opt ] || [ tools/package-lock.json -nt tools/node_modules ]; then
  npm ci --prefix tools --no-audit --no-fund --loglevel=error >&2
  touch tools/node_modules
fi
cargo build --release --target wasm32-wasip1 -p oidc-edge-filter -p oidc-edge-trivial-filter >&2
for name in oidc_edge_filter oidc_edge_trivial_filter; do
  wasm="$OUT/$name.wasm"
  cached="$OUT/.$name.optimized.wasm"   # wasm-opt's output for the build named in the stamp
  stamp="$OUT/.$name.optimized"
  digest=$(sha256sum "$wasm" | cut -d' ' -f1)
  if [ -f "$cached" ] && [ "$digest" = "$(sha256sum "$cached" | cut -d' ' -f1)" ]; then
    continue   # already the optimized one
  fi
  if ! { [ -f "$cached" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; }; then
    tools/node_modules/.bin/wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
      --enable-nontrapping-float-to-int --strip-debug "$wasm" -o "$cached"
    echo "$digest" >"$stamp"
  fi
  # A new file, not the one cargo hard-links from deps/ (cargo links its own
  # build again on the next run; the stamp then finds this one).
  cp "$cached" "$wasm.tmp" && mv "$wasm.tmp" "$wasm"
done
ls -l "$OUT/oidc_edge_filter.wasm" >&2
echo "$OUT/oidc_edge_filter.wasm"
