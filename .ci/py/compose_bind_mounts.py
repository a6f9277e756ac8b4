"""Fails when a bind mount of the resolved compose file names a source that does not exist.

Usage: compose_bind_mounts.py RESOLVED_COMPOSE_YAML   (the output of `docker-compose config`)
"""

import os
import sys

import yaml


def main() -> None:
    with open(sys.argv[1]) as f:
        config = yaml.safe_load(f)
    missing = [
        f"{name}: {v['source']}"
        for name, svc in config["services"].items()
        for v in svc.get("volumes", [])
        if isinstance(v, dict) and v.get("type") == "bind" and not os.path.exists(v["source"])
    ]
    for m in missing:
        print(f"missing bind-mount source: {m}", file=sys.stderr)
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
