"""The deployments' own promises, checked on the effective configs `sidepool check` printed:
a native sidecar, the proxy on loopback, a grace period longer than listen.drain_timeout.

Usage: deploy_invariants.py EFFECTIVE_DIR RESOLVED_COMPOSE_YAML DEPLOYMENT_YAML
EFFECTIVE_DIR holds `effective.<config path with / as _>` for each checked config.
"""

import ipaddress
import os
import re
import sys
import tomllib

import yaml

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def seconds(text: object) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)\b", str(text))
    if not parts:
        sys.exit(f"cannot read the duration {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


def effective(tmp: str, config: str) -> dict:
    """The config as `sidepool check` printed it: file + env overrides + defaults."""
    with open(os.path.join(tmp, "effective." + config.replace("/", "_")), "rb") as f:
        return tomllib.load(f)


def main() -> None:
    tmp, compose_path, deployment_path = sys.argv[1:4]
    problems = []
    with open(deployment_path) as f:
        spec = yaml.safe_load(f)["spec"]["template"]["spec"]
    sidecar = [c for c in spec.get("initContainers", []) if c["name"] == "sidepool"]
    if not sidecar or sidecar[0].get("restartPolicy") != "Always":
        problems.append(
            "deployment.yaml: sidepool must be an initContainer with restartPolicy: Always (a native sidecar)"
        )
    with open(compose_path) as f:
        compose = yaml.safe_load(f)["services"]
    if compose["bot"].get("network_mode") != "service:sidepool":
        problems.append("compose.yaml: the bot needs network_mode: service:sidepool to reach sidepool on 127.0.0.1")
    # Config, what bounds the drain, its seconds (Kubernetes' default 30, Docker's 10).
    graces = [
        (
            "deploy/kubernetes/sidepool.toml",
            "terminationGracePeriodSeconds",
            spec.get("terminationGracePeriodSeconds", 30),
        ),
        (
            "deploy/docker-compose/sidepool.toml",
            "stop_grace_period",
            seconds(compose["sidepool"].get("stop_grace_period", "10s")),
        ),
    ]
    for config, what, grace in graces:
        listen = effective(tmp, config)["listen"]
        host = listen["proxy"].rsplit(":", 1)[0].strip("[]")
        if not ipaddress.ip_address(host).is_loopback:
            problems.append(f"{config}: listen.proxy is {listen['proxy']}; the proxy must stay on loopback")
        if float(grace) <= seconds(listen["drain_timeout"]):
            problems.append(
                f"{what} ({grace:g}s) must be longer than listen.drain_timeout ({listen['drain_timeout']}) in {config}"
            )
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
