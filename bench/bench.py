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
import glob
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import log_lines
import quiet_spell
import rate_pressure
import shared_store
import intercept_cost

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
TICKER_PATH = "/v5/market/tickers?category=spot&symbol=BTCUSDT"

# ~500 bytes, shaped like a real spot ticker answer.
TICKER_JSON = (
    '{"retCode":0,"retMsg":"OK","result":{"category":"spot","list":[{"symbol":"BTCUSDT",'
    '"bid1Price":"97123.45","bid1Size":"0.812","ask1Price":"97123.46","ask1Size":"1.204",'
    '"lastPrice":"97123.45","prevPrice24h":"95210.00","price24hPcnt":"0.0201",'
    '"highPrice24h":"97500.00","lowPrice24h":"94800.10","turnover24h":"1834567123.4521",'
    '"volume24h":"19123.456789","usdIndexPrice":"97120.331","openInterest":"",'
    '"fundingRate":"","nextFundingTime":"","markPrice":"","indexPrice":""}]},'
    '"retExtInfo":{},"time":1732345678901,"seq":"1234567890123","source":"bench-exchange",'
    '"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
)
ORDER_JSON = (
    '{"retCode":0,"retMsg":"OK","result":{"orderId":"1321003749386327552",'
    '"orderLinkId":"bench-1"},"retExtInfo":{},"time":1732345678901}'
)

