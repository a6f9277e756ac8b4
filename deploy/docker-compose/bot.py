"""A tiny example bot: polls a public ticker through the sidepool sidecar and prints price and latency.

It uses route mode: GET http://127.0.0.1:8080/<upstream>/<path> goes to the upstream named in
sidepool.toml over a pooled TLS connection. The first request pays for the TLS handshake; the
following ones reuse the warm connection, which the printed latency shows. Standard library only.

Environment (all optional):
  BOT_SIDEPOOL_URL    the sidecar's proxy listener   (default http://127.0.0.1:8080)
  BOT_PATH            what to poll, /<upstream>/...  (default: Bybit's BTCUSDT spot ticker)
  BOT_INTERVAL        seconds between polls          (default 2)
  BOT_MAX_ITERATIONS  stop after this many polls     (default 0: run until stopped)
(Not SIDEPOOL_*: that prefix belongs to sidepool's own config, where an unknown key is an error.)
"""

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

SIDEPOOL_URL = os.environ.get("BOT_SIDEPOOL_URL", "http://127.0.0.1:8080").rstrip("/")
BOT_PATH = os.environ.get("BOT_PATH", "/bybit/v5/market/tickers?category=spot&symbol=BTCUSDT")
INTERVAL = float(os.environ.get("BOT_INTERVAL", "2"))
MAX_ITERATIONS = int(os.environ.get("BOT_MAX_ITERATIONS") or 0)
# After this many polls in a row that cannot reach sidepool, exit 1 and let the restart policy start
# the bot again. In compose the bot lives in sidepool's network namespace; if sidepool's container
# restarts, that namespace is new, and only a restarted bot joins it.
MAX_UNREACHABLE = 15

# Talk to the sidecar directly, even if HTTP_PROXY is set in the environment: in route mode the
# sidecar is the server, not a proxy.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url):
    """Returns (status, headers, body); raises OSError when sidepool cannot be reached at all."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with OPENER.open(request, timeout=15) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:  # 4xx/5xx: from sidepool itself or from the exchange
        with err:
            return err.code, err.headers, err.read()


def describe(status, headers, body):
    """One line about a response, whoever made it."""
    kind = headers.get("x-sidepool-error")
    if kind:
        # sidepool's own error: JSON {"error", "message", "upstream"}. pool_timeout (503) means all
        # connections to that exchange were busy for queue_timeout; back off rather than hammer it.
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = body[:200].decode("utf-8", "replace")
        return f"sidepool error {status} {kind}: {message}"
    if status != 200:
        return f"exchange answered {status}: {body[:200].decode('utf-8', 'replace')}"
    try:
        data = json.loads(body)
        if data.get("retCode", 0) != 0:  # Bybit v5 reports errors inside a 200
            return f"exchange error {data.get('retCode')}: {data.get('retMsg')}"
        ticker = data["result"]["list"][0]
        return f"{ticker['symbol']} last {ticker['lastPrice']}"
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return f"200 with an unexpected body: {body[:200].decode('utf-8', 'replace')}"


def main():
    # Exit promptly on `docker stop` / pod termination: as PID 1 Python would otherwise ignore SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    url = SIDEPOOL_URL + BOT_PATH
    print(f"polling {url} every {INTERVAL:g}s", flush=True)
    iteration = 0
    unreachable = 0
    while MAX_ITERATIONS <= 0 or iteration < MAX_ITERATIONS:
        iteration += 1
        started = time.monotonic()
        try:
            line = describe(*fetch(url))
            unreachable = 0
        except OSError as err:  # connection refused, timeout: sidepool not listening
            line = f"cannot reach sidepool at {SIDEPOOL_URL}: {err}"
            unreachable += 1
        elapsed_ms = (time.monotonic() - started) * 1000
        print(f"{line} ({elapsed_ms:.1f} ms)", flush=True)
        if unreachable >= MAX_UNREACHABLE:
            sys.exit(f"sidepool unreachable {unreachable} times in a row; exiting so the bot is restarted")
        if MAX_ITERATIONS <= 0 or iteration < MAX_ITERATIONS:
            time.sleep(max(0.0, INTERVAL - elapsed_ms / 1000))


if __name__ == "__main__":
    main()
