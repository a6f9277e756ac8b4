"""hyperliquid-python-sdk: unchanged, mainnet URL and all, through CONNECT interception. The SDK
signs for mainnet only when its base URL is the mainnet constant, so it cannot be pointed at
sidepool's address: HTTPS_PROXY sends its TLS to sidepool, which terminates it with the local CA.
.ci/check-sdks sets HTTPS_PROXY and REQUESTS_CA_BUNDLE for this script only."""

import os

from harness import RUN, ok

PRIVATE_KEY = os.environ["HL_PRIVATE_KEY"]

# [doc:hyperliquid]
# environment: HTTPS_PROXY=http://127.0.0.1:8080 REQUESTS_CA_BUNDLE=/path/to/sidepool-ca.pem
from eth_account import Account
from hyperliquid.exchange import Exchange
from hyperliquid.utils import constants

exchange = Exchange(Account.from_key(PRIVATE_KEY), constants.MAINNET_API_URL)  # unchanged
# [/doc]

from hyperliquid.utils.types import Cloid  # noqa: E402

cloid = Cloid.from_str("0x" + RUN.encode().hex().rjust(32, "0")[-32:])
result = exchange.order("BTC", True, 0.001, 10000, {"limit": {"tif": "Gtc"}}, cloid=cloid)
assert result["status"] == "ok", result
assert result["response"]["data"]["statuses"][0]["resting"]["cloid"] == cloid.to_raw(), result
ok("hyperliquid: order signed for mainnet, through CONNECT interception")
