"""Load generation: wrk for steady load, bench/client.py for the bot-shaped clients, the smoke
test, and the kernel-event and instruction counts."""

import glob
import json
import os
import re
import socket
import subprocess
import threading
import time

from common import HERE, PROXIES, PY, TICKER_PATH, log
from procs import busy_fraction, cpu_ticks, steal_fraction
from prom import counter, counter_by


class Load:
    """Methods of `bench.Bench`; `self` is the bench."""

    def wrk(self, target, conns, seconds, upstreams=0, path=TICKER_PATH, cpu=None):
        port, prefix, tls = self.target(target)
        scheme = "https" if tls else "http"
        url = f"{scheme}://127.0.0.1:{port}{prefix}{path}"
        if upstreams:
            url = f"http://127.0.0.1:{port}/"
        cpu = cpu if cpu is not None else (self.cpu_proxy if target == "direct" else self.cpu_side)
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
                "-s", os.path.join(HERE, "wrk.lua"), url]
        env = {"BENCH_UPSTREAMS": str(upstreams)}
        admin = {"sidepool": "sidepool_admin", "multi": "multi_admin"}.get(target)
        m0 = self.sidepool_metrics(self.port[admin]) if admin else None
        ex0 = self.exchange_counts()
        st0 = cpu_ticks()
        out = self.run_json(argv, cpu=cpu, timeout=seconds + 60, env=env)
        st1 = cpu_ticks()
        ex = self.exchange_delta(ex0)
        m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
        if not m:
            raise RuntimeError("wrk printed no summary:\n" + out[-2000:])
        r = json.loads(m.group(1))
        secs = r["duration_us"] / 1e6
        non2xx = r["err_status"]
        r["rps"] = r["requests"] / secs
        r["ok_rps"] = (r["requests"] - non2xx) / secs
        r["non2xx_fraction"] = non2xx / r["requests"] if r["requests"] else 0.0
        # What the exchange saw during the run: new TCP connections and TLS handshakes.
        r["exchange"] = ex
        # Share of each CPU's time taken by the hypervisor for other guests (steal) during the
        # run: a run with much steal ran on a slower machine than its neighbours.
        r["steal_fraction"] = {c: steal_fraction(st0[c], st1[c]) for c in st0}
        # Share of each CPU's time that was not idle: with the proxy alone on one CPU, a load
        # CPU (load generator + exchange) near 100% means the rate was set there, not by the
        # proxy.
        r["busy_fraction"] = {c: busy_fraction(st0[c], st1[c]) for c in st0}
        if m0 is not None:
            m1 = self.sidepool_metrics(self.port[admin])
            r["sidepool_connections"] = {
                "opened": counter(m1, "http_pool_connections_opened_total")
                - counter(m0, "http_pool_connections_opened_total"),
                "closed_by_reason": counter_by(m1, m0, "http_pool_connections_closed_total",
                                               "reason"),
            }
        return r

    def client(self, mode, target, cpu=None, **kw):
        port, prefix, tls = self.target(target)
        argv = [PY, os.path.join(HERE, "client.py"), mode, "--port", str(port)]
        path = kw.pop("path", TICKER_PATH)
        argv += ["--path", prefix + path]
        if tls:
            argv += ["--tls", "--ca", self.ca]
        for k, v in kw.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        if cpu is None:
            cpu = self.cpu_proxy if target == "direct" else self.cpu_side
        return json.loads(self.run_json(argv, cpu=cpu, timeout=900))

    def smoke(self):
        """Every target answers GET and POST with 200 before anything is measured."""
        body = b'{"symbol":"BTCUSDT","side":"Buy","qty":"0.001"}'
        import ssl
        for target in ["direct"] + PROXIES:
            port, prefix, tls = self.target(target)
            for method, path in (("GET", TICKER_PATH), ("POST", "/v5/order/create")):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if tls:
                    ctx = ssl.create_default_context(cafile=self.ca)
                    sock = ctx.wrap_socket(sock, server_hostname="exchange.test")
                req = (f"{method} {prefix}{path} HTTP/1.1\r\nHost: exchange.test\r\n"
                       f"Content-Length: {len(body) if method == 'POST' else 0}\r\n"
                       "Connection: close\r\n\r\n").encode()
                sock.sendall(req + (body if method == "POST" else b""))
                data = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                sock.close()
                status = data.split(b" ", 2)[1]
                if status != b"200":
                    raise RuntimeError(f"smoke: {method} via {target} answered {data[:300]!r}")
        log("smoke test: GET and POST answered 200 directly and via every proxy")

    def naive_run(self, target, n, direct_port=None):
        port, prefix, tls = self.target(target)
        if direct_port:
            port = direct_port
        argv = [PY, os.path.join(HERE, "client.py"), "naive", "--port", str(port),
                "--path", prefix + TICKER_PATH, "--n", str(n), "--pause-ms", "5"]
        if tls:
            argv += ["--tls", "--ca", self.ca]
        cpu = self.cpu_proxy if target == "direct" else self.cpu_side
        samples_path = os.path.join(self.work, "naive-samples.txt")
        argv += ["--samples", samples_path]
        r = json.loads(self.run_json(argv, cpu=cpu, timeout=900))
        with open(samples_path) as f:
            r["samples"] = [float(x) for x in f.read().split()]
        return r

    def delay_keepalive_ms(self):
        """Time of a kept-alive request through the delay line (should be RTT + a little)."""
        argv = [PY, os.path.join(HERE, "client.py"), "rate", "--port", str(self.port["delay"]),
                "--tls", "--ca", self.ca, "--rate", "20", "--seconds", "1", "--warmup", "2"]
        r = json.loads(self.run_json(argv, cpu=self.cpu_side, timeout=120))
        return r["latency"]["p50"] / 1000.0

    def delay_connect_ms(self):
        """TCP connect time through the delay line: 0 by construction (loopback accept); the
        handshake's round trip is charged to the first bytes instead (see delay.py)."""
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            with socket.create_connection(("127.0.0.1", self.port["delay"]), timeout=5):
                samples.append((time.perf_counter() - t0) * 1000)
        return sorted(samples)[len(samples) // 2]

    def count_kernel_events(self, target, conns, seconds=3):
        """System calls and context switches per request, counted by the kernel (perf stat on
        tracepoints and software events, which need no hardware counters) over `seconds` of
        wrk load; requests are counted by the exchange over the same window."""
        self.start_proxies(self.port["exchange"], which=[target])
        self.wrk(target, conns, 1)
        loader = threading.Thread(target=self.wrk, args=(target, conns, seconds + 3))
        loader.start()
        try:
            time.sleep(1.0)
            pids = ",".join(str(p) for p in self.pids_of(target))
            before = self.exchange_stub_status()[2]
            out = subprocess.run(
                ["perf", "stat", "-x", ",", "-e",
                 "raw_syscalls:sys_enter,context-switches,sched:sched_wakeup",
                 "-p", pids, "--", "sleep", str(seconds)],
                capture_output=True, text=True, timeout=seconds + 30).stderr
            requests = self.exchange_stub_status()[2] - before - 1  # the reading itself is one
        finally:
            loader.join()
            self.stop(target)
        counts = {}
        for line in out.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].strip().isdigit():
                counts[fields[2]] = int(fields[0])
        if "raw_syscalls:sys_enter" not in counts or requests <= 0:
            raise RuntimeError(f"perf stat counted nothing for {target}:\n{out[-1000:]}")
        return {"syscalls_per_request": counts["raw_syscalls:sys_enter"] / requests,
                "context_switches_per_request": counts.get("context-switches", 0) / requests,
                # Tasks woken while the proxy ran (the tracepoint fires in the waker): the bot's
                # and the exchange's threads, whose wake-ups cost CPU on their side too.
                "wakeups_per_request": counts.get("sched:sched_wakeup", 0) / requests,
                "requests_in_window": requests}

    def count_instructions(self, target, conns, per_conn):
        """User-space instructions per request: the proxy runs under callgrind; counters are
        zeroed after a warm-up and dumped after exactly conns x per_conn requests."""
        out = os.path.join(self.work, f"callgrind.{target}")
        for old in glob.glob(out + "*"):
            os.remove(old)
        self.wrappers[target] = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        try:
            if target == "nginx":
                self.stop(target)
                self.start_nginx(self.port["exchange"], single_process=True)
            else:
                self.start_proxies(self.port["exchange"], which=[target])
            pid = str(self.procs[target].pid)
            # taskset execs the wrapper, so the process started is valgrind itself.
            self.client("count", target, conns=conns, n=20)
            subprocess.run(["callgrind_control", "-z", pid], capture_output=True, timeout=60,
                           check=True)
            r = self.client("count", target, conns=conns, n=per_conn)
            subprocess.run(["callgrind_control", "-d", pid], capture_output=True, timeout=60,
                           check=True)
            if r["ok"] != conns * per_conn:
                raise RuntimeError(f"{target} under callgrind: {r}")
            dumps = sorted(glob.glob(out + "*"), key=os.path.getmtime)
            with open(dumps[-1]) as f:
                m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
            return {"instructions_per_request": int(m.group(1)) / r["ok"],
                    "instructions_requests": r["ok"]}
        finally:
            self.wrappers.pop(target, None)
            self.stop(target)
