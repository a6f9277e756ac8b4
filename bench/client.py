#!/usr/bin/env python3
"""Small clients for the benchmark, stdlib only, each printing one JSON object on stdout.

naive  A naive bot: a new connection for every request (TCP, plus TLS when --tls), one request,
       then close. Sequential. The TLS context is built once (a bot that at least does that).
rate   One kept-alive connection, requests sent at a fixed rate; latency of each request from
       the first byte written to the last byte of the response read.
fill   K connections at once, one request each, all in flight together (opens K upstream
       connections in a pool whose upstream is slow enough for the requests to overlap).
burst  --n connections opened first, then one request on each, all written at the same moment
       (a bot firing a burst of orders); latency of each from its write to its last byte.
count  --conns kept-alive connections, each sending exactly --n requests one after another:
       a fixed amount of work, for counters that are read before and after.
"""
import argparse
import asyncio
import gc
import json
import socket
import ssl
import sys
import time

TICKER = "/v5/market/tickers?category=spot&symbol=BTCUSDT"


def build_request(method, path, host, body=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-bot/1\r\nAccept: */*\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def read_response(sock, buf=b""):
    """Reads one response with Content-Length; returns (status, rest-of-buffer)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        rest += chunk
    return status, rest[length:]


def tls_context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def percentiles(samples):
    if not samples:
        return {}
    s = sorted(samples)

    def pct(p):
        return s[min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))]

    return {
        "n": len(s),
        "mean": sum(s) / len(s),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p999": pct(99.9),
        "min": s[0],
        "max": s[-1],
    }


def naive(args):
    ctx = tls_context(args.ca) if args.tls else None
    req = build_request("GET", args.path, args.host_header)
    lat, statuses, errors = [], {}, 0
    for i in range(args.n):
        t0 = time.perf_counter()
        try:
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ctx is not None:
                sock = ctx.wrap_socket(sock, server_hostname=args.sni)
            sock.sendall(req)
            status, _ = read_response(sock)
            sock.close()
        except (OSError, ValueError, ConnectionError):
            errors += 1
            continue
        dt = (time.perf_counter() - t0) * 1000.0
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        lat.append(dt)
        if args.pause_ms > 0 and i + 1 < args.n:
            time.sleep(args.pause_ms / 1000.0)
    out = {
        "unit": "ms",
        "cold_ms": lat[0] if lat else None,
        "warm": percentiles(lat[1:]),
        "statuses": statuses,
        "errors": errors,
    }
    if args.samples:
        with open(args.samples, "w") as f:
            f.write("\n".join(f"{x:.3f}" for x in lat))
    print(json.dumps(out))


def rate(args):
    ctx = tls_context(args.ca) if args.tls else None
    body = b'{"category":"linear","symbol":"BTCUSDT","side":"Buy","orderType":"Limit","qty":"0.001","price":"50000"}'
    req = build_request(args.method, args.path, args.host_header, body if args.method == "POST" else b"")
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname=args.sni)
    buf = b""
    statuses = {}
    for _ in range(args.warmup):
        sock.sendall(req)
        _, buf = read_response(sock, buf)
    gc.collect()
    gc.disable()
    interval = 1.0 / args.rate
    total = int(args.rate * args.seconds)
    lat = [0.0] * total
    late = 0
    start = time.perf_counter()
    for i in range(total):
        due = start + i * interval
        now = time.perf_counter()
        if due > now:
            # Sleep most of the gap, spin the rest (sleep alone overshoots by ~60 us).
            if due - now > 0.0003:
                time.sleep(due - now - 0.0002)
            while time.perf_counter() < due:
                pass
        else:
            late += 1
        t0 = time.perf_counter()
        sock.sendall(req)
        status, buf = read_response(sock, buf)
        lat[i] = (time.perf_counter() - t0) * 1e6
        statuses[status] = statuses.get(status, 0) + 1
    elapsed = time.perf_counter() - start
    gc.enable()
    sock.close()
    out = {
        "unit": "us",
        "rate": args.rate,
        "achieved_rate": total / elapsed,
        "late_sends": late,
        "latency": percentiles(lat),
        "statuses": {str(k): v for k, v in statuses.items()},
    }
    if args.samples:
        with open(args.samples, "w") as f:
            f.write("\n".join(f"{x:.1f}" for x in lat))
    print(json.dumps(out))


async def read_response_async(reader, timeout):
    """Reads one response with Content-Length from an asyncio stream; returns its status."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await asyncio.wait_for(reader.readexactly(length), timeout)
    return status


async def fill(args):
    req = build_request("GET", args.path, args.host_header)
    start = asyncio.Event()
    results = {"ok": 0, "other": 0, "errors": 0}

    async def one():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        except OSError:
            results["errors"] += 1
            return
        try:
            await start.wait()
            writer.write(req)
            await writer.drain()
            status = await read_response_async(reader, 60)
            results["ok" if status == 200 else "other"] += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            results["errors"] += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(args.n)]
    await asyncio.sleep(0.5)  # let every client connection open first
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    results["seconds"] = time.perf_counter() - t0
    print(json.dumps(results))


async def burst(args):
    req = build_request("GET", args.path, args.host_header)
    conns = [await asyncio.open_connection("127.0.0.1", args.port) for _ in range(args.n)]
    start = asyncio.Event()
    lat, statuses, errors = [], {}, 0

    async def one(reader, writer):
        nonlocal errors
        await start.wait()
        t0 = time.perf_counter()
        try:
            writer.write(req)
            status = await read_response_async(reader, 30)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            return
        finally:
            writer.close()
        lat.append((time.perf_counter() - t0) * 1000.0)
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    tasks = [asyncio.create_task(one(r, w)) for r, w in conns]
    await asyncio.sleep(0)  # every task waits on the event before any request is written
    start.set()
    await asyncio.gather(*tasks)
    print(json.dumps({"unit": "ms", "samples": lat, "statuses": statuses, "errors": errors}))


async def count(args):
    req = build_request("GET", args.path, args.host_header)
    results = {"ok": 0, "other": 0, "errors": 0}

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        try:
            for _ in range(args.n):
                writer.write(req)
                status = await read_response_async(reader, 120)
                results["ok" if status == 200 else "other"] += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            results["errors"] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(args.conns)))
    results["seconds"] = time.perf_counter() - t0
    print(json.dumps(results))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["naive", "rate", "fill", "count", "burst"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default=TICKER)
    p.add_argument("--host-header", default="exchange.test")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--sni", default="exchange.test")
    p.add_argument("--ca")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--pause-ms", type=float, default=5.0)
    p.add_argument("--method", default="GET")
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples")
    args = p.parse_args()
    if args.mode == "naive":
        naive(args)
    elif args.mode == "rate":
        rate(args)
    elif args.mode == "count":
        asyncio.run(count(args))
    elif args.mode == "burst":
        asyncio.run(burst(args))
    else:
        asyncio.run(fill(args))


if __name__ == "__main__":
    sys.exit(main())
