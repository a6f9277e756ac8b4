// axios: route mode, forward-proxy mode with the proxy option and from HTTP_PROXY, a signed POST.
import axios from "axios";
import {
  BYBIT_HTTP, SIDECAR, SIDECAR_HOST, SIDECAR_PORT, TICKER, checkEcho, checkTicker, expect, orderBody, signHeaders,
} from "./harness.mjs";

expect("GET", TICKER);
// [doc:axios-route]
const api = axios.create({ baseURL: `${SIDECAR}/bybit`, timeout: 80_000, responseType: "text" });
let r = await api.get("/v5/market/tickers?category=spot&symbol=BTCUSDT");
// [/doc]
checkTicker(r.status, r.data, "route GET");

const body = orderBody("route");
expect("POST", "/v5/order/create", body);
// [doc:axios-signed]
r = await api.post("/v5/order/create", body, { headers: signHeaders(body) }); // a string is sent as is
// [/doc]
checkEcho(r.status, r.data, body, "signed POST (route)");

expect("GET", TICKER);
// [doc:axios-proxy]
const proxied = axios.create({
  baseURL: BYBIT_HTTP, timeout: 80_000, responseType: "text",
  proxy: { protocol: "http", host: SIDECAR_HOST, port: SIDECAR_PORT }, // 127.0.0.1, 8080
});
r = await proxied.get("/v5/market/tickers?category=spot&symbol=BTCUSDT");
// [/doc]
checkTicker(r.status, r.data, "forward-proxy GET (proxy option)");

expect("GET", TICKER);
// [doc:axios-env]
// environment: HTTP_PROXY=http://127.0.0.1:8080 NO_PROXY=127.0.0.1,localhost
r = await axios.get(`${BYBIT_HTTP}/v5/market/tickers?category=spot&symbol=BTCUSDT`, {
  timeout: 80_000, responseType: "text",
});
// [/doc]
checkTicker(r.status, r.data, "forward-proxy GET (HTTP_PROXY)");
