"""The logging scenario (bench/run --only logging; not named logging.py, which would shadow the
standard library module): what one log line per request costs.

Keep-alive load (wrk, one thread, 64 clients) on five targets, alternating in every round:
- sidepool at its defaults (log.level "info": one `request` line per request, text);
- sidepool with RUST_LOG=warn (no request line: what the other scenarios measure);
- sidepool at its defaults with log.format = "json";
- HAProxy as in the other scenarios (its lab config logs nothing);
- HAProxy with `option httplog` (one line per request) to `log stdout format raw`.
Every process's log output goes to /dev/null, so both proxies pay for formatting and the system
calls that hand the lines over, and neither for a disk. The rounds run twice: pinned (the proxy
alone on CPU 1, the load generator on CPU 0) and unpinned (no taskset for the proxy and wrk; the
fake exchange stays on CPU 0). One worker each either way (TOKIO_WORKER_THREADS=1; HAProxy
nbthread 1); sidepool's log writer is a thread of its own.

Per round and target: 2xx/s, the proxy's CPU per request, and the threads it woke per request
(perf stat on sched:sched_wakeup for the proxy's process, which fires in the waking thread, so
a log line that wakes a writer thread is counted). Then, once per target (pinned, 16 clients):
system calls per request (perf stat on raw_syscalls:sys_enter) and user-space instructions per
request (callgrind over a fixed number of requests).
"""
import os
import random
import subprocess
import threading
import time

TARGETS = {
    # name: (proxy, settings)
    "log_sidepool": ("sidepool", {}),
    "log_sidepool_warn": ("sidepool", {"rust_log": "warn"}),
    "log_sidepool_json": ("sidepool", {"format": "json"}),
    "log_haproxy": ("haproxy", {}),
    "log_haproxy_httplog": ("haproxy", {"httplog": True}),
}
LABEL = {
    "log_sidepool": "sidepool, defaults (info)",
    "log_sidepool_warn": "sidepool, RUST_LOG=warn",
    "log_sidepool_json": "sidepool, defaults, JSON",
    "log_haproxy": "HAProxy, no log (lab config)",
    "log_haproxy_httplog": "HAProxy, option httplog",
}


def add_ports(port, base):
    """Ports base+60 .. base+69 for the scenario's targets."""
    for i, name in enumerate(n for n in TARGETS if TARGETS[n][0] == "sidepool"):
        port[name] = base + 60 + 2 * i
        port[f"{name}_admin"] = base + 61 + 2 * i
    port["log_haproxy"] = base + 67
    port["log_haproxy_httplog"] = base + 68


def start_target(b, name, pinned):
    proxy, kw = TARGETS[name]
    cpu = "1" if pinned else None
    if proxy == "sidepool":
        port, admin = b.port[name], b.port[f"{name}_admin"]
        cfg = b.sidepool_config(name, port, admin, b.port["exchange"], log_level=None,
                                log_format=kw.get("format"))
        env = {"TOKIO_WORKER_THREADS": "1"}
        if kw.get("rust_log"):
            env["RUST_LOG"] = kw["rust_log"]
        b.start(name, [b.sidepool_bin, "--config", cfg], cpu=cpu, env=env, sink=os.devnull)
        b.wait_port(port, name)
    else:
        path = os.path.join(b.work, f"{name}.cfg")
        with open(path, "w") as f:
            f.write(haproxy_config(b, b.port[name], kw.get("httplog", False)))
        b.start(name, ["haproxy", "-db", "-f", path], cpu=cpu, sink=os.devnull)
        b.wait_port(b.port[name], name)


def haproxy_config(b, port, httplog):
    """The lab config of the other scenarios (same caps, reuse and timeouts); with `httplog`,
    one line per request in HAProxy's HTTP log format, written to its standard output."""
    log_global = "  log stdout format raw local0 info\n" if httplog else ""
    log_defaults = "  log global\n  option httplog\n" if httplog else ""
    return f"""global
  nbthread 1
  maxconn 5000
{log_global}defaults
  mode http
{log_defaults}  timeout connect 10s
  timeout client 30s
  timeout server 30s
  timeout queue 5s
  timeout http-request 30s
  timeout http-keep-alive 30s
  http-reuse always
  option http-keep-alive
  maxconn 5000
frontend fe
  bind 127.0.0.1:{port}
  http-request deny deny_status 403 unless {{ path_beg /ex/ }}
  use_backend ex
backend ex
  http-request replace-path ^/ex(/.*)$ \\1
  http-request set-header Host exchange.test
  server s1 127.0.0.1:{b.port['exchange']} ssl verify required ca-file {b.ca} sni str(exchange.test) maxconn 30 pool-purge-delay 30s
"""


