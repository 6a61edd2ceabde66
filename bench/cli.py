"""The ``fieldrig`` command: lab up/down/status, rig checks, run summaries."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import __version__
from bench.errors import BenchError
from bench.rig import load_rig


def _lab(args: argparse.Namespace) -> int:
    from bench.lab.virtual import VirtualLab

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fieldrig", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fieldrig {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("lab", help="bring the virtual lab up or down, or show it")
    lab.add_argument("action", choices=["up", "down", "status"])
    lab.add_argument("--rig", default="virtual", help="a virtual rig (name or path)")
    lab.add_argument("--purge", action="store_true", help="down: also delete keys and disks")
    lab.set_defaults(func=_lab)
    rig = sub.add_parser("rig", help="validate a rig file")
    rig.add_argument("action", choices=["check"])
    rig.add_argument("rig", help="rig name or path")
    rig.set_defaults(func=_rig_check)
    summary = sub.add_parser("summary", help="summarise a run (default: the latest)")
    summary.add_argument("run", nargs="?", default="latest", help="run directory or 'latest'")
    summary.set_defaults(func=_summary)
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
