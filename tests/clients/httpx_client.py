"""httpx: route mode, forward-proxy mode with proxy= and from the environment, a signed POST."""

import httpx

from harness import BYBIT_HTTP, SIDECAR, TICKER, check_echo, check_ticker, expect, order_body, sign_headers

expect("GET", TICKER)
# [doc:httpx-route]
client = httpx.Client(base_url=f"{SIDECAR}/bybit", timeout=80)  # one per bot, reused
r = client.get("/v5/market/tickers?category=spot&symbol=BTCUSDT")
# [/doc]
check_ticker(r.status_code, r.content, "route GET")

expect("GET", TICKER)
# [doc:httpx-proxy]
proxied = httpx.Client(proxy=SIDECAR, timeout=80)  # every request of this client goes via sidepool
r = proxied.get(f"{BYBIT_HTTP}/v5/market/tickers?category=spot&symbol=BTCUSDT")
# [/doc]
check_ticker(r.status_code, r.content, "forward-proxy GET (proxy=)")

body = order_body("forward")
expect("POST", "/v5/order/create", body)
# [doc:httpx-signed]
body = order_body("forward")
r = proxied.post(f"{BYBIT_HTTP}/v5/order/create", content=body, headers=sign_headers(body))
# [/doc]
check_echo(r.status_code, r.content, body, "signed POST (forward proxy)")

expect("GET", TICKER)
# [doc:httpx-env]
# environment: HTTP_PROXY=http://127.0.0.1:8080 NO_PROXY=127.0.0.1,localhost
client = httpx.Client(timeout=80)  # trust_env=True is the default
r = client.get(f"{BYBIT_HTTP}/v5/market/tickers?category=spot&symbol=BTCUSDT")
# [/doc]
check_ticker(r.status_code, r.content, "forward-proxy GET (HTTP_PROXY)")

