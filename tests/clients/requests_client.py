"""requests: route mode, forward-proxy mode, a signed POST, sidepool's own errors, and CONNECT refused."""

from harness import (BYBIT_HTTP, SIDECAR, TICKER, check_echo, check_sidepool_error, check_ticker,
                     expect, order_body, sign_headers)

expect("GET", TICKER)
# [doc:requests-route]
import requests

session = requests.Session()  # one Session for the whole bot: keep-alive to sidepool
r = session.get(f"{SIDECAR}/bybit/v5/market/tickers?category=spot&symbol=BTCUSDT", timeout=80)
# [/doc]
check_ticker(r.status_code, r.content, "route GET")

body = order_body("route")
expect("POST", "/v5/order/create", body)
# [doc:requests-signed]
body = order_body("route")  # the exact bytes that were signed: send them with data=, not json=
r = session.post(f"{SIDECAR}/bybit/v5/order/create", data=body, headers=sign_headers(body), timeout=80)
# [/doc]
check_echo(r.status_code, r.content, body, "signed POST (route)")

expect("GET", TICKER)
# [doc:requests-forward]
proxied = requests.Session()
proxied.proxies = {"http": SIDECAR}  # only http:// URLs go to sidepool
r = proxied.get(f"{BYBIT_HTTP}/v5/market/tickers?category=spot&symbol=BTCUSDT", timeout=80)
# [/doc]
check_ticker(r.status_code, r.content, "forward-proxy GET")

# [doc:requests-errors]
r = session.get(f"{SIDECAR}/nope/v5/market/time", timeout=80)
if "x-sidepool-error" in r.headers:  # made by sidepool itself, not by the exchange
    err = r.json()  # {"error": "not_allowed", "message": "...", "upstream": null}
    print(r.status_code, err["error"], err["message"])
# [/doc]
check_sidepool_error(r.status_code, r.headers, r.content, "not_allowed", "unknown upstream")

# An https:// URL through the proxy is a CONNECT tunnel, which sidepool refuses (405).
https_url = BYBIT_HTTP.replace("http://", "https://", 1) + TICKER
try:
    requests.get(https_url, proxies={"https": SIDECAR}, timeout=10)
    raise AssertionError("CONNECT through sidepool unexpectedly succeeded")
except requests.exceptions.ProxyError as e:
    assert "405" in str(e), e
    print("ok  https:// through the proxy: CONNECT refused with 405")
