// binance (Node, the `binance` package): route mode with baseUrl. Its getServerTime() (and the
// time sync it can run) ignores baseUrl and goes to api.binance.com: leave time sync off, the
// default.
import { API_KEY, API_SECRET, SIDEPOOL, check, ok, orderId } from "./harness.mjs";

// [doc:binance-node]
import { MainClient } from "binance";

const client = new MainClient({
  api_key: API_KEY,
  api_secret: API_SECRET,
  baseUrl: `${SIDEPOOL}/binance`, // getServerTime() ignores it: do not call it
});
// [/doc]

await client.testConnectivity();
ok("binance (node): GET /api/v3/ping through sidepool");
const cid = orderId("nodebinance");
const placed = await client.submitNewOrder({
  symbol: "BTCUSDT", side: "BUY", type: "LIMIT", timeInForce: "GTC", quantity: 0.001,
  price: 10000, newClientOrderId: cid,
});
check(placed.clientOrderId === cid, "binance (node): order", placed);
ok("binance (node): signed order accepted (signature checked by the fake exchange)");
