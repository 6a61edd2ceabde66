"""The ``fieldrig`` command: lab up/down/status, rig checks, run summaries, reports and
placement advice."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import __version__
from bench.errors import BenchError
from bench.rig import load_rig


def _lab(args: argparse.Namespace) -> int:
    from bench.lab.virtual import VirtualLab

    if args.action == "doctor":
        return _doctor(args)
    lab = VirtualLab(load_rig(args.rig))
    if args.action == "up":
        built = lab.up()
        print(f"lab '{lab.plan.lab_id}': {'up' if built else 'already up, left as it was'}")
        _print_status(lab)
    elif args.action == "down":
        lab.down(purge=args.purge)
        print(f"lab '{lab.plan.lab_id}': down" + (" (state purged)" if args.purge else ""))
    else:
        return 0 if _print_status(lab) else 1
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import json

    from bench.lab.doctor import Doctor, render

    report = Doctor(load_rig(args.rig)).run(fix=args.fix)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(render(report)))
    return 0 if report.clean else 1


def _print_status(lab: object) -> bool:
    from bench.lab.virtual import VirtualLab

    assert isinstance(lab, VirtualLab)
    status = lab.status()
    print(f"{'gateway':<12} {'namespace':<22} {'address':<15} {'sshd':<8} ssh")
    for gw in status.gateways:
        sshd = str(gw.sshd_pid) if gw.sshd_pid else "-"
        print(
            f"{gw.name:<12} {gw.namespace if gw.namespace_present else '-':<22} "
            f"{gw.address:<15} {sshd:<8} {'answers' if gw.ssh_answers else 'no answer'}"
        )
    if status.supply:
        print(f"supply: {status.supply} {'running' if status.supply_running else 'NOT running'}")
    if status.radios:
        running = "running" if status.radios_running else "NOT running"
        print(f"radios: emulated dongles for {', '.join(status.radios)} {running}")
    if lab.plan.tiers:
        tiers = ", ".join(f"{t.name} {t.address} at {t.distance_km:g} km" for t in lab.plan.tiers)
        print(f"tiers: {tiers} {'up' if status.tiers_running else 'NOT up'}")
    if not status.built_as_planned and status.anything_present:
        print("built from a different rig file or board profiles: `up` will rebuild it")
    if status.stray_namespaces:
        print(f"stray namespaces (from an older rig file): {', '.join(status.stray_namespaces)}")
    if status.healthy:
        state = "healthy"
    elif not status.anything_present:
        state = "down"
    else:
        state = "outdated" if not status.built_as_planned else "partial"
    print(f"lab '{status.lab_id}': {state}")
    return status.healthy


def _rig_check(args: argparse.Namespace) -> int:
    rig = load_rig(args.rig)
    kind = "virtual lab" if rig.is_virtual else "hardware lab"
    print(f"{rig.source_path}: ok ({kind} '{rig.name}', {len(rig.gateways)} gateways, "
          f"{len(rig.instruments)} instruments)")  # fmt: skip
    return 0


def _summary(args: argparse.Namespace) -> int:
    from bench.report.summary import write_summary

    path = write_summary(args.run)
    print(path.read_text())
    print(f"written to {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from bench.report.build import build_report, stderr_progress
    from bench.report.compare import Settings
    from bench.report.index import build_index

    runs_dir = Path(args.runs_dir)
    regressions = 0
    if not args.index_only:
        settings = Settings(args.alpha, args.min_effect, args.min_samples).check()
        files = build_report(args.runs, baseline=args.baseline, out=args.out, runs_dir=runs_dir,
                             settings=settings, progress=stderr_progress)  # fmt: skip
        regressions = files.regressions
        print(f"report: {files.html}")
        print(f"summary: {files.summary}")
        print(f"data: {files.out_dir / 'data'}")
        print(f"{files.regressions} regression(s), {files.failures} failed test(s)")
    if not args.no_index and any(runs_dir.glob("*/run.json")):
        print(f"index: {build_index(runs_dir, progress=stderr_progress)}")
    return 1 if args.fail_on_regression and regressions else 0


def _place(args: argparse.Namespace) -> int:
    from bench.placement.cli import place_command

    return place_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fieldrig", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fieldrig {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("lab", help="bring the virtual lab up or down, or show it")
    lab.add_argument("action", choices=["up", "down", "status", "doctor"],
                     help="doctor: find what killed runs left on the rig")  # fmt: skip
    lab.add_argument("--rig", default="virtual", help="a virtual rig (name or path)")
    lab.add_argument("--purge", action="store_true", help="down: also delete keys and disks")
    lab.add_argument("--fix", action="store_true", help="doctor: remove what it finds")
    lab.add_argument("--json", action="store_true", help="doctor: one JSON report on stdout")
    lab.set_defaults(func=_lab)
    rig = sub.add_parser("rig", help="validate a rig file")
    rig.add_argument("action", choices=["check"])
    rig.add_argument("rig", help="rig name or path")
    rig.set_defaults(func=_rig_check)
    summary = sub.add_parser("summary", help="summarise a run (default: the latest)")
    summary.add_argument("run", nargs="?", default="latest", help="run directory or 'latest'")
    summary.set_defaults(func=_summary)
    report = sub.add_parser(
        "report",
        help="HTML report, Markdown summary and tidy data of runs, optionally against a baseline",
        description="Report on the newest RUN (sections), the RUNs as a series (change "
        "points), and the newest RUN against --baseline (regressions). Also rewrites the "
        "index of every run in --runs-dir (its parent's index.html).",
    )
    report.add_argument("runs", nargs="*", default=["latest"], metavar="RUN",
                        help="run directory or 'latest' (default: latest)")  # fmt: skip
    report.add_argument("--baseline", metavar="RUN", help="run to compare the newest RUN with")
    report.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (default: reports/<newest run id>/)")  # fmt: skip
    report.add_argument("--runs-dir", default="reports/runs", metavar="DIR",
                        help="where latest and the index look (default reports/runs)")  # fmt: skip
    report.add_argument("--alpha", type=float, default=0.002,
                        help="Mann-Whitney significance level (default 0.002)")  # fmt: skip
    report.add_argument("--min-effect", type=float, default=0.05,
                        help="smallest ratio change that counts (default 0.05)")  # fmt: skip
    report.add_argument("--min-samples", type=int, default=6,
                        help="raw samples needed on each side to test (default 6)")  # fmt: skip
    report.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when a regression is flagged")  # fmt: skip
    report.add_argument("--no-index", action="store_true", help="do not rewrite the index")
    report.add_argument("--index-only", action="store_true",
                        help="only rewrite the index of --runs-dir")  # fmt: skip
    report.set_defaults(func=_report)
    place = sub.add_parser("place", help="where should a workload's decision run?")
    place.add_argument("workloads", nargs="+", type=Path, metavar="WORKLOAD")
    place.add_argument("--runs-dir", type=Path, default=Path("reports/runs"), metavar="DIR")
    place.add_argument("--json", type=Path, metavar="FILE", help="also write the advice as JSON")
    place.set_defaults(func=_place)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BenchError as exc:
        print(f"fieldrig: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fieldrig: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
