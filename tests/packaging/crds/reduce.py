#!/usr/bin/env python3
"""Reduces a CustomResourceDefinition to the validation schema of one version,
for tests/packaging/test_packages.py to check the Kubernetes examples with.

    reduce.py CRD.yaml KIND VERSION --source 'istio/istio@<commit>:manifests/…' [--keep spec.a.b …] > KIND.json

Descriptions are dropped (the schema is all the test reads). With --keep,
properties off the kept paths become {"x-pruned": true}, which the test
refuses to match: an example that starts using one needs the path kept.
"""

import argparse
import json
import sys

import yaml


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def prune(schema: dict, paths: list[list[str]]) -> dict:
    if any(not p for p in paths):
        return schema
    out = dict(schema)
    if "items" in schema:
        out["items"] = prune(schema["items"], paths)
        return out
    props = schema.get("properties", {})
    out["properties"] = {
        name: prune(sub, [p[1:] for p in paths if p[0] == name]) if any(p[0] == name for p in paths) else {"x-pruned": True}
        for name, sub in props.items()
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("crd")
    p.add_argument("kind")
    p.add_argument("version")
    p.add_argument("--source", required=True)
    p.add_argument("--keep", nargs="*", default=[])
    args = p.parse_args()
    with open(args.crd) as f:
        crds = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition"]
    crd = next(d for d in crds if d["spec"]["names"]["kind"] == args.kind)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == args.version)
    schema = strip(version["schema"]["openAPIV3Schema"])
    if args.keep:
        schema = prune(schema, [k.split(".") for k in args.keep] + [["apiVersion"], ["kind"], ["metadata"]])
    json.dump({"apiVersion": f"{crd['spec']['group']}/{args.version}", "kind": args.kind,
               "source": args.source, "schema": schema}, sys.stdout, indent=None, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
