"""The rate-pressure scenario (bench/run --only rate_pressure): two naive bots share one exchange
budget and ignore its 429s.

The fake exchange (bench/rate_exchange.py) counts weight per 1-second window against LIMIT (a
scaled-down Binance: 6000 per minute there, LIMIT per second here), answers 429 with Retry-After
past it, and bans (418, "IP banned until") a client that keeps sending during a Retry-After.
Each bot runs MD_WORKERS market-data pollers (GET /api/v3/depth, weight 5, every MD_EVERY_MS,
marked x-sidepool-priority: low) and one order loop (POST /api/v3/order, weight 1, every
ORDER_EVERY_MS). Together they ask for several times the budget. Targets, each against a freshly
reset exchange for SECONDS:
- sidepool with the binance profile and rate_limit_budget = LIMIT/1s (the exchange's limit);
- sidepool with the generic profile (no budget: it only honours Retry-After);
- sidepool with rate_limit = "none", HAProxy and nginx (lab configs): the 429s pass through;
- sidepool with the budget and the orders alone (no market data): the orders' baseline.
Reported per target: what the exchange served (200, 429, 418 bans, requests that arrived during a
Retry-After or ban), the heaviest window, what the bots got, and order latency p50/p99.

  rate_pressure.py bots --port P --prefix /ex --seconds S [--no-flood]   (the load, JSON out)
  rate_pressure.py RESULTS.json                                            (the markdown table)
"""
import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import time

import prom

LIMIT = 300
SECONDS = 12
MD_WORKERS = 8
MD_EVERY_MS = 25
ORDER_EVERY_MS = 100
BOTS = ["a", "b"]
HERE = os.path.dirname(os.path.abspath(__file__))

GUARD_UPSTREAM = ['rate_limit = "binance"', f'rate_limit_budget = "{LIMIT}/1s"']
SIDEPOOLS = {
    # name: (upstream lines, flood)
    "rl_guard": (GUARD_UPSTREAM, True),
    "rl_retry_after": (['rate_limit = "generic"'], True),
    "rl_none": (['rate_limit = "none"'], True),
    "rl_orders_alone": (GUARD_UPSTREAM, False),
}
TARGETS = ["rl_guard", "rl_retry_after", "rl_none", "haproxy", "nginx", "rl_orders_alone"]
LABEL = {
    "rl_guard": f"sidepool, binance profile, budget {LIMIT}/1s",
    "rl_retry_after": "sidepool, generic profile (Retry-After only)",
    "rl_none": 'sidepool, rate_limit = "none"',
    "haproxy": "HAProxy (lab config)",
    "nginx": "nginx (lab config)",
    "rl_orders_alone": f"sidepool, budget {LIMIT}/1s, orders alone (no market data)",
}


def add_ports(port, base):
    """Ports base+6 and base+80 .. base+87."""
    port["rate_exchange"] = base + 6
    for i, name in enumerate(SIDEPOOLS):
        port[name] = base + 80 + 2 * i
        port[f"{name}_admin"] = base + 81 + 2 * i


# ---- the bots ---------------------------------------------------------------------------------

class Conn:
    """One keep-alive HTTP/1.1 connection to the proxy."""

    def __init__(self, port):
        self.port = port
        self.rw = None

    async def request(self, method, path, headers, body=b""):
        if self.rw is None:
            self.rw = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.rw
        head = [f"{method} {path} HTTP/1.1", "host: exchange.test",
                f"content-length: {len(body)}", *headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        length, close, local = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value.lower():
                close = True
            elif name == "x-sidepool-error":
                local = True
        if length:
            await reader.readexactly(length)
        if close:
            writer.close()
            self.rw = None
        return status, local


async def worker(port, prefix, end, every_ms, make, out):
    conn = Conn(port)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while loop.time() < end:
        method, path, headers, body = make()
        sent = time.perf_counter()
        try:
            status, local = await conn.request(method, prefix + path, headers, body)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            conn = Conn(port)
            status, local = "error", False
        took = (time.perf_counter() - sent) * 1e3
        key = f"{status}{' sidepool' if local else ''}"
        out["statuses"][key] = out["statuses"].get(key, 0) + 1
        if status == 200:
            out["ok_ms"].append(took)
        next_at += every_ms / 1000
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def bots(port, prefix, seconds, flood):
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    md = {"statuses": {}, "ok_ms": []}
    orders = {"statuses": {}, "ok_ms": []}

    def depth():
        return "GET", "/api/v3/depth?symbol=BTCUSDT&limit=100", ["x-sidepool-priority: low"], b""

    def order():
        ts = int(time.time() * 1000)
        body = (f"symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=1"
                f"&timestamp={ts}&signature=0f0e").encode()
        return ("POST", "/api/v3/order",
                ["content-type: application/x-www-form-urlencoded",
                 "x-sidepool-deadline-ms: 1000"], body)

    tasks = []
    for _ in BOTS:
        if flood:
            tasks += [worker(port, prefix, end, MD_EVERY_MS, depth, md) for _ in range(MD_WORKERS)]
        tasks.append(worker(port, prefix, end, ORDER_EVERY_MS, order, orders))
    await asyncio.gather(*tasks)
    return {"market_data": summary(md), "orders": summary(orders)}


def summary(acc):
    s = sorted(acc["ok_ms"])

    def at(p):
        return s[min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))] if s else None

    return {"statuses": acc["statuses"], "ok": len(s), "p50_ms": at(50), "p99_ms": at(99)}


