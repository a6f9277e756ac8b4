"""binance-connector (Binance's own Python connector): route mode with base_url."""

from harness import API_KEY, API_SECRET, SIDECAR, ok, order_id

SIDEPOOL = SIDECAR

# [doc:binance-connector]
from binance.spot import Spot

client = Spot(api_key=API_KEY, api_secret=API_SECRET, base_url=f"{SIDEPOOL}/binance")
# [/doc]

assert "serverTime" in client.time()
ok("binance-connector: GET /api/v3/time through sidepool")
cid = order_id("connector")
placed = client.new_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                          quantity="0.001", price="10000", newClientOrderId=cid)
assert placed["clientOrderId"] == cid, placed
ok("binance-connector: signed order accepted (signature checked by the fake exchange)")