PROXIES = ["sidepool", "haproxy", "nginx"]
# Latency-mode variants, measured in the added-latency scenario only: each runs on its base
# proxy's port, started just for its own runs (HAProxy's busy-polling spins even when idle).
# sidepool's window is longer than the 1 ms between requests at 1,000 req/s, so it never sleeps
# while traffic flows, like HAProxy's busy-polling; 300 us shows a window that only covers the
# exchange's answer.
VARIANTS = {
    "sidepool_bp300us": ("sidepool", {"busy_poll": "300us"}),
    "sidepool_bp2ms": ("sidepool", {"busy_poll": "2ms"}),
    "haproxy_bp": ("haproxy", {"busy_polling": True}),
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
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

    def placement_text(self):
        if not self.pin:
            return "not pinned (fewer than 2 CPUs or --no-pin)"
        return (
            "proxy under test alone on CPU 1 (one worker: sidepool TOKIO_WORKER_THREADS=1, HAProxy "
            "nbthread 1, nginx worker_processes 1); fake exchange (1 nginx worker), delay line and "
            "load generator on CPU 0; the direct client (no proxy) runs on CPU 1"
        )

    # ---- processes ---------------------------------------------------------------------------

    def start(self, name, argv, cpu=None, env=None, sink=None):
        # A tool that runs the process under observation (callgrind), set per target name.
        argv = self.wrappers.get(name, []) + argv
        if cpu is not None:
            argv = ["taskset", "-c", cpu] + argv
        # `sink`: where the output goes instead of the work folder (the logging scenario sends
        # every proxy's log lines to /dev/null, so none pays for a disk).
        logf = open(sink or os.path.join(self.work, f"{name}.log"), "ab")
        # SIDEPOOL_* is sidepool's config namespace (an unknown key stops it), so the harness's
        # own variables such as SIDEPOOL_BIN are not passed on.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEPOOL_")}
        if env:
            full_env.update(env)
        proc = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=full_env,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name):
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def wait_port(self, port, what, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s "
                           f"(see {self.work}/*.log)")

    def check_free(self):
        busy = []
        for name, port in self.port.items():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{name}={port}")
            finally:
                s.close()
        if busy:
            raise RuntimeError("ports in use: " + ", ".join(busy) + "; pick another --port-base")

    def run_json(self, argv, cpu=None, timeout=600, env=None):
        if cpu is not None:
            argv = ["taskset", "-c", cpu] + argv
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env)
        if res.returncode != 0:
            raise RuntimeError(f"{argv[:4]}... failed: {res.stderr[-2000:]}")
        return res.stdout

    # ---- the fake exchange -------------------------------------------------------------------

    def make_certs(self):
        w = self.work
        run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=w)
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
        run("openssl", "req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2",
            "-subj", "/CN=bench throwaway CA", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ex.key")
        run("openssl", "req", "-new", "-key", "ex.key", "-subj", "/CN=exchange.test",
            "-out", "ex.csr")
        with open(os.path.join(w, "ex.ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                    "extendedKeyUsage=serverAuth\n"
                    "subjectAltName=DNS:exchange.test,DNS:*.exchange.test\n")
        run("openssl", "x509", "-req", "-in", "ex.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "ex.ext", "-out", "ex.pem")

    def nginx_common(self, name):
        w = self.work
        return (
            f"worker_processes 1;\nworker_rlimit_nofile 16384;\npid {w}/{name}.pid;\n"
            # crit: at its cap nginx logs every 502 ("no live upstreams") at error level, and
            # writing hundreds of MB of log would slow it down.
            f"error_log {w}/{name}.err crit;\n"
            "events { worker_connections 8000; }\n"
        ), (
            f"client_body_temp_path {w}/{name}-body; proxy_temp_path {w}/{name}-proxy;\n"
            f"fastcgi_temp_path {w}/{name}-fcgi; uwsgi_temp_path {w}/{name}-uwsgi;\n"
            f"scgi_temp_path {w}/{name}-scgi;\n"
        )

    def start_exchange(self):
        w = self.work
        top, temps = self.nginx_common("exchange")
        locations = (
            f"    location = /v5/market/tickers {{ return 200 '{TICKER_JSON}'; }}\n"
            f"    location = /v5/order/create {{ return 200 '{ORDER_JSON}'; }}\n"
            "    location / { return 404 '{\"retCode\":10404,\"retMsg\":\"not found\"}'; }"
        )
        conf = f"""{top}
http {{
  {temps}
  default_type application/json;
  access_log off;
  keepalive_timeout 120s;
  keepalive_requests 10000000;
  # One log line per TLS connection (written at its first request): handshakes, full or resumed.
  map $connection_requests $first_request {{ 1 1; default 0; }}
  log_format conn '$connection $ssl_session_reused $ssl_protocol';
  server {{
    listen 127.0.0.1:{self.port['exchange']} ssl backlog=4096;
    server_name exchange.test *.exchange.test;
    ssl_certificate {w}/ex.pem;
    ssl_certificate_key {w}/ex.key;
    ssl_protocols TLSv1.2 TLSv1.3;  # nginx 1.22's default has no TLS 1.3; exchanges offer it
    ssl_session_cache shared:bench:10m;
    ssl_session_timeout 1h;
    access_log {w}/exchange-conns.log conn if=$first_request;
{locations}
  }}
{quiet_spell.exchange_server(self, locations)}  server {{
    listen 127.0.0.1:{self.port['exchange_status']};
    location = /stub {{ stub_status; }}
  }}
}}
"""
        path = os.path.join(w, "exchange.conf")
        with open(path, "w") as f:
            f.write(conf)
        open(os.path.join(w, "exchange-conns.log"), "a").close()
        self.start("exchange", ["nginx", "-p", w, "-c", path, "-g", "daemon off;"],
                   cpu=self.cpu_side)
        self.wait_port(self.port["exchange"], "fake exchange")
        self.wait_port(self.port["exchange_status"], "fake exchange status")

    def exchange_stub_status(self):
        """The fake exchange's nginx stub_status counters: (accepts, handled, requests)."""
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port['exchange_status']}/stub", timeout=5) as r:
            accepts, handled, requests = r.read().decode().splitlines()[2].split()
        return int(accepts), int(handled), int(requests)

    def exchange_counts(self):
        """(tcp connections accepted, TLS connections full handshake, resumed)."""
        accepts = self.exchange_stub_status()[0]
        full = resumed = 0
        with open(os.path.join(self.work, "exchange-conns.log")) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    if parts[1] == "r":
                        resumed += 1
                    else:
                        full += 1
        return accepts, full, resumed

    def exchange_delta(self, before):
        after = self.exchange_counts()
        # Each reading of stub_status is itself one (plain) connection: the "after" one.
        return {
            "tcp_connections": after[0] - before[0] - 1,
            "tls_handshakes": (after[1] - before[1]) + (after[2] - before[2]),
            "tls_full": after[1] - before[1],
            "tls_resumed": after[2] - before[2],
        }

    # ---- delay line --------------------------------------------------------------------------

    def start_delay(self, rtt_ms, precise=False):
        self.stop("delay")
        argv = [PY, os.path.join(HERE, "delay.py"), str(self.port["delay"]),
                str(self.port["exchange"]), str(rtt_ms)] + (["--precise"] if precise else [])
        self.start("delay", argv, cpu=self.cpu_side)
        self.wait_port(self.port["delay"], "delay line")

    # ---- proxies -----------------------------------------------------------------------------

    def sidepool_config(self, name, port, admin, upstream_port, per_host=30, max_conn=100,
                        upstreams=None, queue_timeout="5s", busy_poll=None,
                        log_level="warn", log_format=None, extra_pool=(), extra_upstream=(),
                        extra_sections=()):
        lines = [
            "[listen]",
            f'proxy = "127.0.0.1:{port}"',
            f'admin = "127.0.0.1:{admin}"',
            'drain_timeout = "1s"',
            "[pool]",
            f"max_connections = {max_conn}",
            f"max_connections_per_host = {per_host}",
            'idle_timeout = "30s"',
            f'queue_timeout = "{queue_timeout}"',
            *extra_pool,
            "[dns.static]",
            '"exchange.test" = "127.0.0.1"',
        ]
        names = upstreams or [("ex", "exchange.test")]
        for _, host in names:
            if host != "exchange.test":
                lines.append(f'"{host}" = "127.0.0.1"')
        lines += ["[tls]", f'ca_files = ["{self.ca}"]', "[log]"]
        # None: sidepool's default level ("info", one line per request).
        if log_level:
            lines.append(f'level = "{log_level}"')
        if log_format:
            lines.append(f'format = "{log_format}"')
        if busy_poll:
            lines += ["[runtime]", f'busy_poll = "{busy_poll}"']
        for uname, host in names:
            lines += [f"[upstreams.{uname}]", f'url = "https://{host}:{upstream_port}"',
                      *extra_upstream]
        lines += extra_sections
        path = os.path.join(self.work, f"{name}.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start_sidepool(self, upstream_port, name="sidepool", **kw):
        port, admin = self.port[name], self.port[f"{name}_admin"]
        cfg = self.sidepool_config(name, port, admin, upstream_port, **kw)
        env = {"TOKIO_WORKER_THREADS": "1" if self.pin else str(self.cpus), "RUST_LOG": "warn"}
        self.start(name, [self.sidepool_bin, "--config", cfg], cpu=self.cpu_proxy, env=env)
        self.wait_port(port, name)
        return self.procs[name]

    def start_haproxy(self, upstream_port, busy_polling=False):
        w = self.work
        conf = f"""global
  nbthread 1
{"  busy-polling" if busy_polling else ""}
  maxconn 5000
  stats socket {w}/haproxy.sock mode 600 level admin
defaults
  mode http
  timeout connect 10s
  timeout client 30s
  timeout server 30s
  timeout queue 5s
  timeout http-request 30s
  timeout http-keep-alive 30s
  http-reuse always
  option http-keep-alive
  maxconn 5000
frontend fe
  bind 127.0.0.1:{self.port['haproxy']}
  http-request deny deny_status 403 unless {{ path_beg /ex/ }}
  use_backend ex
# The floor of any proxy here: one more loopback hop doing no work (bytes relayed, TLS end
# to end from the client), measured as a reference in the added-latency scenario.
listen relay
  mode tcp
  bind 127.0.0.1:{self.port['relay']}
  server s1 127.0.0.1:{upstream_port}
backend ex
  http-request replace-path ^/ex(/.*)$ \\1
  http-request set-header Host exchange.test
  server s1 127.0.0.1:{upstream_port} ssl verify required ca-file {self.ca} sni str(exchange.test) maxconn 30 pool-purge-delay 30s
"""
        path = os.path.join(w, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(conf)
        self.start("haproxy", ["haproxy", "-db", "-f", path], cpu=self.cpu_proxy)
        self.wait_port(self.port["haproxy"], "haproxy")
        return self.procs["haproxy"]

    def start_nginx(self, upstream_port, single_process=False):
        w = self.work
        top, temps = self.nginx_common("nginx-proxy")
        conf = f"""{top}
http {{
  {temps}
  access_log off;
  keepalive_timeout 30s;
  keepalive_requests 10000000;
  upstream ex {{
    server 127.0.0.1:{upstream_port} max_conns=30;
    keepalive 30;
    keepalive_timeout 30s;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{self.port['nginx']} backlog=4096;
    location /ex/ {{
      proxy_pass https://ex/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host exchange.test;
      proxy_ssl_server_name on;
      proxy_ssl_name exchange.test;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {self.ca};
      proxy_ssl_session_reuse on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;  # 1.22's default stops at TLS 1.2
      proxy_connect_timeout 10s;
      proxy_read_timeout 30s;
    }}
    location / {{ return 403; }}
  }}
}}
"""
        path = os.path.join(w, "nginx-proxy.conf")
        with open(path, "w") as f:
            f.write(conf)
        # One process (no master) when the worker itself must be the process started, so that
        # a wrapper such as callgrind sees the requests.
        directives = "daemon off; master_process off;" if single_process else "daemon off;"
        self.start("nginx", ["nginx", "-p", w, "-c", path, "-g", directives],
                   cpu=self.cpu_proxy)
        self.wait_port(self.port["nginx"], "nginx")
        return self.procs["nginx"]

    def start_proxies(self, upstream_port, which=PROXIES):
        for name in which:
            self.stop(name)
            getattr(self, f"start_{name}")(upstream_port)

    def stop_proxies(self):
        for name in PROXIES:
            self.stop(name)

    def start_variant(self, name):
        """Replaces the variant's base proxy with the variant (same name and port)."""
        base, kw = VARIANTS[name]
        self.stop(base)
        getattr(self, f"start_{base}")(self.port["exchange"], **kw)

    def target(self, name):
        """(port, path prefix, tls) for a target."""
        if name in VARIANTS:
            return self.target(VARIANTS[name][0])
        if name == "direct":
            return self.port["exchange"], "", True
        if name == "relay":
            return self.port["relay"], "", True
        if name == "multi":
            return self.port["multi"], "", False
        return self.port[name], "/ex", False

    # ---- process accounting ------------------------------------------------------------------

    def pids_of(self, name):
        """The process and its children (nginx's worker), skipping the taskset wrapper."""
        proc = self.procs[name]
        pids, todo = [], [proc.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
        return pids

    def cpu_seconds(self, name):
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids_of(name):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / tick

    def rss_bytes(self, name, field="VmRSS"):
        total = 0
        for pid in self.pids_of(name):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(field + ":"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def sidepool_metrics(self, admin_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            return r.read().decode()

    # ---- load generators ---------------------------------------------------------------------

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

    # ---- scenarios ---------------------------------------------------------------------------

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

    def haproxy_stats(self):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(3)
            s.connect(os.path.join(self.work, "haproxy.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
        except OSError:
            return None
        lines = data.decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == "ex" and row.get("svname") == "s1":
                return {k: row.get(k) for k in ("qmax", "qtime", "qtime_max", "smax", "econ",
                                                "eresp", "wretr", "wredis")}
        return None

    # ---- the run ------------------------------------------------------------------------------

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
        scenarios = [("naive", self.scenario_naive), ("keepalive", self.scenario_keepalive),
                     ("added_latency", self.scenario_added_latency),
                     ("growth", self.scenario_growth), ("work", self.scenario_work),
                     ("logging", lambda: log_lines.scenario(self)),
                     ("quiet_spell", lambda: quiet_spell.scenario(self)),
                     ("rate_pressure", lambda: rate_pressure.scenario(self)),
                     ("shared_store", lambda: shared_store.scenario(self)),
                     ("intercept", lambda: intercept_cost.scenario(self))]
        for key, fn in scenarios:
            if only and key not in only:
                continue
            s = time.monotonic()
            self.results[key] = fn()
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


def cpu_ticks():
    """Per-CPU (total, steal, idle + iowait) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                nums = [int(v) for v in vals]
                out[name] = (sum(nums[:8]), nums[7] if len(nums) > 7 else 0,
                             nums[3] + nums[4])
    return out


def steal_fraction(before, after):
    total = after[0] - before[0]
    return (after[1] - before[1]) / total if total > 0 else 0.0


def busy_fraction(before, after):
    """The share of a CPU's time spent running anything (not idle, not stolen)."""
    total = after[0] - before[0]
    idle = (after[2] - before[2]) + (after[1] - before[1])
    return 1 - idle / total if total > 0 else 0.0


def pct(samples):
    if not samples:
        return {}
    s = sorted(samples)

    def at(p):
        return s[min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))]

    return {"n": len(s), "mean": sum(s) / len(s), "p50": at(50), "p90": at(90), "p99": at(99),
            "min": s[0], "max": s[-1]}


def gauge(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def counter(text, name):
    """Sum of a counter over all its label sets."""
    return gauge(text, name)


def counter_by(after, before, name, label):
    """Per value of `label`, the increase of a counter between two scrapes (non-zero only)."""
    def parse(text):
        out = {}
        for line in text.splitlines():
            if line.startswith(name + "{"):
                m = re.search(label + r'="([^"]*)"', line)
                key = m.group(1) if m else ""
                out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    a, b = parse(after), parse(before)
    return {k: v - b.get(k, 0.0) for k, v in a.items() if v - b.get(k, 0.0) > 0}


def histogram_delta(before, after, name):
    """Count, mean and an interpolated p99 of a Prometheus histogram between two scrapes."""
    def parse(text):
        buckets, total, count = {}, 0.0, 0.0
        for line in text.splitlines():
            if line.startswith(name + "_bucket{"):
                le = re.search(r'le="([^"]+)"', line).group(1)
                buckets[float("inf") if le == "+Inf" else float(le)] = \
                    buckets.get(float("inf") if le == "+Inf" else float(le), 0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith(name + "_sum"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith(name + "_count"):
                count += float(line.rsplit(" ", 1)[1])
        return buckets, total, count

    b0, s0, c0 = parse(before)
    b1, s1, c1 = parse(after)
    count = c1 - c0
    if count <= 0:
        return {"count": 0}
    les = sorted(b1)
    cum = [(le, b1[le] - b0.get(le, 0)) for le in les]

    def quantile(q):
        rank = q * count
        prev_le, prev_c = 0.0, 0.0
        for le, c in cum:
            if c >= rank:
                if le == float("inf"):
                    return prev_le
                frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
                return prev_le + (le - prev_le) * frac
            prev_le, prev_c = le, c
        return prev_le

    return {"count": count, "mean_s": (s1 - s0) / count, "p50_s": quantile(0.5),
            "p99_s": quantile(0.99),
            "note": "interpolated inside histogram buckets (0.1, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250 ms ...)"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--sidepool-bin", required=True)
    p.add_argument("--port-base", type=int, default=27000)
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--only", help="comma list: naive,keepalive,added_latency,growth,work,logging,quiet_spell,rate_pressure,shared_store,intercept")
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
