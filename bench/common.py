"""What every part of the benchmark driver shares: paths, the fake exchange's answers, the proxies
under test and their latency-mode variants, and the log line."""

import os
import sys
import time

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
