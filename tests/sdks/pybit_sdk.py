"""pybit (Bybit's SDK): route mode, by pointing the session's endpoint at sidepool."""

from harness import API_KEY, API_SECRET, SIDECAR, ok, order_id

SIDEPOOL = SIDECAR

# [doc:pybit]
from pybit.unified_trading import HTTP

session = HTTP(testnet=False, api_key=API_KEY, api_secret=API_SECRET)
session.endpoint = f"{SIDEPOOL}/bybit"  # was https://api.bybit.com
# [/doc]

server = session.get_server_time()
assert server["retCode"] == 0, server
ok("pybit: GET /v5/market/time through sidepool")
link = order_id("pybit")
placed = session.place_order(category="spot", symbol="BTCUSDT", side="Buy", orderType="Limit",
                             qty="0.001", price="10000", orderLinkId=link)
assert placed["retCode"] == 0 and placed["result"]["orderLinkId"] == link, placed
ok("pybit: signed order accepted (signature checked by the fake exchange)")
