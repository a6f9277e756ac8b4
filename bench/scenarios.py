"""The first round's scenarios (naive bots, keep-alive, added latency, growth, work per
request); the later ones live in their own files (quiet_spell.py, rate_pressure.py, ...), each
with a `scenario(bench)` function."""

import os
import random
import time

from common import PROXIES, VARIANTS, log
from prom import gauge, histogram_delta, pct


class Scenarios:
    """Methods of `bench.Bench`; `self` is the bench."""

    def scenario_naive(self):
        res = {"links": []}
        rtts = [0, 20, 100]
        for rtt in rtts:
            n = self.args.naive_n if rtt < 100 else max(10, self.args.naive_n * 6 // 10)
            link = {"rtt_ms": rtt, "requests": n, "targets": {}}
            if rtt:
                self.start_delay(rtt, precise=True)
                upstream = self.port["delay"]
                link["keepalive_request_ms"] = self.delay_keepalive_ms()
                link["tcp_connect_ms"] = self.delay_connect_ms()
            else:
                self.stop("delay")
                upstream = self.port["exchange"]
            log(f"naive bot, link rtt {rtt} ms, {n} requests per target")
            self.start_proxies(upstream)
            targets = ["direct"] + PROXIES
            rounds = 1 if self.quick else 2
            per = {t: {"samples": [], "cold": None, "statuses": {}, "errors": 0,
                       "tls_full": 0, "tls_resumed": 0, "tcp_connections": 0} for t in targets}
            for rnd in range(rounds):
                order = targets[:]
                random.Random(rtt * 10 + rnd).shuffle(order)
                for t in order:
                    before = self.exchange_counts()
                    port = self.port["delay"] if (t == "direct" and rtt) else None
                    r = self.naive_run(t, n // rounds, port)
                    d = self.exchange_delta(before)
                    p = per[t]
                    if rnd == 0:
                        p["cold"] = r["cold_ms"]
                        p["samples"] += r["samples"][1:]
                    else:
                        p["samples"] += r["samples"]
                    for k, v in r["statuses"].items():
                        p["statuses"][k] = p["statuses"].get(k, 0) + v
                    p["errors"] += r["errors"]
                    for k in ("tls_full", "tls_resumed", "tcp_connections"):
                        p[k] += d[k]
            for t in targets:
                p = per[t]
                samples = p.pop("samples")
                p["warm"] = pct(samples)
                p["cold_ms"] = p.pop("cold")
                p["tls_handshakes"] = p["tls_full"] + p["tls_resumed"]
                p["requests"] = len(samples) + 1
                link["targets"][t] = p
            self.stop_proxies()
            res["links"].append(link)
        self.stop("delay")
        return res

    def scenario_keepalive(self):
        conns = [1, 16, 64, 256]
        # Many short rounds rather than a few long ones: the machine's speed drifts over tens of
        # seconds, and each ratio is taken within one round, so more, closer pairs are steadier.
        seconds = 2 if self.quick else 3
        rounds = 1 if self.quick else 9
        # The busy-polling modes too, each started only for its own runs (with a 1 s warm-up,
        # as the others had once at the start); the target is judged on default settings.
        modes = ["sidepool_bp2ms", "haproxy_bp"]
        targets = ["direct"] + PROXIES + modes
        self.start_proxies(self.port["exchange"])
        log("keep-alive load: warm-up")
        for t in targets:
            if t not in VARIANTS:
                self.wrk(t, 16, 1)
        res = {"seconds": seconds, "rounds": rounds, "runs": []}
        for c in conns:
            acc = {t: [] for t in targets}
            for rnd in range(rounds):
                order = targets[:]
                random.Random(c * 7 + rnd).shuffle(order)
                for t in order:
                    proc = VARIANTS[t][0] if t in VARIANTS else t
                    if t in VARIANTS:
                        self.start_variant(t)
                        self.wrk(t, 16, 1)
                    cpu0 = self.cpu_seconds(proc) if t != "direct" else None
                    r = self.wrk(t, c, seconds)
                    if t != "direct":
                        cpu = self.cpu_seconds(proc) - cpu0
                        r["cpu_seconds"] = cpu
                        r["cpu_us_per_request"] = cpu / max(1, r["requests"]) * 1e6
                        r["cpu_utilization"] = cpu / (r["duration_us"] / 1e6)
                        r["rss_bytes"] = self.rss_bytes(proc)
                        r["rss_peak_bytes"] = self.rss_bytes(proc, "VmHWM")
                    if t in VARIANTS:
                        self.stop(proc)
                        self.start_proxies(self.port["exchange"], which=[proc])
                        self.wrk(proc, 16, 1)
                    acc[t].append(r)
                    log(f"  c{c} {t}: {r['ok_rps']:.0f} 2xx/s, p50 {r['lat_p50_us']} us, "
                        f"p99 {r['lat_p99_us']} us, non-2xx {r['non2xx_fraction']:.1%}")
            for t in targets:
                runs = acc[t]
                best = sorted(runs, key=lambda r: r["ok_rps"])[len(runs) // 2]
                entry = {"target": t, "connections": c, "median_of": len(runs),
                         "all_ok_rps": [r["ok_rps"] for r in runs],
                         "all_cpu_us_per_request": [r.get("cpu_us_per_request") for r in runs],
                         "all_busy_fraction": [r.get("busy_fraction") for r in runs]}
                entry.update(best)
                res["runs"].append(entry)
        self.stop_proxies()
        return res

    def scenario_work(self):
        """What each proxy does per request, measured so that this machine's timing noise cannot
        move it: system calls and context switches (kernel counters, perf stat) under wrk
        load, and user-space instructions (callgrind) over a fixed number of requests; 16
        kept-alive clients, every request proxied to the exchange. The kernel counts are taken
        again at 64 clients, where requests queue and arrive in bursts."""
        conns = 16
        busy = 64
        per_conn = 50 if self.quick else 200
        res = {"clients": conns, "busy_clients": busy, "requests_counted": conns * per_conn,
               "targets": []}
        log(f"work per request: {conns} clients; perf stat under wrk, callgrind over "
            f"{conns * per_conn} requests")
        for t in PROXIES:
            entry = {"target": t}
            entry.update(self.count_kernel_events(t, conns))
            entry["busy"] = self.count_kernel_events(t, busy)
            entry.update(self.count_instructions(t, conns, per_conn))
            res["targets"].append(entry)
            log(f"  {t}: {entry['syscalls_per_request']:.2f} system calls, "
                f"{entry['context_switches_per_request']:.3f} context switches, "
                f"{entry['instructions_per_request']:,.0f} user-space instructions per request")
        return res

    def scenario_added_latency(self):
        rate = self.args.rate
        seconds = 2 if self.quick else 4
        rounds = 1 if self.quick else 5
        targets = ["direct", "relay"] + PROXIES + list(VARIANTS)
        self.start_proxies(self.port["exchange"])
        samples = {t: [] for t in targets}
        info = {t: {"late_sends": 0, "statuses": {}, "cpu_seconds": 0.0, "wall_seconds": 0.0}
                for t in targets}
        log(f"added latency: {rate} req/s, one kept-alive connection, {rounds}x{seconds}s each")
        for rnd in range(rounds):
            order = targets[:]
            random.Random(99 + rnd).shuffle(order)
            for t in order:
                base = VARIANTS[t][0] if t in VARIANTS else t
                if t in VARIANTS:
                    self.start_variant(t)
                proc = base if base in PROXIES else ("haproxy" if t == "relay" else None)
                spath = os.path.join(self.work, "rate-samples.txt")
                cpu0, t0 = (self.cpu_seconds(proc) if proc else 0.0), time.monotonic()
                r = self.client("rate", t, rate=rate, seconds=seconds, warmup=300,
                                samples=spath)
                if proc:
                    info[t]["cpu_seconds"] += self.cpu_seconds(proc) - cpu0
                    info[t]["wall_seconds"] += time.monotonic() - t0
                with open(spath) as f:
                    samples[t] += [float(x) for x in f.read().split()]
                info[t]["late_sends"] += r["late_sends"]
                for k, v in r["statuses"].items():
                    info[t]["statuses"][k] = info[t]["statuses"].get(k, 0) + v
                if t in VARIANTS:
                    self.stop(base)
                    self.start_proxies(self.port["exchange"], which=[base])
        self.stop_proxies()
        res = {"rate": rate, "seconds_per_round": seconds, "rounds": rounds, "targets": {},
               "variants": {t: {"base": b, "settings": kw} for t, (b, kw) in VARIANTS.items()}}
        base = pct(samples["direct"])
        for t in targets:
            p = pct(samples[t])
            entry = {"latency_us": p, **info[t]}
            # The proxy's CPU over its runs (warm-up and process start included), as a share
            # of one core: what a latency mode costs. The relay shares HAProxy's process.
            if info[t]["wall_seconds"]:
                entry["cpu_share"] = info[t]["cpu_seconds"] / info[t]["wall_seconds"]
            if t != "direct":
                entry["added_p50_us"] = p["p50"] - base["p50"]
                entry["added_p99_us"] = p["p99"] - base["p99"]
            res["targets"][t] = entry
        return res

    def scenario_growth(self):
        res = {}
        # RSS with K idle upstream connections: the upstream is behind a 50 ms delay line so
        # that K simultaneous requests really need K connections.
        self.start_delay(50)
        self.start_sidepool(self.port["delay"], name="growth", per_host=1000, max_conn=2000)
        admin = self.port["growth_admin"]
        time.sleep(0.5)
        rss = [{"idle_connections": 0, "rss_bytes": self.rss_bytes("growth")}]
        for k in ([10, 100] if self.quick else [10, 100, 1000]):
            for _attempt in range(3):
                before = self.exchange_counts()
                self.client("fill", "growth", n=k)
                idle = gauge(self.sidepool_metrics(admin), "http_pool_connections_idle")
                if idle >= k:
                    break
            time.sleep(1.0)
            idle = gauge(self.sidepool_metrics(admin), "http_pool_connections_idle")
            rss.append({"idle_connections": idle, "target": k,
                        "rss_bytes": self.rss_bytes("growth")})
            log(f"  {idle:.0f} idle upstream connections: RSS {rss[-1]['rss_bytes'] / 2**20:.1f} MiB")
        res["rss"] = rss
        if len(rss) >= 3:
            a, b = rss[1], rss[-1]
            res["bytes_per_idle_connection"] = (
                (b["rss_bytes"] - a["rss_bytes"]) / max(1, b["idle_connections"] - a["idle_connections"]))
        self.stop("growth")
        self.stop("delay")

        # Requests/s with 1, 10, 50 upstreams configured and used.
        names = [(f"ex{i:02d}", f"ex{i:02d}.exchange.test") for i in range(1, 51)]
        self.start_sidepool(self.port["exchange"], name="multi", per_host=30, max_conn=2000,
                            upstreams=names)
        seconds = self.args.seconds
        rounds = 1 if self.quick else 2
        multi = []
        self.wrk("multi", 64, 1, upstreams=50)
        for n in [1, 10, 50]:
            runs = []
            for _ in range(rounds):
                cpu0 = self.cpu_seconds("multi")
                r = self.wrk("multi", 64, seconds, upstreams=n)
                r["cpu_us_per_request"] = (self.cpu_seconds("multi") - cpu0) / max(1, r["requests"]) * 1e6
                runs.append(r)
            best = sorted(runs, key=lambda r: r["ok_rps"])[len(runs) // 2]
            best["upstreams"] = n
            best["rss_bytes"] = self.rss_bytes("multi")
            multi.append(best)
            log(f"  {n} upstreams: {best['ok_rps']:.0f} 2xx/s")
        res["upstreams"] = multi
        self.stop("multi")

        # Queue behaviour: demand 1x, 2x, 10x the cap (closed-loop clients, each with one
        # request in flight) over the 20 ms link, so each request holds a connection ~20 ms.
        self.start_delay(20)
        self.start_proxies(self.port["delay"])
        for t in PROXIES:
            self.wrk(t, 30, 1)
        queue = []
        qsec = 3 if self.quick else 5
        for factor in [1, 2, 10]:
            c = 30 * factor
            for t in PROXIES:
                # wrk stops with requests in flight; a proxy may close those upstream
                # connections. Refill the pool with 30 requests that all complete, so every
                # measured run starts with 30 open connections.
                self.client("fill", t, n=30)
                m0 = self.sidepool_metrics(self.port["sidepool_admin"]) if t == "sidepool" else None
                r = self.wrk(t, c, qsec)
                r.update({"target": t, "demand_factor": factor, "connections": c})
                if m0 is not None:
                    m1 = self.sidepool_metrics(self.port["sidepool_admin"])
                    r["queue_wait"] = histogram_delta(m0, m1, "http_pool_queue_wait_seconds")
                if t == "haproxy":
                    r["haproxy_stats"] = self.haproxy_stats()
                queue.append(r)
                log(f"  demand {factor}x ({c} clients) {t}: {r['ok_rps']:.0f} 2xx/s, "
                    f"non-2xx {r['non2xx_fraction']:.1%}, p99 {r['lat_p99_us'] / 1000:.1f} ms")
        res["queue"] = {"link_rtt_ms": 20, "seconds": qsec, "runs": queue}
        self.stop_proxies()
        self.stop("delay")
        return res
