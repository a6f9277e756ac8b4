"""ccxt (async): bybit's API base URLs pointed at sidepool, route mode and forward-proxy mode.

Implicit API methods keep the request count exact; unified methods (fetch_ticker, create_order)
build their URLs from the same exchange.urls["api"], so they go through sidepool the same way.
"""

import asyncio

import ccxt.async_support as ccxt

from harness import API_KEY, API_SECRET, BYBIT_HTTP, SIDECAR, TICKER, check_echo, check_ticker, expect


async def main():
    expect("GET", TICKER)
    # [doc:ccxt-route]
    exchange = ccxt.bybit({"apiKey": API_KEY, "secret": API_SECRET, "timeout": 80_000})
    exchange.urls["api"] = {name: f"{SIDECAR}/bybit" for name in exchange.urls["api"]}
    tickers = await exchange.public_get_v5_market_tickers({"category": "spot", "symbol": "BTCUSDT"})
    # [/doc]
    check_ticker(200, exchange.json(tickers), "route GET")

    # [doc:ccxt-signed]
    order = {"category": "spot", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit",
             "qty": "0.001", "price": "10000", "orderLinkId": "ccxt-route"}
    reply = await exchange.private_post_v5_order_create(order)  # ccxt signs, sidepool forwards as is
    # [/doc]
    expect("POST", "/v5/order/create", exchange.json(order))
    check_echo(200, exchange.json(reply), exchange.json(order).encode(), "signed POST (route)")
    await exchange.close()

    expect("GET", TICKER)
    # [doc:ccxt-proxy]
    exchange = ccxt.bybit({"httpProxy": SIDECAR, "timeout": 80_000})
    exchange.urls["api"] = {name: BYBIT_HTTP for name in exchange.urls["api"]}
    tickers = await exchange.public_get_v5_market_tickers({"category": "spot", "symbol": "BTCUSDT"})
    # [/doc]
    check_ticker(200, exchange.json(tickers), "forward-proxy GET (httpProxy)")
    await exchange.close()


asyncio.run(main())
