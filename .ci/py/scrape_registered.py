"""Starts the built sidepool with a one-upstream config, scrapes its /metrics, and writes what
it registers as JSON: every metric family with its type, and every value of every label.

sidepool registers every series up front (each upstream, each error kind, close reason, retry
reason, DNS result and status class), so one scrape of an idle instance lists them all: the
names come from the binary itself, not from reading its sources.

Usage: scrape_registered.py SIDEPOOL_BIN OUT_JSON
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# How long sidepool gets to start serving /metrics.
PATIENCE_S = 10
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
TYPE = re.compile(r"^# TYPE (\S+) (\S+)$")


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def scrape(binary: str, work: str) -> str:
    proxy, admin = free_ports(2)
    config = os.path.join(work, "sidepool.toml")
    with open(config, "w") as f:
        # A static address: nothing is resolved; no connection is opened before a request.
        f.write(
            f'[listen]\nproxy = "127.0.0.1:{proxy}"\nadmin = "127.0.0.1:{admin}"\n\n'
            '[dns.static]\n"exchange.test" = "127.0.0.1"\n\n'
            '[upstreams.ex]\nurl = "https://exchange.test:9"\nrate_limit_budget = "6000/1m"\n'
        )
    # A SIDEPOOL_* variable is a config key to sidepool: start it with none.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEPOOL_")}
    log_path = os.path.join(work, "sidepool.log")
    with open(log_path, "w") as log:
        child = subprocess.Popen([binary, "--config", config], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError as e:
                if child.poll() is not None or time.monotonic() > deadline:
                    with open(log_path) as f:
                        sys.exit(f"no /metrics from {binary} ({e}); its log:\n{f.read()}")
                time.sleep(0.05)
    finally:
        child.terminate()
        child.wait(timeout=PATIENCE_S)


def parse(text: str) -> dict:
    metrics: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if m := TYPE.match(line):
            metrics[m.group(1)] = m.group(2)
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            if not m:
                sys.exit(f"cannot read the /metrics line {line!r}")
            for name, value in LABEL.findall(m.group(2) or ""):
                labels.setdefault(name, set()).add(value)
    return {"metrics": metrics, "labels": {k: sorted(v) for k, v in labels.items()}}


def main() -> None:
    binary, out = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as work:
        registered = parse(scrape(binary, work))
    if not registered["metrics"]:
        sys.exit(f"{binary} registered no metric")
    with open(out, "w") as f:
        json.dump(registered, f, indent=1)
    print(f"{len(registered['metrics'])} metric families from {binary}")


if __name__ == "__main__":
    main()
