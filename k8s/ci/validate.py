#!/usr/bin/env python3
"""Validates rendered Kubernetes objects against their schemas.

    python3 k8s/ci/validate.py --kubernetes-version 1.37.0 RENDERED.yaml...

Built-in kinds are checked by kubernetes-validate (PyPI) in strict mode
(unknown fields are errors). It has no schemas for custom resources, and its
command line only warns about them; here a kind without a schema is an error
unless its CustomResourceDefinition is in k8s/ci/crds/ (copied from the
project that defines it, KEDA for ScaledObject and TriggerAuthentication).
Those are checked against the CRD's openAPIV3Schema, where an object with
listed properties rejects unknown fields, as the API server's strict field
validation does.

Prints one line per object and exits 1 if any object fails.
"""

import argparse
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

CRD_DIR = pathlib.Path(__file__).resolve().parent / "crds"


def strict(schema):
    """The schema with unknown properties rejected where properties are listed."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_schemas():
    """(apiVersion, kind) -> JSON schema, for every CRD in CRD_DIR."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = strict(schema)
    return schemas


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    crds = crd_schemas()
    checked = failed = 0
    for name in args.files:
        with open(name) as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        for obj in documents:
            checked += 1
            what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            try:
                key = (obj["apiVersion"], obj["kind"])
                if key in crds:
                    jsonschema.Draft7Validator(crds[key]).validate(obj)
                    how = "its CRD schema"
                else:
                    kubernetes_validate.validate(
                        obj, args.kubernetes_version, strict=True
                    )
                    how = f"Kubernetes {args.kubernetes_version}"
                print(f"ok   {name}: {what} (against {how})")
            except kubernetes_validate.SchemaNotFoundError as e:
                failed += 1
                print(
                    f"FAIL {name}: {what}: {e.message}; add its CRD to {CRD_DIR}"
                )
            except jsonschema.ValidationError as e:
                failed += 1
                path = "/".join(str(p) for p in e.absolute_path)
                print(f"FAIL {name}: {what}: at /{path}: {e.message}")
    print(f"{checked - failed} valid, {failed} invalid")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
