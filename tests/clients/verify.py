"""Checks for .ci/check-clients (Python stdlib only).

  verify.py snippets DOC SCRIPT...      every "[doc:NAME]" ... "[/doc]" block of the scripts
                                        appears verbatim (dedented) in DOC
  verify.py record RECORD EXPECT HOST   the fake exchange saw exactly the expected requests, each
                                        once, with Host rewritten and nothing added
  verify.py pooling METRICS RECORD      connections opened toward the upstream are far fewer
                                        than the requests sent
"""

import collections
import json
import re
import sys
import textwrap


def snippets(doc_path, *scripts):
    doc = open(doc_path, encoding="utf-8").read()
    found, missing = 0, []
    for script in scripts:
        lines = open(script, encoding="utf-8").read().split("\n")
        block = name = None
        for line in lines:
            marker = re.match(r"\s*(#|//) \[doc:([\w-]+)\]\s*$", line)
            if marker:
                name, block = marker.group(2), []
            elif re.match(r"\s*(#|//) \[/doc\]\s*$", line):
                text = textwrap.dedent("\n".join(block)).strip("\n")
                found += 1
                if "```" + "\n" + text + "\n```" not in doc.replace("```python", "```").replace(
                        "```js", "```").replace("```bash", "```"):
                    missing.append(f"{script}: [doc:{name}]")
                block = None
            elif block is not None:
                block.append(line)
    if missing:
        print("snippets in the scripts but not (verbatim, as a whole code block) in " + doc_path + ":")
        print("\n".join("  " + m for m in missing))
        return 1
    if found == 0:
        print("no [doc:...] snippets found")
        return 1
    print(f"{found} snippets of {len(scripts)} scripts appear verbatim in {doc_path}")
    return 0


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def record(record_path, expect_path, host):
    seen, expected = load(record_path), load(expect_path)
    key = lambda r: (r["method"], r["target"], r["body"])
    got = collections.Counter(key(r) for r in seen)
    want = collections.Counter(key(r) for r in expected)
    problems = []
    for k in sorted(set(got) | set(want)):
        if got[k] != want[k]:
            problems.append(f"{k[0]} {k[1]} body={k[2][:60]!r}: expected {want[k]}x, arrived {got[k]}x")
    for r in seen:
        h = r["headers"]
        if h.get("host") != host:
            problems.append(f"{r['method']} {r['target']}: Host {h.get('host')!r}, expected {host!r}")
        added = [n for n in ("via", "x-forwarded-for", "forwarded", "proxy-connection", "proxy-authorization")
                 if n in h]
        if added:
            problems.append(f"{r['method']} {r['target']}: forwarded with {added}")
        if r["method"] == "POST" and h.get("x-bapi-api-key") != "test-key":
            problems.append(f"POST {r['target']}: X-BAPI-API-KEY {h.get('x-bapi-api-key')!r}")
    if problems:
        print("the fake exchange's record does not match what the clients sent:")
        print("\n".join("  " + p for p in problems))
        return 1
    clients = len({r["client"] for r in expected})
    print(f"{len(seen)} requests from {clients} clients arrived exactly once each, "
          f"path+query and body intact, Host {host}, nothing added")
    return 0


def pooling(metrics_path, record_path):
    text = open(metrics_path, encoding="utf-8").read()
    match = re.search(r'^http_pool_connections_opened_total\{[^}]*upstream="bybit"[^}]*\}\s+(\S+)', text, re.M)
    if not match:
        print('http_pool_connections_opened_total{upstream="bybit"} missing from /metrics')
        return 1
    opened = int(float(match.group(1)))
    seen = load(record_path)
    conns = len({r["conn"] for r in seen})
    line = (f"{len(seen)} requests over {opened} upstream connection(s) opened by sidepool "
            f"({conns} seen by the exchange)")
    if len(seen) < 10 or opened < 1 or opened * 4 > len(seen) or conns > opened:
        print("not pooled: " + line)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit({"snippets": snippets, "record": record, "pooling": pooling}[command](*args))
