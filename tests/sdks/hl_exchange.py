"""A TLS fake of Hyperliquid's API for the SDK tests. Answers `POST /info` (meta, spotMeta) and
`POST /exchange`, whose EIP-712 signature it checks with the SDK's own recovery function for
**mainnet**: an order the SDK signed for testnet (source "b") recovers another address and is
refused, as the real exchange refuses it. Records like sdk_exchange.py.

Runs with the SDK venv's python (it needs the SDK's signing module).
Usage: hl_exchange.py --cert C --key K --record FILE --address 0x... --port 443
"""

import argparse
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hyperliquid.utils.signing import recover_agent_or_user_from_l1_action


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, payload, status=200):
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        request = json.loads(body or b"{}")
        signed = None
        if self.path == "/exchange":
            signer = recover_agent_or_user_from_l1_action(
                request["action"], request["signature"], request.get("vaultAddress"),
                request["nonce"], request.get("expiresAfter"), True)
            signed = signer.lower() == self.server.address.lower()
        entry = {"host": self.headers.get("host", "").split(":")[0], "method": "POST",
                 "target": self.path, "body": body.decode("utf-8", "replace"),
                 "conn": "%s:%d" % self.client_address, "signed": signed,
                 "sidepool_headers": [h for h in self.headers if h.lower().startswith("x-sidepool")]}
        with self.server.lock:
            self.server.record_file.write(json.dumps(entry) + "\n")
            self.server.record_file.flush()
        if self.path == "/info" and request.get("type") == "meta":
            self.reply({"universe": [{"name": "BTC", "szDecimals": 5, "maxLeverage": 40}]})
        elif self.path == "/info" and request.get("type") == "spotMeta":
            self.reply({"universe": [], "tokens": []})
        elif self.path == "/exchange" and signed:
            order = request["action"]["orders"][0]
            self.reply({"status": "ok", "response": {"type": "order", "data": {"statuses": [
                {"resting": {"oid": 1, "cloid": order.get("c")}}]}}})
        elif self.path == "/exchange":
            self.reply({"status": "err", "response": "User or API Wallet does not exist."})
        else:
            self.reply({"error": "not on the fake exchange"}, 404)


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
    for flag in ("--cert", "--key", "--record", "--address", "--port"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server = TLSServer(("127.0.0.1", int(args.port)), Handler)
    server.ssl_context = context
    server.address = args.address
    server.lock = threading.Lock()
    server.record_file = open(args.record, "a", encoding="utf-8")
    server.serve_forever()


if __name__ == "__main__":
    main()
