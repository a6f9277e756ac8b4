"""Fails when a benchmark run kept in git is cited by no document, so bench/results/ holds the runs
the docs rest on and no others (a new run is committed only together with the docs that cite it).

Usage: bench_results_cited.py   (from the repository root; reads `git ls-files`)
"""

import subprocess
import sys


def tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *patterns], capture_output=True, text=True, check=True)
    return out.stdout.split()


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def main() -> int:
    runs = sorted({path.split("/")[2] for path in tracked("bench/results/") if path.count("/") >= 3})
    docs = "".join(read(path) for path in tracked("*.md"))
    orphans = [run for run in runs if run not in docs]
    for run in orphans:
        print(f"bench/results/{run} is in git but no document cites it: cite it or remove it")
    if not orphans:
        print(f"{len(runs)} benchmark runs in git, each cited by a document")
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
