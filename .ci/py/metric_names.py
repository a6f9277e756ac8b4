"""Checks that every http_pool_* metric name and label value the alert rules, their tests, the
dashboards and the docs use is one sidepool registers, and that docs/troubleshooting.md has a
section for every alert and every error kind, and that the links between the docs resolve.

Usage: metric_names.py REGISTERED_JSON DASHBOARD_EXPRS RULES RULE_TESTS TROUBLESHOOTING DOC.md...
REGISTERED_JSON is what scrape_registered.py wrote; DASHBOARD_EXPRS what dashboard_rules.py wrote.
"""

import json
import re
import sys

NAME = re.compile(r"\bhttp_pool_[a-z0-9_]*[a-z0-9]")
MATCHER = re.compile(r'\b(kind|reason|result|status_class)\s*(=~|!~|!=|=)\s*"([^"]*)"')
HEADING = re.compile(r"^#+\s+(.*)$", re.M)
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def check_names(sources: dict[str, str], metrics: dict[str, str], labels: dict, problems: list[str]) -> dict:
    used = {}
    for source, text in sources.items():
        names = set()
        for name in NAME.findall(text):
            base = name
            if name not in metrics:
                stripped = HISTOGRAM_SERIES.sub("", name)
                if metrics.get(stripped) == "histogram":
                    base = stripped
                else:
                    problems.append(f"{source}: metric {name} is not one sidepool registers")
            names.add(base)
        used[source] = names
        for label, _, value in MATCHER.findall(text):
            for token in re.split(r"[|()]", value):
                if re.fullmatch(r"[a-z0-9_]+", token) and token not in labels[label]:
                    problems.append(
                        f'{source}: {label}="{token}" is not a value sidepool records '
                        f"(known: {', '.join(sorted(labels[label]))})"
                    )
    return used


def check_docs(rules_text: str, linking: str, troubleshooting: str, docs: list[str], kinds: set[str]) -> tuple:
    """`rules_text` names the alerts; `linking` is every text whose troubleshooting links must resolve."""
    problems = []
    anchors = {anchor(h) for h in HEADING.findall(read(troubleshooting))}
    alerts = re.findall(r"^\s*- alert:\s*(\S+)", rules_text, re.M)
    for a in alerts:
        if a.lower() not in anchors:
            problems.append(f"{troubleshooting}: no section for alert {a} (heading '## {a}')")
    for k in sorted(kinds):
        if k not in anchors:
            problems.append(f"{troubleshooting}: no section for error kind {k} (heading '### `{k}`')")
    for link in set(re.findall(r"troubleshooting\.md#([A-Za-z0-9_\-]+)", linking)):
        if link not in anchors:
            problems.append(f"rules link to {troubleshooting}#{link}, which has no such heading")

    # Links between the docs: [..](#anchor), [..](tuning.md#anchor), [..](troubleshooting.md#anchor).
    doc_anchors = {d.rsplit("/", 1)[-1]: {anchor(h) for h in HEADING.findall(read(d))} for d in docs}
    for d in docs:
        me = d.rsplit("/", 1)[-1]
        for target, frag in re.findall(r"\]\(([A-Za-z0-9_.\-]*)#([^)\s]+)\)", read(d)):
            target = target or me
            if target in doc_anchors and frag not in doc_anchors[target]:
                problems.append(f"{d}: link to {target}#{frag}, which has no such heading")
    return problems, alerts


def main() -> None:
    registered_path, dashboard_exprs, rules, rule_tests, troubleshooting, *docs = sys.argv[1:]
    with open(registered_path) as f:
        registered = json.load(f)
    metrics = registered["metrics"]
    labels = {name: set(registered["labels"].get(name, [])) for name in ("kind", "reason", "result", "status_class")}
    for label, values in labels.items():
        if not values:
            sys.exit(f"sidepool's /metrics shows no value of label {label!r}: update this check")

    problems: list[str] = []
    dashboard = read(dashboard_exprs)
    sources = {
        "rules": read(rules) + read(rule_tests),
        "dashboard": dashboard,
        "docs": "".join(read(d) for d in docs),
    }
    used = check_names(sources, metrics, labels, problems)
    for source in ("rules", "dashboard", "docs"):
        print(f"{source}: {' '.join(sorted(used[source]))}")
    for required in ("rules", "dashboard"):
        if not used[required]:
            problems.append(f"{required}: no http_pool_* metric found; the extraction is broken")
    unused = set(metrics) - used["rules"] - used["dashboard"]
    if unused:
        print(f"registered but not on the dashboard or in the rules: {' '.join(sorted(unused))}")

    more, alerts = check_docs(read(rules), sources["rules"] + dashboard, troubleshooting, docs, labels["kind"])
    problems += more
    if problems:
        sys.stdout.flush()
        print("\n".join(dict.fromkeys(problems)), file=sys.stderr)
        sys.exit(1)
    print(
        f"OK: {len(set().union(*used.values()))} metric names used, all registered; "
        f"{len(alerts)} alerts and {len(labels['kind'])} error kinds documented"
    )


if __name__ == "__main__":
    main()