# ---- the scenario -----------------------------------------------------------------------------

def b_log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tally(b):
    """The exchange's counts since the last call (which resets them)."""
    ctx = ssl.create_default_context(cafile=b.ca)
    raw = socket.create_connection(("127.0.0.1", b.port["rate_exchange"]), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="exchange.test") as sock:
        sock.sendall(b"GET /__tally HTTP/1.1\r\nhost: exchange.test\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
                     [0].split(b":")[1])
        while len(body) < length:
            body += sock.recv(65536)
    return json.loads(body)


def guard_counts(b, name):
    """sidepool's rate-limit counters: refused and held, by reason and class (non-zero only)."""
    text = b.sidepool_metrics(b.port[f"{name}_admin"])
    out = {}
    for family in ("refused", "held"):
        for labels, value in prom.samples(text, f"http_pool_rate_limit_{family}_total"):
            if value:
                out[f"{family} reason={labels['reason']} class={labels['class']}"] = value
    return out


def scenario(b):
    seconds = 4 if b.quick else SECONDS
    ex = b.port["rate_exchange"]
    b.start("rate_exchange", [sys.executable, os.path.join(HERE, "rate_exchange.py"), str(ex),
                              os.path.join(b.work, "ex.pem"), os.path.join(b.work, "ex.key"),
                              str(LIMIT)], cpu=b.cpu_side)
    b.wait_port(ex, "rate exchange")
    tally(b)
    res = {"limit_per_s": LIMIT, "seconds": seconds, "bots": len(BOTS),
           "md_workers_per_bot": MD_WORKERS, "md_every_ms": MD_EVERY_MS,
           "order_every_ms": ORDER_EVERY_MS, "labels": LABEL, "targets": {}}
    b.start_proxies(ex, which=["haproxy", "nginx"])
    for name, (upstream, _) in SIDEPOOLS.items():
        b.stop(name)
        b.start_sidepool(ex, name=name, extra_upstream=upstream)
    for t in TARGETS:
        flood = SIDEPOOLS.get(t, (None, True))[1]
        port, prefix, _ = b.target(t)
        argv = [sys.executable, os.path.join(HERE, "rate_pressure.py"), "bots", "--port",
                str(port), "--prefix", prefix, "--seconds", str(seconds)]
        if not flood:
            argv.append("--no-flood")
        got = json.loads(b.run_json(argv, cpu=b.cpu_side, timeout=seconds + 60))
        got["exchange"] = tally(b)
        if t in SIDEPOOLS:
            got["sidepool"] = guard_counts(b, t)
        res["targets"][t] = got
        o = got["orders"]
        b_log(f"rate pressure: {t}: exchange {got['exchange']}, orders {o['statuses']} "
              f"p50 {o['p50_ms']} p99 {o['p99_ms']}")
        # Let the exchange forget this target's ban before the next one.
        time.sleep(1)
    for name in SIDEPOOLS:
        b.stop(name)
    b.stop_proxies()
    b.stop("rate_exchange")
    return res


def fmt(v):
    return "–" if v is None else f"{v:.1f}"


def markdown(res):
    """The scenario's table for docs/benchmarks.md."""
    out = [f"{res['bots']} bots, each {res['md_workers_per_bot']} market-data pollers (weight 5, "
           f"every {res['md_every_ms']} ms) and one order loop (every {res['order_every_ms']} ms), "
           f"{res['seconds']} s per target; exchange limit {res['limit_per_s']} weight per "
           "1-second window. Latencies in ms, of orders answered 200.\n",
           "| target | exchange 200 | exchange 429 | 418 bans served | arrived during a "
           "cooldown | heaviest window | orders 200 | orders refused by sidepool | order p50 | "
           "order p99 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for t, e in res["targets"].items():
        ex, o = e["exchange"], e["orders"]
        refused = sum(n for k, n in o["statuses"].items() if k.endswith("sidepool"))
        out.append(f"| {res['labels'][t]} | {ex['ok']} | {ex['too_many']} | {ex['banned']} | "
                   f"{ex['during_cooldown']} | {ex['max_window_weight']} | {o['ok']} | "
                   f"{refused} | {fmt(o['p50_ms'])} | {fmt(o['p99_ms'])} |")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "bots":
        p = argparse.ArgumentParser()
        p.add_argument("mode")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--prefix", default="/ex")
        p.add_argument("--seconds", type=float, default=SECONDS)
        p.add_argument("--no-flood", action="store_true")
        a = p.parse_args()
        print(json.dumps(asyncio.run(bots(a.port, a.prefix, a.seconds, not a.no_flood))))
        return
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)["rate_pressure"]))


if __name__ == "__main__":
    main()