def perf_counts(b, name, seconds, events):
    """perf stat over the target's process for `seconds`; (counts by event, requests the
    exchange answered in the same window)."""
    pids = ",".join(str(p) for p in b.pids_of(name))
    before = b.exchange_stub_status()[2]
    out = subprocess.run(["perf", "stat", "-x", ",", "-e", ",".join(events), "-p", pids, "--",
                          "sleep", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 30).stderr
    requests = b.exchange_stub_status()[2] - before - 1  # the reading itself is one
    counts = {}
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].strip().isdigit():
            counts[fields[2]] = int(fields[0])
    if not counts or requests <= 0:
        raise RuntimeError(f"perf stat counted nothing for {name}:\n{out[-1000:]}")
    return counts, requests


def measured_run(b, name, conns, seconds, pinned):
    """One wrk run, with the proxy's CPU time and, over the middle of the run, its wake-ups."""
    wrk_cpu = "0" if pinned else None
    got = {}

    def count():
        time.sleep(0.3)
        try:
            got["counts"] = perf_counts(b, name, max(0.5, seconds - 0.8),
                                        ["sched:sched_wakeup", "context-switches"])
        except (RuntimeError, subprocess.SubprocessError) as e:
            got["error"] = str(e)

    counter = threading.Thread(target=count)
    cpu0 = b.cpu_seconds(name)
    counter.start()
    try:
        r = b.wrk(name, conns, seconds, cpu=wrk_cpu) if pinned else wrk_unpinned(b, name, conns,
                                                                                 seconds)
    finally:
        counter.join()
    cpu = b.cpu_seconds(name) - cpu0
    r["cpu_us_per_request"] = cpu / max(1, r["requests"]) * 1e6
    r["cpu_utilization"] = cpu / (r["duration_us"] / 1e6)
    if "counts" in got:
        counts, requests = got["counts"]
        r["wakeups_per_request"] = counts.get("sched:sched_wakeup", 0) / requests
        r["context_switches_per_request"] = counts.get("context-switches", 0) / requests
    return r


def wrk_unpinned(b, name, conns, seconds):
    """bench.wrk pins wrk to the load CPU when the run is pinned; here it must run free."""
    side = b.cpu_side
    b.cpu_side = None
    try:
        return b.wrk(name, conns, seconds)
    finally:
        b.cpu_side = side


