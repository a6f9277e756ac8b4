"""A TLS fake of Bybit, Binance and OKX, one port, told apart by the Host header, for the SDK
tests (Python stdlib only). Each checks its exchange's request signature the way the exchange
does, and answers just enough for the real SDK to parse:

- Bybit v5: X-BAPI-SIGN = HMAC-SHA256(secret, timestamp + api key + recv window + body or query);
- Binance: signature = HMAC-SHA256(secret, query string + body without the signature), X-MBX-APIKEY;
- OKX v5: OK-ACCESS-SIGN = base64(HMAC-SHA256(secret, timestamp + METHOD + path?query + body)),
  and orders only on live trading (no x-simulated-trading: 1).

Every request is appended to --record as one JSON line: host, method, target, body, the TCP
connection it came on, and whether its signature was valid.

Usage: sdk_exchange.py --cert C --key K --record FILE --port-file FILE --secret S
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def now_ms():
    return int(time.time() * 1000)


def strip_signature(params):
    """(params without `signature=HEX`, HEX or None)."""
    m = re.search(r"&?signature=([0-9a-fA-F]{64})", params)
    if m is None:
        return params, None
    return params[:m.start()] + params[m.end():], m.group(1)


def hmac_hex(secret, payload):
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300
    disable_nagle_algorithm = True
    server_version = "fake-exchange"

    def log_message(self, *args):
        pass

    def body(self):
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def reply(self, status, payload):
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def record(self, body, signed):
        entry = {"host": self.headers.get("host", "").split(":")[0], "method": self.command,
                 "target": self.path, "body": body.decode("utf-8", "replace"),
                 "conn": "%s:%d" % self.client_address, "signed": signed,
                 "sidepool_headers": [h for h in self.headers if h.lower().startswith("x-sidepool")]}
        with self.server.lock:
            self.server.record_file.write(json.dumps(entry) + "\n")
            self.server.record_file.flush()

    def handle_any(self):
        body = self.body()
        host = self.headers.get("host", "").split(":")[0]
        path, _, query = self.path.partition("?")
        exchange = {"api.bybit.com": self.bybit, "api.binance.com": self.binance,
                    "www.okx.com": self.okx}.get(host)
        if exchange is None:
            self.record(body, None)
            self.reply(404, {"error": f"the fake exchange does not serve {host!r}"})
            return
        exchange(path, query, body)

    do_GET = do_POST = do_DELETE = do_PUT = handle_any

    # ---- Bybit v5
    def bybit(self, path, query, body):
        h = self.headers
        signed = None
        if "x-bapi-sign" in h:
            payload = (h.get("x-bapi-timestamp", "") + h.get("x-bapi-api-key", "")
                       + h.get("x-bapi-recv-window", "")).encode()
            payload += body if self.command == "POST" else query.encode()
            signed = hmac.compare_digest(hmac_hex(self.server.secret, payload), h["x-bapi-sign"])
        self.record(body, signed)
        if signed is False:
            self.reply(200, {"retCode": 10004, "retMsg": "error sign!", "result": {},
                             "retExtInfo": {}, "time": now_ms()})
            return
        t = now_ms()
        if path == "/v5/market/time":
            result = {"timeSecond": str(t // 1000), "timeNano": str(t * 1_000_000)}
        elif path == "/v5/market/tickers" and query == "category=spot&symbol=BTCUSDT":
            result = {"category": "spot", "list": [{"symbol": "BTCUSDT", "lastPrice": "64210.5"}]}
        elif path == "/v5/order/create" and signed:
            order = json.loads(body)
            result = {"orderId": "1", "orderLinkId": order.get("orderLinkId", "")}
        else:
            self.reply(404, {"retCode": 10001, "retMsg": "not on the fake exchange"})
            return
        self.reply(200, {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {},
                         "time": t})

    # ---- Binance spot
    def binance(self, path, query, body):
        # totalParams = query string + body; the signature is one of their parameters.
        q, q_sig = strip_signature(query)
        b, b_sig = strip_signature(body.decode())
        sig = q_sig or b_sig
        signed = None
        if sig is not None:
            signed = self.headers.get("x-mbx-apikey") == "test-key" and hmac.compare_digest(
                hmac_hex(self.server.secret, (q + b).encode()), sig)
        params = q + ("&" if q and b else "") + b
        self.record(body, signed)
        if signed is False:
            self.reply(400, {"code": -1022, "msg": "Signature for this request is not valid."})
            return
        if path == "/api/v3/time":
            self.reply(200, {"serverTime": now_ms()})
        elif path == "/api/v3/ping":
            self.reply(200, {})
        elif path == "/api/v3/order" and self.command == "POST" and signed:
            fields = dict(p.split("=", 1) for p in params.split("&") if "=" in p)
            self.reply(200, {"symbol": fields.get("symbol"), "orderId": 1, "orderListId": -1,
                             "clientOrderId": fields.get("newClientOrderId", ""),
                             "transactTime": now_ms(), "price": fields.get("price", "0"),
                             "origQty": fields.get("quantity", "0"), "executedQty": "0",
                             "status": "NEW", "timeInForce": "GTC", "type": "LIMIT",
                             "side": fields.get("side", "BUY")})
        else:
            self.reply(404, {"code": -1, "msg": "not on the fake exchange"})

    # ---- OKX v5
    def okx(self, path, query, body):
        h = self.headers
        signed = None
        if "ok-access-sign" in h:
            target = path + ("?" + query if query else "")
            prehash = (h.get("ok-access-timestamp", "") + self.command + target).encode() + body
            good = base64.b64encode(hmac.new(self.server.secret, prehash, hashlib.sha256).digest())
            signed = (h.get("ok-access-key") == "test-key"
                      and h.get("ok-access-passphrase") == "test-pass"
                      and hmac.compare_digest(good.decode(), h["ok-access-sign"]))
        self.record(body, signed)
        if signed is False:
            self.reply(401, {"code": "50113", "msg": "Invalid Sign", "data": []})
            return
        if path == "/api/v5/public/time":
            self.reply(200, {"code": "0", "msg": "", "data": [{"ts": str(now_ms())}]})
        elif path == "/api/v5/trade/order" and signed:
            if h.get("x-simulated-trading") == "1":
                self.reply(200, {"code": "1", "msg": "demo trading request on a live key",
                                 "data": [{"sCode": "50101", "sMsg": "demo"}]})
                return
            order = json.loads(body)
            self.reply(200, {"code": "0", "msg": "", "data": [
                {"ordId": "1", "clOrdId": order.get("clOrdId", ""), "tag": "", "sCode": "0",
                 "sMsg": "Order placed"}]})
        else:
            self.reply(404, {"code": "51000", "msg": "not on the fake exchange", "data": []})


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(conn, client_address)


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--cert", "--key", "--record", "--port-file", "--secret"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server = TLSServer(("127.0.0.1", 0), Handler)
    server.ssl_context = context
    server.secret = args.secret.encode()
    server.lock = threading.Lock()
    server.record_file = open(args.record, "a", encoding="utf-8")
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
