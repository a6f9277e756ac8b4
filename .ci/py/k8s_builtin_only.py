"""Prints the documents of a YAML file that are not custom resources, for kubernetes-validate.

Usage: k8s_builtin_only.py FILE
"""

import sys

import yaml


def is_builtin(doc: dict) -> bool:
    # Core (v1) and the built-in groups (apps/v1, batch/v1, ...) have no dot; the rest of the
    # built-in ones end in .k8s.io.
    group = doc.get("apiVersion", "").split("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def main() -> None:
    with open(sys.argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    yaml.safe_dump_all([d for d in docs if is_builtin(d)], sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
