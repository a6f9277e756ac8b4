"""python-okx: route mode with domain=; flag="0" for live trading (the default "1" is demo)."""

from harness import API_KEY, API_SECRET, PASSPHRASE, SIDECAR, ok, order_id

SIDEPOOL = SIDECAR

# [doc:python-okx]
import okx.PublicData as PublicData
import okx.Trade as Trade

public = PublicData.PublicAPI(flag="0", domain=f"{SIDEPOOL}/okx")
trade = Trade.TradeAPI(API_KEY, API_SECRET, PASSPHRASE, False, "0", domain=f"{SIDEPOOL}/okx")
# [/doc]

assert public.get_system_time()["code"] == "0"
ok("python-okx: GET /api/v5/public/time through sidepool")
cid = order_id("okx")
placed = trade.place_order(instId="BTC-USDT", tdMode="cash", side="buy", ordType="limit",
                           sz="0.001", px="10000", clOrdId=cid)
assert placed["code"] == "0" and placed["data"][0]["clOrdId"] == cid, placed
ok("python-okx: signed live order accepted (signature over the path checked by the fake exchange)")
