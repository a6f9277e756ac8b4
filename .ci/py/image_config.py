"""Checks the metadata of the built image (`buildah inspect` output): user, entrypoint, command,
ports, health check and labels.

Usage: image_config.py IMAGE_JSON
"""

import json
import sys

WANT = {
    "User": "65532:65532",
    "Entrypoint": ["/usr/local/bin/sidepool"],
    "Cmd": ["--config", "/etc/sidepool/sidepool.toml"],
    "ExposedPorts": ["8080/tcp", "9901/tcp"],
    "Healthcheck": ["CMD", "/usr/local/bin/sidepool", "health"],
}
LABELS = ("org.opencontainers.image.title", "org.opencontainers.image.version")


def main() -> None:
    with open(sys.argv[1]) as f:
        image = json.load(f)
    config = image["OCIv1"]["config"]
    health = image["Docker"]["config"].get("Healthcheck") or {}
    got = dict(config, ExposedPorts=sorted(config.get("ExposedPorts", {})), Healthcheck=health.get("Test"))
    problems = [f"{key}: {got.get(key)!r}, expected {value!r}" for key, value in WANT.items() if got.get(key) != value]
    problems += [f"label {label} is missing" for label in LABELS if label not in config.get("Labels", {})]
    for p in problems:
        print(f"image config: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
