"""Checks the Grafana dashboards' structure and turns every PromQL expression in them into a
recording rule, so that promtool can parse each one.

Usage: dashboard_rules.py OUT_DIR DASHBOARD.json...
Writes OUT_DIR/dashboard.rules.yml (for `promtool check rules`) and OUT_DIR/dashboard.exprs
(one expression a line, for the metric-name check).
"""

import json
import re
import sys
from collections.abc import Iterator

# Grafana variables and their stand-ins for promtool. Unknown variables are an error.
STAND_INS = {"upstream": "bybit"}
BUILTIN = re.compile(r"__[a-z_]+")
VARIABLE = re.compile(r"\$\{([A-Za-z0-9_:]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def substitute(expr: str, where: str, problems: list[str]) -> str:
    def repl(m: re.Match) -> str:
        name = (m.group(1) or m.group(2)).split(":")[0]
        if BUILTIN.fullmatch(name):
            return "1m" if name != "__range" else "1h"
        if name in STAND_INS:
            return STAND_INS[name]
        problems.append(f"{where}: unknown variable ${name} (add a stand-in to {__file__})")
        return "x"

    return VARIABLE.sub(repl, expr)


def walk(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def check_variables(path: str, d: dict, problems: list[str]) -> None:
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"{path}: needs a datasource variable 'datasource' of type prometheus")
    up = variables.get("upstream")
    want = "label_values(http_pool_connections_limit, upstream)"
    if not up or not up.get("multi") or want not in json.dumps(up.get("query")):
        problems.append(f"{path}: needs a multi-value variable 'upstream' from {want}")


def main() -> None:
    out_dir, paths = sys.argv[1], sys.argv[2:]
    problems: list[str] = []
    rules = ["groups:"]
    exprs = []
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        name = re.sub(r"[^a-z0-9]", "_", path.rsplit("/", 1)[-1][:-5].lower())
        check_variables(path, d, problems)
        ids = set()
        rules.append(f"- name: {name}\n  rules:")
        count = 0
        for p in walk(d.get("panels", [])):
            if p.get("type") == "row":
                continue
            where = f"{path}: panel {p.get('id')} {p.get('title')!r}"
            if p.get("id") in ids or not isinstance(p.get("id"), int):
                problems.append(f"{where}: missing or duplicate panel id")
            ids.add(p.get("id"))
            targets = p.get("targets") or []
            if not targets:
                problems.append(f"{where}: no targets")
            refs = set()
            for t in targets:
                ref, expr = t.get("refId"), t.get("expr")
                if not ref or ref in refs:
                    problems.append(f"{where}: target without refId or with a duplicate refId {ref!r}")
                refs.add(ref)
                if not isinstance(expr, str) or not expr.strip():
                    problems.append(f"{where} {ref}: no expr")
                    continue
                exprs.append(expr)
                concrete = substitute(expr, f"{where} {ref}", problems)
                record = f"dashboard:{name}:panel_{p.get('id')}_{re.sub(r'[^A-Za-z0-9_]', '_', str(ref))}"
                rules.append(f"  - record: {record}\n    expr: {json.dumps(concrete)}")
                count += 1
        if count == 0:
            problems.append(f"{path}: no PromQL expressions found")
        print(f"{path}: {count} expressions in {len(ids)} panels")

    with open(f"{out_dir}/dashboard.rules.yml", "w") as f:
        f.write("\n".join(rules) + "\n")
    with open(f"{out_dir}/dashboard.exprs", "w") as f:
        f.write("\n".join(exprs) + "\n")
    if problems:
        sys.stdout.flush()
        print("\n".join(dict.fromkeys(problems)), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
