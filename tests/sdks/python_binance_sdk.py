"""python-binance: route mode by overriding API_URL; ping=False so the constructor does not go
to the exchange directly."""

from harness import API_KEY, API_SECRET, SIDECAR, ok, order_id

SIDEPOOL = SIDECAR

# [doc:python-binance]
from binance.client import Client

client = Client(API_KEY, API_SECRET, ping=False)  # ping=True would call api.binance.com directly
client.API_URL = f"{SIDEPOOL}/binance/api"      # was https://api.binance.com/api
# [/doc]

assert "serverTime" in client.get_server_time()
ok("python-binance: GET /api/v3/time through sidepool")
cid = order_id("pybinance")
placed = client.create_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                             quantity="0.001", price="10000", newClientOrderId=cid)
assert placed["clientOrderId"] == cid, placed
ok("python-binance: signed order accepted (signature checked by the fake exchange)")
