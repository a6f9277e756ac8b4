"""A fake exchange that limits like Binance, scaled down for the rate-pressure scenario.

Weight is counted per fixed window of WINDOW_MS (aligned to the epoch, as Binance counts its
minutes): depth 5, everything else 1. The used weight goes out in X-MBX-USED-WEIGHT-1M on every
answer. A request that would cross LIMIT gets 429 with Retry-After: RETRY_AFTER_S. A client that
sends more than GRACE requests during a Retry-After (more than could have been in flight when the
429 left) is banned: 418 with Binance's "IP banned until <ms>" body for BAN_S, and every request
during the ban extends nothing but is counted as served a ban.

  rate_exchange.py PORT CERT KEY LIMIT

GET /__tally answers the counts as JSON and resets them and the windows (the scenario calls it
between targets, so each starts from a clean exchange).
"""
import asyncio
import json
import ssl
import sys
import time

WINDOW_MS = 1000
RETRY_AFTER_S = 2
GRACE = 24
BAN_S = 10


def now_ms():
    return int(time.time() * 1000)


class Exchange:
    def __init__(self, limit):
        self.limit = limit
        self.reset()

    def reset(self):
        self.window = 0
        self.used = 0
        self.retry_until = 0
        self.during_retry = 0
        self.banned_until = 0
        self.tally = {"ok": 0, "too_many": 0, "banned": 0, "during_cooldown": 0,
                      "orders_ok": 0, "max_window_weight": 0, "limit": self.limit,
                      "window_ms": WINDOW_MS}

    def answer(self, method, path):
        now = now_ms()
        t = self.tally
        if now < self.banned_until:
            t["banned"] += 1
            t["during_cooldown"] += 1
            return banned(self.banned_until, now)
        if now < self.retry_until:
            t["during_cooldown"] += 1
            self.during_retry += 1
            if self.during_retry > GRACE:
                self.banned_until = now + BAN_S * 1000
                t["banned"] += 1
                return banned(self.banned_until, now)
            t["too_many"] += 1
            return too_many((self.retry_until - now + 999) // 1000)
        window = now // WINDOW_MS
        if window != self.window:
            self.window, self.used = window, 0
        weight = 5 if path.startswith("/api/v3/depth") else 1
        if self.used + weight > self.limit:
            self.retry_until = now + RETRY_AFTER_S * 1000
            self.during_retry = 0
            t["too_many"] += 1
            return too_many(RETRY_AFTER_S)
        self.used += weight
        t["max_window_weight"] = max(t["max_window_weight"], self.used)
        t["ok"] += 1
        if method == "POST" and path.startswith("/api/v3/order"):
            t["orders_ok"] += 1
        return 200, {"x-mbx-used-weight-1m": str(self.used)}, b'{"ok":true}'


def too_many(secs):
    body = b'{"code":-1003,"msg":"Too many requests."}'
    return 429, {"retry-after": str(secs)}, body


def banned(until, now):
    body = ('{"code":-1003,"msg":"Way too many requests; IP banned until %d."}' % until).encode()
    return 418, {"retry-after": str((until - now) // 1000)}, body


REASONS = {200: "OK", 418: "I'm a teapot", 429: "Too Many Requests", 404: "Not Found"}


async def serve(exchange, reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if length:
                await reader.readexactly(length)
            if target == "/__tally":
                status, headers, body = 200, {}, json.dumps(exchange.tally).encode()
                exchange.reset()
            else:
                status, headers, body = exchange.answer(method, target)
            out = [f"HTTP/1.1 {status} {REASONS.get(status, 'X')}",
                   "content-type: application/json", f"content-length: {len(body)}"]
            out += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    port, cert, key, limit = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    exchange = Exchange(limit)
    server = await asyncio.start_server(lambda r, w: serve(exchange, r, w), "127.0.0.1", port,
                                        ssl=ctx, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
