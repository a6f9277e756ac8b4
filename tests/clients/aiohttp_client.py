"""aiohttp: route mode, forward-proxy mode with proxy= and with trust_env=True, a signed POST."""

import asyncio

import aiohttp

from harness import BYBIT_HTTP, SIDECAR, TICKER, check_echo, check_ticker, expect, order_body, sign_headers


async def main():
    expect("GET", TICKER)
    # [doc:aiohttp-route]
    timeout = aiohttp.ClientTimeout(total=80)
    # base URL ends with "/", request paths have no leading "/"
    session = aiohttp.ClientSession(f"{SIDECAR}/bybit/", timeout=timeout)  # one per bot, reused
    async with session.get("v5/market/tickers?category=spot&symbol=BTCUSDT") as r:
        status, ticker = r.status, await r.read()
    # [/doc]
    check_ticker(status, ticker, "route GET")

    body = order_body("route")
    expect("POST", "/v5/order/create", body)
    # [doc:aiohttp-signed]
    body = order_body("route")
    async with session.post("v5/order/create", data=body, headers=sign_headers(body)) as r:
        status, reply = r.status, await r.read()
    # [/doc]
    check_echo(status, reply, body, "signed POST (route)")
    await session.close()

    expect("GET", TICKER)
    # [doc:aiohttp-proxy]
    session = aiohttp.ClientSession(timeout=timeout)
    url = f"{BYBIT_HTTP}/v5/market/tickers?category=spot&symbol=BTCUSDT"
    async with session.get(url, proxy=SIDECAR) as r:
        status, ticker = r.status, await r.read()
    # [/doc]
    check_ticker(status, ticker, "forward-proxy GET (proxy=)")
    await session.close()

    expect("GET", TICKER)
    # [doc:aiohttp-env]
    # environment: HTTP_PROXY=http://127.0.0.1:8080 NO_PROXY=127.0.0.1,localhost
    session = aiohttp.ClientSession(trust_env=True, timeout=timeout)
    async with session.get(f"{BYBIT_HTTP}/v5/market/tickers?category=spot&symbol=BTCUSDT") as r:
        status, ticker = r.status, await r.read()
    # [/doc]
    check_ticker(status, ticker, "forward-proxy GET (trust_env=True)")
    await session.close()


asyncio.run(main())
