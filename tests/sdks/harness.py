"""Plumbing shared by the SDK scripts; the documented settings live in the scripts, between
`# [doc:NAME]` and `# [/doc]` (docs/sdks.md shows those blocks verbatim)."""

import os
import sys

SIDECAR = os.environ["SIDECAR_URL"]  # sidepool's proxy listener, http://127.0.0.1:8080 in production
API_KEY = "test-key"
API_SECRET = "test-secret"
PASSPHRASE = "test-pass"
RUN = os.environ.get("RUN_ID", "local")


def order_id(sdk):
    """A client order id unique to this script and run: the exchange must see it exactly once."""
    return f"{sdk}{RUN}"[:32]


def ok(what):
    print(f"ok  {what}")


def fail(what):
    print(f"FAILED  {what}")
    sys.exit(1)
