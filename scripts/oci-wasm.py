#!/usr/bin/env python3
"""The filter (.wasm) as an OCI image layout that Istio's WasmPlugin and Envoy
Gateway's EnvoyExtensionPolicy pull once it is pushed to a registry.

    scripts/oci-wasm.py        # the built filter into dist/oidc-edge-filter-0.1.0-oci (DIST_DIR)
    skopeo copy oci:dist/oidc-edge-filter-0.1.0-oci:0.1.0 docker://registry.example.com/oidc-edge-filter:0.1.0

The image is the "compat" variant of the Wasm image spec: one OCI manifest
whose single layer (application/vnd.oci.image.layer.v1.tar+gzip) is a tar
holding plugin.wasm. Both fetchers (istio pkg/wasm/imagefetcher.go, gateway
internal/wasm/imagefetcher.go) try it first; their other OCI variant wants
two layers, which no tool writes for a bare module.

The same .wasm and version give the same bytes: times come from
SOURCE_DATE_EPOCH (else the commit's), and the gzip header has none.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    r = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True)
    return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else 0


def revision() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def blob(out: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = out / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def layer_tar(wasm: bytes, mtime: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(wasm), 0o644, mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def build(wasm_path: Path, out: Path, version: str, rev: str) -> dict:
    wasm = wasm_path.read_bytes()
    if wasm[:4] != b"\0asm":
        sys.exit(f"{wasm_path}: not a WebAssembly module")
    when = epoch()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))

    tar = layer_tar(wasm, when)
    layer = {"mediaType": LAYER, **blob(out, gzip.compress(tar, compresslevel=9, mtime=0)),
             "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}
    annotations = {
        "org.opencontainers.image.title": "oidc-edge-filter",
        "org.opencontainers.image.description": "oidc-edge proxy-wasm filter (single sign-on at the proxy)",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": rev,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": created,
    }
    # GOOS/GOARCH names for a WASI module; a single manifest is never
    # selected by platform, so neither fetcher reads them.
    config = {
        "created": created,
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Labels": annotations},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
        "history": [{"created": created, "created_by": "scripts/oci-wasm.py: plugin.wasm"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, **blob(out, canonical(config))},
        "layers": [layer],
        "annotations": annotations,
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MANIFEST, **blob(out, canonical(manifest)),
                       "annotations": {"org.opencontainers.image.ref.name": version}}],
    }
    (out / "index.json").write_bytes(canonical(index))
    return index["manifests"][0]


def main() -> None:
    with open(ROOT / "sidecar" / "Cargo.toml", "rb") as f:
        default_version = tomllib.load(f)["package"]["version"]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wasm", type=Path, default=ROOT / "target/wasm32-wasip1/release/oidc_edge_filter.wasm")
    p.add_argument("--out", type=Path, help="the OCI layout directory, replaced (default: DIST_DIR/oidc-edge-filter-VERSION-oci)")
    p.add_argument("--version", default=default_version, help="the tag (default: sidecar/Cargo.toml's version)")
    p.add_argument("--revision", default=None, help="the commit (default: git's HEAD)")
    args = p.parse_args()
    if args.out is None:
        args.out = Path(os.environ.get("DIST_DIR") or ROOT / "dist") / f"oidc-edge-filter-{args.version}-oci"
    desc = build(args.wasm, args.out, args.version, args.revision or revision())
    print(f"{args.out}: oidc-edge-filter:{args.version} {desc['digest']}", file=sys.stderr)
    print(args.out)


if __name__ == "__main__":
    main()
