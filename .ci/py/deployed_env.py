"""Prints the SIDEPOOL_* variables a deployment gives the sidepool container, one NAME=VALUE a line.

Usage: deployed_env.py compose RESOLVED_COMPOSE_YAML
       deployed_env.py kubernetes DEPLOYMENT_YAML
"""

import sys
from collections.abc import Iterable

import yaml


def pairs(kind: str, doc: dict) -> Iterable[tuple[str, str]]:
    if kind == "compose":
        env = doc["services"]["sidepool"].get("environment", {})
        return env.items() if isinstance(env, dict) else (tuple(e.split("=", 1)) for e in env)
    spec = doc["spec"]["template"]["spec"]
    containers = spec.get("initContainers", []) + spec["containers"]
    c = next(c for c in containers if c["name"] == "sidepool")
    return ((e["name"], e["value"]) for e in c.get("env", []) if "value" in e)


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        doc = yaml.safe_load(f)
    for name, value in pairs(kind, doc):
        if name.startswith("SIDEPOOL_"):
            print(f"{name}={value}")


if __name__ == "__main__":
    main()
