// undici: route mode with a Pool, forward-proxy mode with ProxyAgent({ proxyTunnel: false }),
// and what happens without proxyTunnel: false (a CONNECT tunnel, refused with 405).
import { Pool, ProxyAgent, fetch } from "undici";
import { BYBIT_HTTP, SIDECAR, TICKER, checkEcho, checkTicker, expect, orderBody, signHeaders } from "./harness.mjs";

expect("GET", TICKER);
// [doc:undici-route]
const pool = new Pool(SIDECAR, { connections: 16 }); // kept-alive connections to sidepool
const res = await pool.request({
  method: "GET", path: "/bybit/v5/market/tickers?category=spot&symbol=BTCUSDT",
  headersTimeout: 80_000, bodyTimeout: 80_000,
});
const ticker = await res.body.text();
// [/doc]
checkTicker(res.statusCode, ticker, "route GET (Pool)");
await pool.close();

expect("GET", TICKER);
// [doc:undici-proxy]
// proxyTunnel: false sends http:// URLs to the proxy as plain requests; the default would CONNECT
const dispatcher = new ProxyAgent({ uri: SIDECAR, proxyTunnel: false });
let r = await fetch(`${BYBIT_HTTP}/v5/market/tickers?category=spot&symbol=BTCUSDT`, { dispatcher });
// [/doc]
checkTicker(r.status, await r.text(), "forward-proxy GET (ProxyAgent)");

const body = orderBody("forward");
expect("POST", "/v5/order/create", body);
// [doc:undici-signed]
r = await fetch(`${BYBIT_HTTP}/v5/order/create`, {
  method: "POST", body, headers: signHeaders(body), dispatcher,
});
// [/doc]
checkEcho(r.status, await r.text(), body, "signed POST (forward proxy)");
await dispatcher.close();

// Without proxyTunnel: false, undici opens a CONNECT tunnel even for http:// URLs: refused.
const tunneling = new ProxyAgent(SIDECAR);
try {
  await fetch(`${BYBIT_HTTP}${TICKER}`, { dispatcher: tunneling });
  throw new Error("CONNECT through sidepool unexpectedly succeeded");
} catch (e) {
  let why = e;
  while (why.cause) why = why.cause; // fetch failed <- request cancelled <- Proxy response (405)
  if (!String(why.message).includes("405")) throw e;
  why = why.message;
  console.log(`ok  ProxyAgent with the default proxyTunnel: CONNECT refused (${why})`);
}
await tunneling.close();
