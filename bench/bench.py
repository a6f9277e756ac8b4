#!/usr/bin/env python3
"""Benchmark driver: starts the fake exchange, the delay line and the proxies, runs the scenarios
and writes results.json. Started by bench/run (which installs what is needed); see
docs/benchmarks.md for what is measured and how.

Placement on the cores (when there are at least two): the proxy under test (sidepool, HAProxy or
nginx, one worker each) runs alone on CPU 1; the fake exchange, the delay line and the load
generator run on CPU 0. The direct client has no proxy, so it takes CPU 1 itself: every setup uses
the same two cores.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

import intercept_cost
import log_lines
import quiet_spell
import rate_pressure
import shared_store
from common import log
from load import Load
from peers import Peers
from procs import Procs
from scenarios import Scenarios


class Bench(Procs, Peers, Load, Scenarios):
    """The lab: its processes, ports and results; scenarios are methods or modules."""

    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.out = args.out
        self.work = os.path.join(self.out, "work")
        os.makedirs(self.work, exist_ok=True)
        os.chmod(self.work, 0o755)
        base = args.port_base
        self.port = {
            "exchange": base + 1,
            "exchange_status": base + 2,
            "delay": base + 3,
            "sidepool": base + 10,
            "sidepool_admin": base + 11,
            "haproxy": base + 20,
            "relay": base + 21,
            "nginx": base + 30,
            "growth": base + 40,
            "growth_admin": base + 41,
            "multi": base + 50,
            "multi_admin": base + 51,
        }
        log_lines.add_ports(self.port, base)
        quiet_spell.add_ports(self.port, base)
        rate_pressure.add_ports(self.port, base)
        shared_store.add_ports(self.port, base)
        intercept_cost.add_ports(self.port, base)
        self.sidepool_bin = args.sidepool_bin
        self.procs = {}
        self.wrappers = {}
        self.cpus = os.cpu_count() or 1
        self.pin = args.pin and self.cpus >= 2
        self.cpu_proxy = "1" if self.pin else None
        self.cpu_side = "0" if self.pin else None
        self.ca = os.path.join(self.work, "ca.pem")
        self.results = {
            "schema": 1,
            "quick": self.quick,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": args.command,
            "placement": self.placement_text(),
            # The CPU of the load generator and the exchange (busy_fraction key), when pinned.
            "load_cpu": f"cpu{self.cpu_side}" if self.pin else None,
            "caps": {"per_host": 30, "queue_timeout_s": 5, "idle_timeout_s": 30},
        }

    def environment(self):
        def first_line(argv):
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                return (r.stdout + r.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return None

        cpu_model = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
        return {
            "nproc": self.cpus,
            "cpu_model": cpu_model,
            "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(),
            "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
            "versions": {
                "sidepool": first_line([self.sidepool_bin, "--version"]),
                "haproxy": first_line(["haproxy", "-v"]),
                "nginx": first_line(["nginx", "-v"]),
                "wrk": first_line(["wrk", "-v"]),
                "openssl": first_line(["openssl", "version"]),
                "python": platform.python_version(),
            },
        }

    def run(self):
        self.check_free()
        self.results["machine"] = self.environment()
        self.make_certs()
        self.start_exchange()
        self.start_proxies(self.port["exchange"])
        self.smoke()
        self.stop_proxies()
        t0 = time.monotonic()
        only = set(self.args.only.split(",")) if self.args.only else None
        if only and only - set(SCENARIOS):
            raise SystemExit(f"unknown scenario(s) {sorted(only - set(SCENARIOS))}; "
                             f"known: {','.join(SCENARIOS)}")
        for key, fn in SCENARIOS.items():
            if only and key not in only:
                continue
            s = time.monotonic()
            self.results[key] = fn(self)
            self.results[key]["wall_seconds"] = round(time.monotonic() - s, 1)
            self.save()
        self.results["wall_seconds"] = round(time.monotonic() - t0, 1)
        self.results["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
        self.save()

    def save(self):
        path = os.path.join(self.out, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.results, f, indent=1, sort_keys=False)
        os.replace(path + ".tmp", path)


# Every scenario, in the order a full run runs them; `bench/run --only NAME,...` picks some. The
# later ones are modules with a `scenario(bench)` function; add a new one here.
SCENARIOS = {
    "naive": Bench.scenario_naive,
    "keepalive": Bench.scenario_keepalive,
    "added_latency": Bench.scenario_added_latency,
    "growth": Bench.scenario_growth,
    "work": Bench.scenario_work,
    "logging": log_lines.scenario,
    "quiet_spell": quiet_spell.scenario,
    "rate_pressure": rate_pressure.scenario,
    "shared_store": shared_store.scenario,
    "intercept": intercept_cost.scenario,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--sidepool-bin", required=True)
    p.add_argument("--port-base", type=int, default=27000)
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--only", help="comma list: " + ",".join(SCENARIOS))
    p.add_argument("--command", default="bench/run")
    args = p.parse_args()
    args.seconds = 2 if args.quick else 5
    args.naive_n = 30 if args.quick else 100
    args.rate = 1000
    bench = Bench(args)

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping everything")
        bench.stop_all()
        sys.exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        bench.run()
    finally:
        bench.stop_all()
    log(f"results: {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    main()