def rounds_for(b, pinned, conns, seconds, rounds):
    names = list(TARGETS)
    for name in names:
        start_target(b, name, pinned)
    for name in names:
        b.wrk(name, 16, 1, cpu="0" if pinned else None)  # warm-up: the pool fills
    acc = {n: [] for n in names}
    for rnd in range(rounds):
        order = names[:]
        random.Random(4242 + rnd + (100 if pinned else 0)).shuffle(order)
        for name in order:
            r = measured_run(b, name, conns, seconds, pinned)
            acc[name].append(r)
            b_log(f"  {'pinned' if pinned else 'unpinned'} round {rnd + 1}: {LABEL[name]}: "
                  f"{r['ok_rps']:.0f} 2xx/s, {r['cpu_us_per_request']:.1f} us CPU/req, "
                  f"{r.get('wakeups_per_request', float('nan')):.3f} wake-ups/req")
    for name in names:
        b.stop(name)
    out = []
    for name in names:
        runs = acc[name]
        med = sorted(runs, key=lambda r: r["ok_rps"])[len(runs) // 2]
        out.append({"target": name, "label": LABEL[name], "connections": conns,
                    "median_of": len(runs),
                    "all_ok_rps": [r["ok_rps"] for r in runs],
                    "all_cpu_us_per_request": [r["cpu_us_per_request"] for r in runs],
                    "all_wakeups_per_request": [r.get("wakeups_per_request") for r in runs],
                    **med})
    return out


def work_counts(b, name, conns, per_conn):
    """System calls per request under wrk load, and user-space instructions per request under
    callgrind over exactly conns x per_conn requests (pinned placement)."""
    start_target(b, name, pinned=b.pin)
    side = b.cpu_side
    loader = threading.Thread(target=b.wrk, args=(name, conns, 5), kwargs={"cpu": side})
    b.wrk(name, conns, 1, cpu=side)
    loader.start()
    try:
        time.sleep(1.0)
        counts, requests = perf_counts(b, name, 3, ["raw_syscalls:sys_enter",
                                                     "sched:sched_wakeup"])
    finally:
        loader.join()
        b.stop(name)
    res = {"target": name, "label": LABEL[name],
           "syscalls_per_request": counts.get("raw_syscalls:sys_enter", 0) / requests,
           "wakeups_per_request": counts.get("sched:sched_wakeup", 0) / requests}
    out = os.path.join(b.work, f"callgrind.{name}")
    b.wrappers[name] = ["valgrind", "--tool=callgrind", "--separate-threads=no",
                        f"--callgrind-out-file={out}"]
    try:
        start_target(b, name, pinned=b.pin)
        pid = str(b.procs[name].pid)
        b.client("count", name, conns=conns, n=20)
        subprocess.run(["callgrind_control", "-z", pid], capture_output=True, timeout=60,
                       check=True)
        r = b.client("count", name, conns=conns, n=per_conn)
        subprocess.run(["callgrind_control", "-d", pid], capture_output=True, timeout=60,
                       check=True)
        if r["ok"] != conns * per_conn:
            raise RuntimeError(f"{name} under callgrind: {r}")
        dumps = sorted((os.path.join(b.work, f) for f in os.listdir(b.work)
                        if f.startswith(f"callgrind.{name}")), key=os.path.getmtime)
        with open(dumps[-1]) as f:
            total = next(int(line.split()[1]) for line in f
                         if line.startswith(("summary:", "totals:")))
        res["instructions_per_request"] = total / r["ok"]
        res["callgrind_file"] = os.path.basename(dumps[-1])
    finally:
        b.wrappers.pop(name, None)
        b.stop(name)
    return res


def b_log(msg):
    import sys
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scenario(b):
    conns = 64
    seconds = 2 if b.quick else 3
    rounds = 1 if b.quick else 7
    res = {"connections": conns, "seconds": seconds, "rounds": rounds,
           "targets": {n: LABEL[n] for n in TARGETS}, "placements": {}}
    placements = [True, False] if b.pin else [False]
    for pinned in placements:
        key = "pinned" if pinned else "unpinned"
        b_log(f"logging: {key}, {conns} clients, {rounds} round(s) of {seconds} s per target")
        res["placements"][key] = rounds_for(b, pinned, conns, seconds, rounds)
    per_conn = 50 if b.quick else 200
    b_log(f"logging: system calls and instructions per request, 16 clients, "
          f"{16 * per_conn} requests under callgrind")
    res["work"] = [work_counts(b, n, 16, per_conn) for n in TARGETS]
    res["requests_counted"] = 16 * per_conn
    for w in res["work"]:
        b_log(f"  {w['label']}: {w['syscalls_per_request']:.2f} system calls, "
              f"{w['wakeups_per_request']:.3f} wake-ups, "
              f"{w['instructions_per_request']:,.0f} instructions per request")
    return res


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else float("nan")


def markdown(res):
    """The scenario's tables for docs/benchmarks.md: per placement, each target's median 2xx/s,
    its ratio to sidepool at RUST_LOG=warn and to HAProxy at the same logging, CPU and wake-ups
    per request; then the counted work per request."""
    out = []
    for key, runs in res["placements"].items():
        by = {r["target"]: r for r in runs}
        out.append(f"**{key}**, {res['connections']} clients, median of {res['rounds']} "
                   f"alternating rounds of {res['seconds']} s:\n")
        out.append("| target | 2xx/s | vs sidepool warn | vs HAProxy | CPU µs/request | "
                   "wake-ups/request |")
        out.append("|---|---|---|---|---|---|")
        peer = {"log_sidepool": "log_haproxy_httplog", "log_sidepool_json": "log_haproxy_httplog",
                "log_sidepool_warn": "log_haproxy"}
        for name, label in res["targets"].items():
            r = by[name]
            vs_peer = ""
            if name in peer:
                # Round-by-round ratios, median: each pair ran back to back.
                ratios = [a / b for a, b in zip(r["all_ok_rps"], by[peer[name]]["all_ok_rps"])]
                vs_peer = f"{median(ratios):.2f}x ({LABEL[peer[name]]})"
            ratios_warn = [a / b for a, b in zip(r["all_ok_rps"],
                                                 by["log_sidepool_warn"]["all_ok_rps"])]
            out.append(f"| {label} | {r['ok_rps']:,.0f} | "
                       f"{median(ratios_warn):.3f}x | {vs_peer} | "
                       f"{median(r['all_cpu_us_per_request']):.1f} | "
                       f"{median(r['all_wakeups_per_request']):.3f} |")
        out.append("")
    out.append(f"Work per request (16 clients, pinned; instructions over "
               f"{res['requests_counted']} requests under callgrind):\n")
    out.append("| target | user-space instructions | system calls | wake-ups |")
    out.append("|---|---|---|---|")
    for w in res["work"]:
        out.append(f"| {w['label']} | {w['instructions_per_request']:,.0f} | "
                   f"{w['syscalls_per_request']:.2f} | {w['wakeups_per_request']:.3f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import json
    import sys
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)["logging"]))
