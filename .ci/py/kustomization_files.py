"""Fails when kustomization.yaml names a file that does not exist (for when kubectl is absent).

The commented opt-in resources (`# - podmonitor.yaml`) are checked too.
Usage: kustomization_files.py KUSTOMIZE_DIR
"""

import os
import re
import sys

import yaml


def main() -> None:
    d = sys.argv[1]
    with open(os.path.join(d, "kustomization.yaml")) as f:
        text = f.read()
    k = yaml.safe_load(text)
    files = list(k.get("resources", []))
    files += re.findall(r"^\s*#\s*-\s*(\S+\.yaml)\s*$", text, re.M)
    for gen in k.get("configMapGenerator", []):
        files += [f.split("=", 1)[-1] for f in gen.get("files", [])]
    missing = [f for f in files if not os.path.exists(os.path.join(d, f))]
    for f in missing:
        print(f"kustomization.yaml names a missing file: {f}", file=sys.stderr)
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
