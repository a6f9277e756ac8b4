"""The shared-store scenario (bench/run --only shared_store): the latency a Redis rate-limit store
adds to each request.

A redis-server on loopback (no persistence), and three sidepools in front of the fake exchange,
each with a budget on the upstream: the in-memory store; Redis with a budget whose leases cover
300 weight (6000/1m: one round trip per 300 requests); and Redis with a budget small enough that
every request asks the store (39 per 100 ms: a lease of 1). Each gets RATE requests per second
on one kept-alive connection for SECONDS; the store's round trips are Redis' own count of script
calls (INFO commandstats).

  shared_store.py RESULTS.json     (the markdown table)
"""
import json
import socket
import sys
import time

RATE = 200
SECONDS = 10
WARMUP = 200
SIDEPOOLS = {
    # name: (store, budget)
    "ss_memory": ("memory", "6000/1m"),
    "ss_redis": ("redis", "6000/1m"),
    "ss_redis_every": ("redis", "39/100ms"),
}
LABEL = {
    "ss_memory": "sidepool, store = memory, budget 6000/1m",
    "ss_redis": "sidepool, store = Redis, budget 6000/1m (leases of 300)",
    "ss_redis_every": "sidepool, store = Redis, budget 39/100ms (a round trip per request)",
}


def add_ports(port, base):
    """Ports base+7 and base+90 .. base+95."""
    port["redis"] = base + 7
    for i, name in enumerate(SIDEPOOLS):
        port[name] = base + 90 + 2 * i
        port[f"{name}_admin"] = base + 91 + 2 * i


def redis_calls(port):
    """Script calls Redis has served (EVALSHA and EVAL), from INFO commandstats."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n")
        while len(body) < int(head[1:]):
            body += s.recv(65536)
    calls = 0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            calls += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return calls


def scenario(b):
    seconds = 3 if b.quick else SECONDS
    rp = b.port["redis"]
    b.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(rp), "--save", "",
                      "--appendonly", "no"], cpu=b.cpu_side)
    b.wait_port(rp, "redis")
    res = {"rate": RATE, "seconds": seconds, "labels": LABEL, "targets": {}}
    for name, (store, budget) in SIDEPOOLS.items():
        extra = ["[rate_limit]", f'store = "redis://127.0.0.1:{rp}/0"', "key = \"bench\""]
        b.start_sidepool(b.port["exchange"], name=name,
                         extra_upstream=['rate_limit = "generic"',
                                         f'rate_limit_budget = "{budget}"'],
                         extra_sections=extra if store == "redis" else [])
        calls0 = redis_calls(rp)
        r = b.client("rate", name, rate=RATE, seconds=seconds, warmup=WARMUP)
        calls = redis_calls(rp) - calls0
        b.stop(name)
        statuses = r["statuses"]
        if set(statuses) != {"200"}:
            raise RuntimeError(f"shared store: {name} answered {statuses}")
        # The warm-up requests go through the store too.
        requests = int(RATE * seconds) + WARMUP
        res["targets"][name] = {"latency": r["latency"], "store_calls": calls,
                                "requests": requests, "calls_per_request": calls / requests}
        b_log(f"shared store: {name}: p50 {r['latency']['p50']} p99 {r['latency']['p99']} us, "
              f"{calls} store calls for {requests} requests")
    b.stop("redis")
    base = res["targets"]["ss_memory"]["latency"]
    for e in res["targets"].values():
        e["added_p50_us"] = e["latency"]["p50"] - base["p50"]
        e["added_p99_us"] = e["latency"]["p99"] - base["p99"]
    return res


def b_log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def markdown(res):
    """The scenario's table for docs/benchmarks.md."""
    out = [f"{res['rate']} requests/s on one kept-alive connection for {res['seconds']} s per "
           "target (plus warm-up); latency in µs from the first byte written to the last byte "
           "read.\n",
           "| target | p50 | p99 | added p50 | added p99 | store calls / request |",
           "|---|---|---|---|---|---|"]
    for t, e in res["targets"].items():
        lat = e["latency"]
        out.append(f"| {res['labels'][t]} | {lat['p50']:.0f} | {lat['p99']:.0f} | "
                   f"{e['added_p50_us']:+.0f} | {e['added_p99_us']:+.0f} | "
                   f"{e['calls_per_request']:.3f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)["shared_store"]))
