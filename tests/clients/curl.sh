#!/usr/bin/env bash
# curl: route mode, forward-proxy mode (-x and http_proxy), a signed POST, sidepool's own
# errors, and an https:// URL through the proxy (CONNECT, refused with 405).
set -euo pipefail
cd "$(dirname "$0")"
SIDECAR=$SIDECAR_URL                 # http://127.0.0.1:8080 in production
: "$BYBIT_HTTP"                      # http://api.bybit.com in production
export CLIENT_NAME=curl
PY=${PYTHON:-python3}
TICKER="/v5/market/tickers?category=spot&symbol=BTCUSDT"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

route_get() {
  # [doc:curl-route]
  curl -sS --max-time 80 "$SIDECAR/bybit/v5/market/tickers?category=spot&symbol=BTCUSDT"
  # [/doc]
}
forward_get() {
  # [doc:curl-proxy]
  curl -sS --max-time 80 -x "$SIDECAR" "$BYBIT_HTTP/v5/market/tickers?category=spot&symbol=BTCUSDT"
  # [/doc]
}
forward_env_get() {
  # [doc:curl-env]
  # curl reads lowercase http_proxy for http:// URLs (HTTP_PROXY is ignored)
  http_proxy=$SIDECAR curl -sS --max-time 80 "$BYBIT_HTTP/v5/market/tickers?category=spot&symbol=BTCUSDT"
  # [/doc]
}
signed_post() {
  local key=test-key secret=test-secret
  # [doc:curl-signed]
  body='{"category":"spot","symbol":"BTCUSDT","side":"Buy","orderType":"Limit","qty":"0.001","price":"10000","orderLinkId":"curl-route"}'
  ts=$(date +%s%3N)
  sign=$(printf '%s' "$ts${key}5000$body" | openssl dgst -sha256 -hmac "$secret" | sed 's/^.* //')
  curl -sS --max-time 80 "$SIDECAR/bybit/v5/order/create" --data-binary "$body" \
    -H "Content-Type: application/json" -H "X-BAPI-API-KEY: $key" -H "X-BAPI-TIMESTAMP: $ts" \
    -H "X-BAPI-RECV-WINDOW: 5000" -H "X-BAPI-SIGN: $sign"
  # [/doc]
}
error_get() {
  # [doc:curl-errors]
  curl -sS --max-time 80 -D - "$SIDECAR/nope/v5/market/time"
  # [/doc]
}

$PY harness.py expect GET "$TICKER"
route_get >"$out/route"
$PY harness.py ticker "route GET" "$out/route"

$PY harness.py expect GET "$TICKER"
forward_get >"$out/forward"
$PY harness.py ticker "forward-proxy GET (-x)" "$out/forward"

$PY harness.py expect GET "$TICKER"
forward_env_get >"$out/forward_env"
$PY harness.py ticker "forward-proxy GET (http_proxy)" "$out/forward_env"

body='{"category":"spot","symbol":"BTCUSDT","side":"Buy","orderType":"Limit","qty":"0.001","price":"10000","orderLinkId":"curl-route"}'
$PY harness.py expect POST /v5/order/create "$body"
signed_post >"$out/post"
$PY harness.py echo "signed POST (route)" "$out/post" "$body"

error_get >"$out/error"
$PY harness.py error not_allowed "unknown upstream" "$out/error"

# An https:// URL through the proxy: curl sends CONNECT, sidepool answers 405.
code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_connect}' -x "$SIDECAR" \
  "${BYBIT_HTTP/http:/https:}$TICKER" 2>"$out/connect") || true
if [[ $code != 405 ]]; then
  echo "https:// through the proxy: expected CONNECT 405, got ${code:-nothing}: $(cat "$out/connect")" >&2
  exit 1
fi
echo "ok  https:// through the proxy: CONNECT refused with 405 ($(tr -d '\n' <"$out/connect"))"
