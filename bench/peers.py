"""The lab's peers and their configs: the fake exchange (nginx), the delay line, and the proxies
under test (sidepool, HAProxy, nginx) with the lab configs every scenario uses."""

import os
import socket
import subprocess
import urllib.request

import quiet_spell
from common import HERE, ORDER_JSON, PROXIES, PY, TICKER_JSON, VARIANTS


class Peers:
    """Methods of `bench.Bench`; `self` is the bench."""

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

    def start_delay(self, rtt_ms, precise=False):
        self.stop("delay")
        argv = [PY, os.path.join(HERE, "delay.py"), str(self.port["delay"]),
                str(self.port["exchange"]), str(rtt_ms)] + (["--precise"] if precise else [])
        self.start("delay", argv, cpu=self.cpu_side)
        self.wait_port(self.port["delay"], "delay line")

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

    def sidepool_metrics(self, admin_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            return r.read().decode()

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
