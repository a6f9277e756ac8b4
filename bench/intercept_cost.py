"""The interception scenario (bench/run --only intercept): what CONNECT interception costs a
client, per request on a kept-alive tunnel and per new tunnel, against route mode.

One sidepool with `[intercept] enabled = true` in front of the fake exchange. A client (this
file, `client` mode, stdlib only, TCP_NODELAY on its sockets) sends, sequentially:
- route mode: N GETs on one kept-alive plain HTTP connection (`/ex/<path>`);
- interception, kept alive: one CONNECT and one TLS handshake with sidepool's CA, then N GETs;
- interception, kept alive, POSTs whose head and body go out as two writes (two TLS records),
  as Python's urllib3 sends them, on a socket with TCP_NODELAY and on one without (urllib3
  leaves it off on tunnelled sockets);
- interception, a new tunnel per request: M times CONNECT, TLS handshake, one GET.
Latency of each request from its first byte written to its last byte read; for a new tunnel,
from the TCP connect to the last byte.

  intercept_cost.py client PORT HOST:XPORT CA N M     (JSON out)
  intercept_cost.py RESULTS.json                       (the markdown table)
"""
import json
import os
import socket
import ssl
import sys
import time

N = 500
M = 100
PATH = "/v5/market/tickers?category=spot&symbol=BTCUSDT"
ORDER = b'{"category":"spot","symbol":"BTCUSDT","side":"Buy","orderType":"Limit","qty":"0.001"}'


def add_ports(port, base):
    """Ports base+96 and base+97."""
    port["intercept"] = base + 96
    port["intercept_admin"] = base + 97


def read_response(sock, buf=b""):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return status, rest[length:]


def tcp(port, nodelay=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
    return s


def tunnel(port, target, ctx, nodelay=True):
    s = tcp(port, nodelay)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status, rest = read_response(s)
    if status != 200 or rest:
        raise RuntimeError(f"CONNECT answered {status}")
    return ctx.wrap_socket(s, server_hostname=target.split(":")[0])


def timed(sock, requests):
    out, buf = [], b""
    for parts in requests:
        t = time.perf_counter()
        for part in parts:
            sock.sendall(part)
        status, buf = read_response(sock, buf)
        if status != 200:
            raise RuntimeError(f"answered {status}")
        out.append((time.perf_counter() - t) * 1e6)
    return out


def pct(samples):
    s = sorted(samples)
    at = lambda p: s[min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))]
    return {"n": len(s), "p50": at(50), "p99": at(99)}


def client(port, target, ca, n, m):
    ctx = ssl.create_default_context(cafile=ca)
    get_route = [(f"GET /ex{PATH} HTTP/1.1\r\nHost: sidepool\r\n\r\n".encode(),)] * n
    get = [(f"GET {PATH} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode(),)] * n
    post_head = (f"POST /v5/order/create HTTP/1.1\r\nHost: {target}\r\nContent-Type: "
                 f"application/json\r\nContent-Length: {len(ORDER)}\r\n\r\n").encode()
    post = [(post_head, ORDER)] * n
    res = {}
    with tcp(port) as s:
        timed(s, get_route[:50])
        res["route_keepalive_get"] = pct(timed(s, get_route))
    with tunnel(port, target, ctx) as s:
        timed(s, get[:50])
        res["intercept_keepalive_get"] = pct(timed(s, get))
        res["intercept_keepalive_post_two_writes"] = pct(timed(s, post))
    # Nagle on, as urllib3 leaves its tunnelled sockets: the body's record waits for the ACK of
    # the head's, which sidepool sends at once (TCP_QUICKACK) instead of up to 40 ms later.
    with tunnel(port, target, ctx, nodelay=False) as s:
        timed(s, post[:20])
        res["intercept_keepalive_post_two_writes_nagle"] = pct(timed(s, post))
    fresh = []
    for _ in range(m):
        t = time.perf_counter()
        with tunnel(port, target, ctx) as s:
            timed(s, get[:1])
        fresh.append((time.perf_counter() - t) * 1e6)
    res["intercept_new_tunnel_get"] = pct(fresh)
    return res


def scenario(b):
    n, m = (100, 20) if b.quick else (N, M)
    name = "intercept"
    extra = ["[intercept]", "enabled = true", f'ca_dir = "{os.path.join(b.work, "sidepool-ca")}"']
    b.start_sidepool(b.port["exchange"], name=name, extra_sections=extra)
    target = f"exchange.test:{b.port['exchange']}"
    ca = os.path.join(b.work, "sidepool-ca", "ca.pem")
    argv = [sys.executable, os.path.abspath(__file__), "client", str(b.port[name]), target, ca,
            str(n), str(m)]
    res = json.loads(b.run_json(argv, cpu=b.cpu_side, timeout=600))
    b.stop(name)
    res["n"], res["m"] = n, m
    return res


LABEL = {
    "route_keepalive_get": "route mode, kept-alive connection, GET",
    "intercept_keepalive_get": "interception, kept-alive tunnel, GET",
    "intercept_keepalive_post_two_writes": "interception, kept-alive tunnel, POST sent as head then body",
    "intercept_keepalive_post_two_writes_nagle": "the same, client socket without TCP_NODELAY (as urllib3's)",
    "intercept_new_tunnel_get": "interception, a new tunnel per request (CONNECT + TLS handshake + GET)",
}


def markdown(res):
    out = ["| client | requests | p50 µs | p99 µs |", "|---|---|---|---|"]
    for key, label in LABEL.items():
        e = res[key]
        out.append(f"| {label} | {e['n']} | {e['p50']:.0f} | {e['p99']:.0f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if sys.argv[1] == "client":
        port, target, ca, n, m = sys.argv[2:7]
        print(json.dumps(client(int(port), target, ca, int(n), int(m))))
    else:
        with open(sys.argv[1]) as f:
            print(markdown(json.load(f)["intercept"]))
