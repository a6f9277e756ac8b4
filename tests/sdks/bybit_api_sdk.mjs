// bybit-api (Node): route mode with baseUrl.
import { API_KEY, API_SECRET, SIDEPOOL, check, ok, orderId } from "./harness.mjs";

// [doc:bybit-api]
import { RestClientV5 } from "bybit-api";

const client = new RestClientV5({ key: API_KEY, secret: API_SECRET, baseUrl: `${SIDEPOOL}/bybit` });
// [/doc]

const time = await client.getServerTime();
check(time.retCode === 0, "bybit-api: GET /v5/market/time", time);
ok("bybit-api: GET /v5/market/time through sidepool");
const link = orderId("nodebybit");
const placed = await client.submitOrder({
  category: "spot", symbol: "BTCUSDT", side: "Buy", orderType: "Limit", qty: "0.001",
  price: "10000", orderLinkId: link,
});
check(placed.retCode === 0 && placed.result.orderLinkId === link, "bybit-api: order", placed);
ok("bybit-api: signed order accepted (signature checked by the fake exchange)");
