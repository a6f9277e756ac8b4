"""Turns every line of every ```promql block in the given docs into a recording rule, so that
promtool can parse each expression.

Usage: docs_promql.py OUT_RULES_YAML DOC.md...
"""

import json
import re
import sys

BLOCK = re.compile(r"^[ \t]*```promql\n(.*?)^[ \t]*```", re.M | re.S)


def main() -> None:
    out, docs = sys.argv[1], sys.argv[2:]
    rules = ["groups:", "- name: docs", "  rules:"]
    count = 0
    for path in docs:
        with open(path) as f:
            text = f.read()
        for block in BLOCK.findall(text):
            for line in block.splitlines():
                expr = re.sub(r"\s+#.*$", "", line).strip()  # PromQL comments
                if not expr:
                    continue
                count += 1
                rules.append(f"  - record: docs:expr_{count}\n    expr: {json.dumps(expr)}")
    with open(out, "w") as f:
        f.write("\n".join(rules) + "\n")
    print(f"{count} expressions")
    if count == 0:
        sys.exit("no ```promql blocks found in the docs")


if __name__ == "__main__":
    main()
