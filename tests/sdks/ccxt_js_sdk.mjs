// ccxt (Node): prefix form with proxyUrl, the URL ccxt builds kept whole: ccxt sends
// http://127.0.0.1:8080/https://api.bybit.com/v5/..., and sidepool forwards it to the configured
// upstream with that host, path and query byte for byte (ccxt percent-encodes the whole target
// when it has a query; sidepool decodes it exactly once).
import { API_KEY, API_SECRET, SIDEPOOL, check, ok, orderId } from "./harness.mjs";

// [doc:ccxt-js]
import ccxt from "ccxt";

const exchange = new ccxt.bybit({ apiKey: API_KEY, secret: API_SECRET, proxyUrl: `${SIDEPOOL}/` });
// [/doc]

const time = await exchange.publicGetV5MarketTime();
check(time.retCode === "0" || time.retCode === 0, "ccxt (node): GET /v5/market/time", time);
ok("ccxt (node): GET /v5/market/time through sidepool (prefix form)");
// With a query, ccxt percent-encodes the whole target; the fake answers only the exact bytes.
const tickers = await exchange.publicGetV5MarketTickers({ category: "spot", symbol: "BTCUSDT" });
check(tickers.result.list[0].symbol === "BTCUSDT", "ccxt (node): tickers", tickers);
ok("ccxt (node): GET with a query, percent-encoded by ccxt, reached the exchange byte for byte");
const link = orderId("ccxtjs");
const placed = await exchange.privatePostV5OrderCreate({
  category: "spot", symbol: "BTCUSDT", side: "Buy", orderType: "Limit", qty: "0.001",
  price: "10000", orderLinkId: link,
});
check(placed.result.orderLinkId === link, "ccxt (node): order", placed);
ok("ccxt (node): signed order accepted (signature checked by the fake exchange)");
