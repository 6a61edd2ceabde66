"""``fieldrig place WORKLOAD.yaml...``: per-tier table on stdout, optional JSON file.

Wire into bench/cli.py with::

    place = sub.add_parser("place", help="where should a workload's decision run?")
    place.add_argument("workloads", nargs="+", type=Path, metavar="WORKLOAD")
    place.add_argument("--runs-dir", type=Path, default=Path("reports/runs"), metavar="DIR")
    place.add_argument("--json", type=Path, metavar="FILE", help="also write the advice as JSON")
    place.set_defaults(func=place_command)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from bench.placement.measured import Measurements
from bench.placement.model import Advice, TierResult, advise
from bench.placement.workload import load_workload


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _row(t: TierResult) -> list[str]:
    meets = {True: "yes", False: "NO", None: "-"}[t.meets_budget]
    energy = "-" if t.energy_mj is None else f"{t.energy_mj.value:.3g}"
    day = "-" if t.backhaul_bytes_per_day is None else f"{t.backhaul_bytes_per_day:.4g}"
    return [t.tier, t.status, _ms(t.p50_ms), _ms(t.p99_ms), meets, energy, day]


def render(advice: Advice, out: TextIO) -> None:
    """The advice as a text table, reasons, notes and sources."""
    w = advice.workload
    print(f"== {w.name}: {w.model.name}/{w.model.variant}, {w.rate_per_s:g} msg/s x "
          f"{w.payload_bytes} B, budget {w.budget_ms:g} ms (p99), data at the {w.origin}",
          file=out)  # fmt: skip
    head = ["tier", "status", "p50 ms", "p99 ms", "meets", "mJ/dec", "backhaul B/day"]
    rows = [head, *(_row(t) for t in advice.tiers)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(c.ljust(n) for c, n in zip(row, widths, strict=True)).rstrip(), file=out)
    raw, reduced = advice.backhaul["raw"], advice.backhaul["reduced"]
    print(
        f"backhaul per day: raw {raw:.4g} B"
        + ("" if reduced is None else f", with gateway reduction {reduced:.4g} B"),
        file=out,
    )
    print(f"recommended: {advice.recommended or 'none'}", file=out)
    for reason in advice.reasons:
        print(f"  - {reason}", file=out)
    for t in advice.tiers:
        for term in t.terms:
            print(f"  {t.tier}: {term.name} {term.p50_ms:.4f}/{term.p99_ms:.4f} ms ({term.basis})",
                  file=out)  # fmt: skip
        for note in t.notes:
            print(f"  {t.tier}: note: {note}", file=out)
    print("sources:", file=out)
    for number in advice.sources:
        print(f"  {number.value:.6g} {number.unit} <- {number.source}", file=out)


def add_arguments(place: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``fieldrig place`` (the lines the module docstring shows)."""
    place.add_argument("workloads", nargs="+", type=Path, metavar="WORKLOAD")
    place.add_argument("--runs-dir", type=Path, default=Path("reports/runs"), metavar="DIR")
    place.add_argument("--json", type=Path, metavar="FILE", help="also write the advice as JSON")
    place.set_defaults(func=place_command)
    return place


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.placement.cli WORKLOAD...`` (the same as ``fieldrig place``)."""
    import sys

    from bench.errors import BenchError

    args = add_arguments(argparse.ArgumentParser(prog="fieldrig place")).parse_args(argv)
    try:
        return place_command(args)
    except BenchError as exc:
        print(f"fieldrig: error: {exc}", file=sys.stderr)
        return 2


def place_command(args: argparse.Namespace) -> int:
    """Advise on every workload in ``args.workloads`` (``--runs-dir``, ``--json``)."""
    import sys

    workloads = [load_workload(Path(p)) for p in args.workloads]
    runs_dir = Path(args.runs_dir)
    cache: dict[tuple[str, ...], Measurements] = {}
    advices = []
    for workload in workloads:
        key = tuple(workload.runs)
        if key not in cache:
            cache[key] = Measurements.load(runs_dir, workload.runs)
        advices.append(advise(workload, cache[key]))
    for advice in advices:
        render(advice, sys.stdout)
        print()
    if getattr(args, "json", None):
        path = Path(args.json)
        path.write_text(json.dumps({"workloads": [a.to_dict() for a in advices]}, indent=2) + "\n")
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
