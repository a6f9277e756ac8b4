// Test plumbing shared by the Node client scripts; the doc snippets live in the scripts.
// In production SIDECAR is "http://127.0.0.1:8080" and BYBIT_HTTP is "http://api.bybit.com";
// .ci/check-clients points them at a throwaway sidepool and a local fake exchange.
import { createHmac } from "node:crypto";
import { appendFileSync } from "node:fs";
import { basename } from "node:path";

export const SIDECAR = process.env.SIDECAR_URL; // sidepool's proxy listener
export const BYBIT_HTTP = process.env.BYBIT_HTTP; // the exchange's base URL with http://
export const SIDECAR_HOST = new URL(SIDECAR).hostname;
export const SIDECAR_PORT = Number(new URL(SIDECAR).port);
export const TICKER = "/v5/market/tickers?category=spot&symbol=BTCUSDT";
const API_KEY = "test-key";
const API_SECRET = "test-secret";
const CLIENT = basename(process.argv[1]).replace(/(_client)?\.mjs$/, "");

// Tells the final check which request the fake exchange must have seen exactly once.
export function expect(method, target, body = "") {
  const line = { client: CLIENT, method, target, body };
  appendFileSync(process.env.EXPECT_FILE, JSON.stringify(line) + "\n");
}

// A Bybit v5 order as the exact string that gets signed and sent; orderLinkId makes it unique.
export function orderBody(tag) {
  return JSON.stringify({
    category: "spot", symbol: "BTCUSDT", side: "Buy", orderType: "Limit",
    qty: "0.001", price: "10000", orderLinkId: `${CLIENT}-${tag}`,
  });
}

// Bybit v5 signing: HMAC-SHA256 over timestamp + api key + recv window + body.
export function signHeaders(body) {
  const ts = String(Date.now());
  const window = "5000";
  const sign = createHmac("sha256", API_SECRET).update(ts + API_KEY + window + body).digest("hex");
  return {
    "Content-Type": "application/json", "X-BAPI-API-KEY": API_KEY,
    "X-BAPI-TIMESTAMP": ts, "X-BAPI-RECV-WINDOW": window, "X-BAPI-SIGN": sign,
  };
}

function fail(message) {
  throw new Error(message);
}

export function checkTicker(status, body, what) {
  if (status !== 200) fail(`${what}: status ${status}, body ${body.slice(0, 300)}`);
  const data = JSON.parse(body);
  if (data.retCode !== 0 || data.result.list[0].symbol !== "BTCUSDT") fail(`${what}: ${body}`);
  console.log(`ok  ${what}: 200, ${Buffer.byteLength(body)}-byte ticker`);
}

export function checkEcho(status, body, sent, what) {
  if (status !== 200) fail(`${what}: status ${status}, body ${body.slice(0, 300)}`);
  const echo = JSON.parse(body).result.echo;
  if (echo !== sent) fail(`${what}: exchange got ${echo}, sent ${sent}`);
  console.log(`ok  ${what}: 200, signature valid, body echoed byte for byte`);
}
