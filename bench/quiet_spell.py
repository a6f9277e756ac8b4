"""The quiet-spell scenario (bench/run --only quiet_spell): a bot that is quiet for longer than the
exchange's idle cutoff, then fires a burst.

The fake exchange answers on a second port whose keep-alive connections are closed after
CUTOFF_S idle (nginx keepalive_timeout), as exchanges and the load balancers in front of them
do. A delay line (bench/delay.py, RTT_MS round trip) sits in front of it, so a new connection
costs the TCP and TLS round trips it costs over a real link. Targets, each started fresh for
every burst size and primed with one burst (a pool is kept warm once it has carried a request):
- sidepool at its defaults (pool.warm_connections = 1, warm_refresh = 50 s);
- sidepool with warm_connections = BURST_MAX (the burst size of the larger bursts);
- the same with warm_refresh below the exchange's cutoff (TUNED_REFRESH), as docs/tuning.md
  advises once the cutoff is known;
- HAProxy and nginx with the lab configs of the other scenarios (pools of up to 30 kept-alive
  connections, 30 s idle timeouts).
Per round, after QUIET_S of silence, each target (in shuffled order) gets one burst: N
connections opened to the proxy first (loopback, not timed), then one request on each, all
written at once; each latency is from its write to its last byte. Right after it the same
burst again, on the connections the first one left: the target's warm value in that round.
Handshakes per request counts the new connections those requests waited for (see burst());
sidepool's background handshakes come from its own counter (http_pool_warm_connects_total).
"""
import json
import os
import random
import sys
import time

import prom

CUTOFF_S = 2
QUIET_S = 4
RTT_MS = 20
BURST_MAX = 8
SIZES = [1, BURST_MAX]

# Below the exchange's cutoff, as docs/tuning.md advises once http_pool_idle_cutoff_seconds
# has shown it.
TUNED_REFRESH = "1500ms"

TARGETS = ["sidepool", "quiet_warm", "quiet_tuned", "haproxy", "nginx"]
SIDEPOOLS = {
    # name: extra [pool] lines
    "quiet_warm": [f"warm_connections = {BURST_MAX}"],
    "quiet_tuned": [f"warm_connections = {BURST_MAX}", f'warm_refresh = "{TUNED_REFRESH}"'],
}
LABEL = {
    "sidepool": "sidepool, defaults (warm_connections 1)",
    "quiet_warm": f"sidepool, warm_connections {BURST_MAX}",
    "quiet_tuned": f"sidepool, warm_connections {BURST_MAX}, warm_refresh {TUNED_REFRESH}",
    "haproxy": "HAProxy (lab config)",
    "nginx": "nginx (lab config)",
}


def add_ports(port, base):
    """Ports base+4, base+5 and base+70 .. base+73."""
    port["exchange_cutoff"] = base + 4
    port["quiet_delay"] = base + 5
    for i, name in enumerate(SIDEPOOLS):
        port[name] = base + 70 + 2 * i
        port[f"{name}_admin"] = base + 71 + 2 * i


def exchange_server(b, locations):
    """The fake exchange's server block that closes idle keep-alive connections."""
    w = b.work
    return f"""  server {{
    listen 127.0.0.1:{b.port['exchange_cutoff']} ssl backlog=4096;
    server_name exchange.test *.exchange.test;
    keepalive_timeout {CUTOFF_S}s;
    ssl_certificate {w}/ex.pem;
    ssl_certificate_key {w}/ex.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:bench:10m;
    ssl_session_timeout 1h;
    access_log {w}/exchange-conns.log conn if=$first_request;
{locations}
  }}
"""


def b_log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_targets(b, upstream):
    b.start_proxies(upstream)
    for name, extra in SIDEPOOLS.items():
        b.stop(name)
        b.start_sidepool(upstream, name=name, extra_pool=extra)


def stop_targets(b):
    b.stop_proxies()
    for name in SIDEPOOLS:
        b.stop(name)


def burst(b, target, n):
    """One burst of n requests; (latencies in ms, handshakes those requests paid, handshakes
    sidepool opened in the background meanwhile). For sidepool, from its own counters: the
    connections it opened less those its warm floor opened (http_pool_warm_connects_total; a
    refill starts as soon as a burst takes the floor, and no request waits for it). For
    HAProxy and nginx, the connections at the exchange whose first request arrived in the
    window (its per-connection log): they open a connection for a request only. Exchange-wide
    counters (stub_status accepts) would also count other targets' background connections."""
    admin = b.port.get(f"{target}_admin")
    m0 = sidepool_counts(b, admin) if admin else None
    e0 = b.exchange_counts()
    r = b.client("burst", target, n=n)
    e1 = b.exchange_counts()
    if r["errors"] or set(r["statuses"]) != {"200"}:
        raise RuntimeError(f"quiet spell: {target} answered {r['statuses']}, "
                           f"{r['errors']} errors")
    if m0 is None:
        return r["samples"], (e1[1] - e0[1]) + (e1[2] - e0[2]), 0
    m1 = sidepool_counts(b, admin)
    opened, warm = m1[0] - m0[0], m1[1] - m0[1]
    return r["samples"], opened - warm, warm


