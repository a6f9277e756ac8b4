"""Fails when the PodMonitor does not match the Deployment: selector, port name, annotations.

Usage: podmonitor_matches.py DEPLOYMENT_YAML PODMONITOR_YAML
"""

import sys

import yaml


def problems(deploy: dict, monitor: dict) -> list[str]:
    pod = deploy["spec"]["template"]
    containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    ports = {p.get("name"): p["containerPort"] for c in containers for p in c.get("ports", [])}
    found = []
    labels = pod["metadata"].get("labels", {})
    for key, value in monitor["spec"]["selector"].get("matchLabels", {}).items():
        if labels.get(key) != value:
            found.append(f"PodMonitor selector {key}={value} does not match the pod template labels")
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        if endpoint.get("port") not in ports:
            found.append(f"PodMonitor port {endpoint.get('port')!r} is not a named container port ({sorted(ports)})")
    notes = pod["metadata"].get("annotations", {})
    if notes.get("prometheus.io/port") != str(ports.get("admin")):
        found.append(
            f"annotation prometheus.io/port={notes.get('prometheus.io/port')} "
            f"is not the admin port {ports.get('admin')}"
        )
    return found


def main() -> None:
    with open(sys.argv[1]) as f:
        deploy = yaml.safe_load(f)
    with open(sys.argv[2]) as f:
        monitor = yaml.safe_load(f)
    found = problems(deploy, monitor)
    for p in found:
        print(p, file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
