"""Fails when a relative link or image in a tracked Markdown file points at a file that does not
exist, so docs cannot go on citing benchmark runs or pages that were moved or deleted.

Usage: docs_links.py FILE.md...   (links with a scheme, and pure #anchors, are not checked)
"""

import os
import re
import sys

# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.M | re.S)


def broken_links(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())  # code blocks show syntax, not links
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        file_part = target.split("#", 1)[0]
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
        if not os.path.exists(resolved):
            out.append(f"{path}: {target} (no {resolved})")
    return out


def main() -> None:
    problems = [p for path in sys.argv[1:] for p in broken_links(path)]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(f"{len(problems)} broken link(s) in the docs")
    print(f"links in {len(sys.argv) - 1} Markdown files resolve")


if __name__ == "__main__":
    main()
