"""A tiny TLS fake of the Bybit v5 REST API, for the client tests (Python stdlib only).

GET /v5/market/tickers answers a ~500-byte ticker; POST answers with the body it got (echo),
after checking a Bybit v5 signature (X-BAPI-SIGN over timestamp + key + recv window + body).
Every request is appended to --record as one JSON line: method, target (path + query), body,
the TCP connection it came on, and selected headers.

Usage: fake_exchange.py --cert C --key K --record FILE --port-file FILE --secret S
"""

import argparse
import hashlib
import hmac
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDED_HEADERS = (
    "host", "content-type", "user-agent", "x-bapi-api-key", "x-bapi-timestamp",
    "x-bapi-recv-window", "x-bapi-sign", "via", "x-forwarded-for", "forwarded",
    "proxy-connection", "proxy-authorization", "transfer-encoding",
)


def ticker(symbol):
    item = {
        "symbol": symbol, "bid1Price": "64210.5", "bid1Size": "0.512", "ask1Price": "64210.6",
        "ask1Size": "1.204", "lastPrice": "64210.5", "prevPrice24h": "63122.1",
        "price24hPcnt": "0.0172", "highPrice24h": "64888.8", "lowPrice24h": "62950.0",
        "turnover24h": "1523348891.5538", "volume24h": "23780.4411", "usdIndexPrice": "64198.31",
        "prevPrice1h": "64101.2", "markPrice": "64210.4", "indexPrice": "64198.3",
        "openInterest": "", "fundingRate": "", "nextFundingTime": "",
    }
    return {"retCode": 0, "retMsg": "OK",
            "result": {"category": "spot", "list": [item]},
            "retExtInfo": {}, "time": 1732350000000}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, so the sidecar can reuse its connections
    timeout = 300
    disable_nagle_algorithm = True  # one response, no 40 ms delayed-ACK stall between its writes
    server_version = "fake-exchange"

    def log_message(self, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def reply(self, status, payload):
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def record(self, body):
        entry = {
            "method": self.command,
            "target": self.path,
            "body": body.decode("utf-8", "replace"),
            "conn": "%s:%d" % self.client_address,
            "headers": {h: self.headers[h] for h in RECORDED_HEADERS if h in self.headers},
        }
        with self.server.lock:
            self.server.record_file.write(json.dumps(entry) + "\n")
            self.server.record_file.flush()

    def do_GET(self):
        self.record(self.read_body())
        path, _, query = self.path.partition("?")
        if path == "/v5/market/tickers":
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            self.reply(200, ticker(params.get("symbol", "BTCUSDT")))
        else:
            self.reply(404, {"retCode": 10001, "retMsg": "no such route on the fake exchange"})

    def do_POST(self):
        body = self.read_body()
        self.record(body)
        h = self.headers
        payload = (h.get("x-bapi-timestamp", "") + h.get("x-bapi-api-key", "")
                   + h.get("x-bapi-recv-window", "")).encode() + body
        good = hmac.new(self.server.secret, payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(good, h.get("x-bapi-sign", "")):
            self.reply(401, {"retCode": 10004, "retMsg": "error sign!"})
            return
        self.reply(200, {"retCode": 0, "retMsg": "OK",
                         "result": {"echo": body.decode("utf-8", "replace")},
                         "retExtInfo": {}, "time": 1732350000000})


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the connection's own thread, not in the accept loop.
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
