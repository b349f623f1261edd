"""Checks a Kubernetes object against a CRD's structural schema (the
openAPIV3Schema subset apiextensions allows): types, required fields, enums,
patterns, lengths, counts, and unknown fields, which a strict apply refuses.
CEL rules (x-kubernetes-validations) are not evaluated."""

import re

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def validate(value, schema: dict, path: str = "") -> list[str]:
    where = path or "(root)"
    if schema.get("x-pruned"):
        return [f"{where}: not in the reduced schema (keep its path with reduce.py --keep)"]
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null"]
    errors: list[str] = []
    for sub in schema.get("allOf", []):
        errors += validate(value, sub, path)
    if "anyOf" in schema and all(validate(value, sub, path) for sub in schema["anyOf"]):
        errors.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema and sum(not validate(value, sub, path) for sub in schema["oneOf"]) != 1:
        errors.append(f"{where}: does not match exactly one of oneOf")
    if schema.get("x-kubernetes-int-or-string"):
        if not (TYPES["integer"](value) or isinstance(value, str)):
            errors.append(f"{where}: neither an integer nor a string")
        return errors
    kind = schema.get("type")
    if kind and not TYPES[kind](value):
        return errors + [f"{where}: is {type(value).__name__}, the schema wants {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: length {len(value)} outside the schema's bounds")
    if TYPES["number"](value):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errors.append(f"{where}: {value} outside [{schema.get('minimum')}, {schema.get('maximum')}]")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items, outside the schema's bounds")
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        errors += validate_object(value, schema, path)
    return errors


def validate_object(value: dict, schema: dict, path: str) -> list[str]:
    where = path or "(root)"
    errors = [f"{where}: missing required field {name!r}" for name in schema.get("required", []) if name not in value]
    if len(value) > schema.get("maxProperties", len(value)):
        errors.append(f"{where}: more than {schema['maxProperties']} fields")
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key, sub in value.items():
        child = f"{path}.{key}" if path else key
        if props is not None and key in props:
            errors += validate(sub, props[key], child)
        elif isinstance(extra, dict):
            errors += validate(sub, extra, child)
        elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
            errors.append(f"{child}: unknown field (the schema has {sorted(props)})")
    return errors
