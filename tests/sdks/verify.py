"""What the fake exchange saw from the SDKs: every order exactly once and signed, nothing of
sidepool's own headers, and few TLS connections for many requests (sidepool pooled them).

  verify.py RECORD RUN_ID SDK...     (SDK: pybit pybinance connector okx nodebybit nodebinance ccxtjs hl)
"""

import collections
import json
import sys


def marker(sdk, run):
    """What identifies an SDK's order in the exchange's record (its client order id)."""
    if sdk == "hl":
        return "0x" + run.encode().hex().rjust(32, "0")[-32:]
    return f"{sdk}{run}"[:32]


def main(record_path, run, *sdks):
    seen = [json.loads(line) for line in open(record_path, encoding="utf-8") if line.strip()]
    problems = []
    orders = collections.Counter()
    for r in seen:
        if r["signed"] is False:
            problems.append(f"bad signature: {r['method']} {r['host']}{r['target']}")
        if r["sidepool_headers"]:
            problems.append(f"sidepool headers reached the exchange: {r['sidepool_headers']}")
        for sdk in sdks:
            if marker(sdk, run) in r["body"] + r["target"]:
                orders[sdk] += 1
    for sdk in sdks:
        if orders[sdk] != 1:
            problems.append(f"{sdk}: its order reached the exchange {orders[sdk]} times, not once")
    conns = collections.defaultdict(set)
    for r in seen:
        conns[r["host"]].add(r["conn"])
    for host, c in sorted(conns.items()):
        requests = sum(1 for r in seen if r["host"] == host)
        print(f"{host}: {requests} requests on {len(c)} TLS connections")
        if len(c) > 2:
            problems.append(f"{host}: {len(c)} connections for {requests} requests (not pooled)")
    for p in problems:
        print("FAILED  " + p)
    print(f"ok  {sum(orders.values())} orders, each exactly once and signed" if not problems else "")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