def sidepool_counts(b, admin_port):
    """(connections opened, of which by the warm floor) so far."""
    text = b.sidepool_metrics(admin_port)
    opened = sum(v for _, v in prom.samples(text, "http_pool_connections_opened_total"))
    warm = sum(v for labels, v in prom.samples(text, "http_pool_warm_connects_total")
               if labels.get("result") == "ok")
    return opened, warm


def scenario(b):
    rounds = 2 if b.quick else 16
    res = {"rtt_ms": RTT_MS, "exchange_idle_cutoff_s": CUTOFF_S, "quiet_s": QUIET_S,
           "rounds": rounds, "labels": LABEL, "sizes": []}
    b.start("quiet_delay", [sys.executable, os.path.join(os.path.dirname(__file__), "delay.py"),
                            str(b.port["quiet_delay"]), str(b.port["exchange_cutoff"]),
                            str(RTT_MS)], cpu=b.cpu_side)
    b.wait_port(b.port["quiet_delay"], "delay line")
    upstream = b.port["quiet_delay"]
    for n in SIZES:
        b_log(f"quiet spell: bursts of {n}, {rounds} rounds, quiet {QUIET_S} s, exchange "
              f"cutoff {CUTOFF_S} s, rtt {RTT_MS} ms")
        start_targets(b, upstream)
        for t in TARGETS:
            burst(b, t, n)  # first use: from here on the pool is (or is not) kept warm
        acc = {t: {"quiet": [], "warm": [], "handshakes": 0, "during_burst": 0,
                  "requests": 0} for t in TARGETS}
        bg0 = {t: sidepool_counts(b, b.port[f"{t}_admin"])[1] for t in ("sidepool", *SIDEPOOLS)}
        for rnd in range(rounds):
            time.sleep(QUIET_S)
            order = TARGETS[:]
            random.Random(n * 100 + rnd).shuffle(order)
            for t in order:
                quiet, paid, during = burst(b, t, n)
                warm, _, _ = burst(b, t, n)
                a = acc[t]
                a["quiet"] += quiet
                a["warm"] += warm
                a["handshakes"] += paid
                a["during_burst"] += during
                a["requests"] += n
            b_log(f"  round {rnd + 1}: " + ", ".join(
                f"{t} p50 {pct(acc[t]['quiet'])['p50']:.1f} ms" for t in TARGETS))
        entry = {"burst": n, "targets": {}}
        for t in TARGETS:
            a = acc[t]
            e = {"quiet": pct(a["quiet"]), "warm": pct(a["warm"]),
                 "handshakes_per_request": a["handshakes"] / a["requests"],
                 "requests": a["requests"]}
            if t in bg0:
                e["background_handshakes_per_round"] = (
                    sidepool_counts(b, b.port[f"{t}_admin"])[1] - bg0[t]) / rounds
                e["background_handshakes_during_bursts_per_round"] = a["during_burst"] / rounds
            e["p50_vs_warm"] = e["quiet"]["p50"] / e["warm"]["p50"]
            e["p99_vs_warm"] = e["quiet"]["p99"] / e["warm"]["p99"]
            entry["targets"][t] = e
        stop_targets(b)
        res["sizes"].append(entry)
    b.stop("quiet_delay")
    return res


def pct(samples):
    s = sorted(samples)

    def at(p):
        return s[min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))]

    return {"n": len(s), "p50": at(50), "p99": at(99), "max": s[-1]} if s else {}


def fmt_bg(e):
    bg = e.get("background_handshakes_per_round")
    if bg is None:
        return "–"
    return f"{bg:.1f} ({e['background_handshakes_during_bursts_per_round']:.1f})"


def markdown(res):
    """The scenario's table for docs/benchmarks.md."""
    out = [f"Round trip {res['rtt_ms']} ms, exchange idle cutoff {res['exchange_idle_cutoff_s']} s, "
           f"quiet {res['quiet_s']} s before each burst, {res['rounds']} rounds; latencies in "
           "ms; *warm* is the same burst sent again right after, on the same target.\n",
           "| burst | target | quiet p50 | quiet p99 | warm p50 | warm p99 | p50 / warm | "
           "p99 / warm | handshakes paid / request | background handshakes / round (during the "
           "quiet burst) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for size in res["sizes"]:
        for t, e in size["targets"].items():
            out.append(f"| {size['burst']} | {res['labels'][t]} | {e['quiet']['p50']:.1f} | "
                       f"{e['quiet']['p99']:.1f} | {e['warm']['p50']:.1f} | "
                       f"{e['warm']['p99']:.1f} | {e['p50_vs_warm']:.2f}x | "
                       f"{e['p99_vs_warm']:.2f}x | {e['handshakes_per_request']:.2f} | "
                       f"{fmt_bg(e)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)["quiet_spell"]))
