"""Cheap check of models/: every file in manifest.yaml exists and has its recorded sha256.

    python models/verify.py [MANIFEST]     # default: manifest.yaml beside this script

Standard library + PyYAML only (no TensorFlow, no interpreter), so it runs anywhere: in CI,
on a lab machine before deploying, on a gateway. Exit 0 when everything matches, 1 otherwise,
with one line per problem. `models/build.py --check` is the expensive counterpart: it rebuilds
everything and compares.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifest.yaml"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(manifest_path: Path = DEFAULT_MANIFEST) -> list[str]:
    """Problems found (empty when all is well); paths are relative to the manifest's folder."""
    if not manifest_path.is_file():
        return [f"{manifest_path}: no such manifest"]
    try:
        manifest: Any = yaml.safe_load(manifest_path.read_text())
    except yaml.YAMLError as e:
        return [f"{manifest_path}: not valid YAML: {e}"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), list):
        return [f"{manifest_path}: expected a mapping with a `models:` list"]
    if manifest.get("format") != 1:
        return [f"{manifest_path}: format {manifest.get('format')!r}, this script reads format 1"]
    root = manifest_path.parent
    problems = []
    evals = set()
    for i, m in enumerate(manifest["models"]):
        where = f"{manifest_path.name}: models[{i}]"
        if not isinstance(m, dict) or not {"file", "sha256", "eval"} <= m.keys():
            problems.append(f"{where}: needs file, sha256 and eval")
            continue
        path = root / m["file"]
        if not path.is_file():
            problems.append(f"{where}: {m['file']} is missing")
            continue
        actual = sha256_file(path)
        if actual != m["sha256"]:
            problems.append(
                f"{where}: {m['file']} has sha256 {actual}, the manifest records {m['sha256']}"
            )
        evals.add(m["eval"])
    problems.extend(
        f"{manifest_path.name}: eval set {rel} is missing"
        for rel in sorted(evals)
        if not (root / rel).is_file()
    )
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    manifest_path = Path(args[0]) if args else DEFAULT_MANIFEST
    problems = verify(manifest_path)
    if problems:
        print(f"models/verify.py: {len(problems)} problem(s) in {manifest_path}:")
        for p in problems:
            print(f"  {p}")
        return 1
    count = len(yaml.safe_load(manifest_path.read_text())["models"])
    print(f"models/verify.py: OK, {count} models match {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
