// Node's built-in fetch: route mode (it has no proxy option), a GET and a signed POST.
import { SIDECAR, TICKER, checkEcho, checkTicker, expect, orderBody, signHeaders } from "./harness.mjs";

expect("GET", TICKER);
// [doc:fetch-route]
const BASE = `${SIDECAR}/bybit`; // was https://api.bybit.com
let r = await fetch(`${BASE}/v5/market/tickers?category=spot&symbol=BTCUSDT`, {
  signal: AbortSignal.timeout(80_000),
});
const ticker = await r.text();
// [/doc]
checkTicker(r.status, ticker, "route GET");

const body = orderBody("route");
expect("POST", "/v5/order/create", body);
// [doc:fetch-signed]
r = await fetch(`${BASE}/v5/order/create`, {
  method: "POST", body, headers: signHeaders(body), signal: AbortSignal.timeout(80_000),
});
// [/doc]
checkEcho(r.status, await r.text(), body, "signed POST (route)");
