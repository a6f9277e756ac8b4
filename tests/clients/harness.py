"""Test plumbing shared by the Python client scripts; the doc snippets live in the scripts.

In production SIDECAR is "http://127.0.0.1:8080" and BYBIT_HTTP is "http://api.bybit.com";
.ci/check-clients points them at a throwaway sidepool and a local fake exchange.
"""

import hashlib
import hmac
import json
import os
import sys
import time

SIDECAR = os.environ["SIDECAR_URL"]      # sidepool's proxy listener
BYBIT_HTTP = os.environ["BYBIT_HTTP"]    # the exchange's base URL with http:// (forward-proxy mode)
API_KEY = "test-key"
API_SECRET = "test-secret"
TICKER = "/v5/market/tickers?category=spot&symbol=BTCUSDT"
CLIENT = os.environ.get("CLIENT_NAME") or os.path.basename(sys.argv[0]).removesuffix(".py").removesuffix("_client")


def expect(method, target, body=b""):
    """Tells the final check which request the fake exchange must have seen exactly once."""
    if isinstance(body, bytes):
        body = body.decode()
    with open(os.environ["EXPECT_FILE"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"client": CLIENT, "method": method, "target": target, "body": body}) + "\n")


def order_body(tag):
    """A Bybit v5 order as the exact bytes that get signed and sent; orderLinkId makes it unique."""
    order = {"category": "spot", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit",
             "qty": "0.001", "price": "10000", "orderLinkId": f"{CLIENT}-{tag}"}
    return json.dumps(order, separators=(",", ":")).encode()


def sign_headers(body):
    """Bybit v5 signing: HMAC-SHA256 over timestamp + api key + recv window + body."""
    ts, window = str(int(time.time() * 1000)), "5000"
    sign = hmac.new(API_SECRET.encode(), (ts + API_KEY + window).encode() + body, hashlib.sha256)
    return {"Content-Type": "application/json", "X-BAPI-API-KEY": API_KEY,
            "X-BAPI-TIMESTAMP": ts, "X-BAPI-RECV-WINDOW": window, "X-BAPI-SIGN": sign.hexdigest()}


def check_ticker(status, body, what):
    assert status == 200, f"{what}: status {status}, body {body[:300]!r}"
    data = json.loads(body)
    assert data["retCode"] == 0 and data["result"]["list"][0]["symbol"] == "BTCUSDT", f"{what}: {data}"
    print(f"ok  {what}: 200, {len(body)}-byte ticker")


def check_echo(status, body, sent, what):
    assert status == 200, f"{what}: status {status}, body {body[:300]!r}"
    echo = json.loads(body)["result"]["echo"]
    assert echo == sent.decode(), f"{what}: exchange got {echo!r}, sent {sent!r}"
    print(f"ok  {what}: 200, signature valid, body echoed byte for byte")


def check_sidepool_error(status, headers, body, kind, what):
    assert status != 200 and headers.get("x-sidepool-error") == kind, f"{what}: {status} {dict(headers)}"
    error = json.loads(body)
    assert error["error"] == kind and error["message"], f"{what}: {error}"
    print(f"ok  {what}: {status} {kind} ({error['message'][:60]}...)")


def _cli(argv):
    """For shell clients: harness.py expect METHOD TARGET [BODY] | ticker WHAT FILE | echo WHAT FILE SENT
    | error KIND WHAT FILE (FILE holds headers then body, as curl -D - writes them)."""
    command, *args = argv
    if command == "expect":
        expect(*args)
    elif command == "ticker":
        what, path = args
        check_ticker(200, open(path, "rb").read(), what)
    elif command == "echo":
        what, path, sent = args
        check_echo(200, open(path, "rb").read(), sent.encode(), what)
    elif command == "error":
        kind, what, path = args
        head, _, body = open(path, "rb").read().partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        check_sidepool_error(status, headers, body, kind, what)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    _cli(sys.argv[1:])
