"""The soak: N back-to-back runs of a suite with random backhaul faults, then leak checks.

``python -m bench.lab.soak [N] [--rig R] [--runs-dir D] [-- PYTEST ARGS]`` (``scripts/soak``)
brings the rig's virtual lab up by hand (so the runs share it and its long-lived services),
then runs ``pytest suites/ --rig=R`` N times with ``FIELDRIG_RANDOM_FAULTS`` set to a new
seed each run (:mod:`bench.faults.chaos`). After every run it checks:

- the run is complete: run.json says "complete" and outcomes.jsonl has one outcome for
  every test pytest collected;
- ``fieldrig lab doctor`` finds nothing (no stale fault, helper, gateway daemon, mount,
  stray namespace, instrument off its safe state, stale pid file);
- the processes in the lab's namespaces are the ones before the runs (the gateways' sshd);
- the lab services' open file descriptors (virtual supply, radios) did not grow by more
  than a few over the first run's count.

At the end it takes the lab down (if it brought it up) and checks that no namespace,
fieldrig nft table, fieldrig qdisc or mount of the lab is left. Exit 0 when every check
held; each failed check is one line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.faults.chaos import ENV as FAULTS_ENV
from bench.faults.chaos import MEAN_ENV
from bench.faults.kinds import TABLE_PREFIX, TC_HANDLES
from bench.lab import system
from bench.lab.doctor import Doctor
from bench.lab.virtual import RADIOS, SUPPLY, VirtualLab
from bench.rig import load_rig

REPO = Path(__file__).resolve().parents[2]
FD_SLACK = 8  # connections a service may hold open at any instant


@dataclass
class Soak:
    """Leak and completeness checks across back-to-back runs against one virtual lab."""

    lab: VirtualLab
    runs_dir: Path
    pytest_args: list[str]
    problems: list[str] = field(default_factory=list)
    fd_baseline: dict[str, int] = field(default_factory=dict)
    processes: set[str] = field(default_factory=set)

    def say(self, line: str) -> None:
        print(f"soak: {line}", flush=True)

    def fail(self, line: str) -> None:
        self.problems.append(line)
        self.say(f"FAIL {line}")

    # --------------------------------------------------------------------- snapshots
    def lab_processes(self) -> set[str]:
        """'namespace: command' of every process in the lab's namespaces."""
        found = set()
        for ns in system.netns_list():
            if ns.startswith(self.lab.plan.prefix):
                for pid in system.netns_pids(ns):
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    except OSError:
                        continue
                    found.add(f"{ns}: {cmd.decode(errors='replace').strip()}")
        return found

    def service_fds(self) -> dict[str, int]:
        counts = {}
        for service in (SUPPLY, RADIOS):
            try:
                pid = int((self.lab.plan.state_dir / f"{service.name}.pid").read_text())
                counts[service.name] = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, ValueError):
                continue
        return counts

    # --------------------------------------------------------------------- one run
    def collected(self) -> set[str]:
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", *self.pytest_args,
             f"--rig={self.lab.rig.source_path}", "-p", "no:cacheprovider"],
            cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
        ).stdout  # fmt: skip
        return {line for line in out.splitlines() if "::" in line and " " not in line}

    def run_once(self, index: int, seed: int, expected: set[str]) -> None:
        runs = self.runs_dir / f"run{index}"
        env = {**os.environ, FAULTS_ENV: str(seed)}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", *self.pytest_args,
             f"--rig={self.lab.rig.source_path}", f"--runs-dir={runs}", "-p", "no:cacheprovider",
             "-q"],
            cwd=REPO, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        tail = proc.stdout.strip().splitlines()[-1:] or ["no output"]
        self.say(f"run {index} (faults seed {seed}): pytest exit {proc.returncode}: {tail[0]}")
        self.check_run(index, runs, expected)
        self.check_leaks(index)

    def check_run(self, index: int, runs: Path, expected: set[str]) -> None:
        dirs = [d for d in runs.iterdir() if (d / "run.json").exists()] if runs.is_dir() else []
        if len(dirs) != 1:
            self.fail(f"run {index}: {len(dirs)} run directories in {runs}, expected 1")
            return
        run_dir = dirs[0]
        status = json.loads((run_dir / "run.json").read_text()).get("status")
        if status != "complete":
            self.fail(f"run {index}: {run_dir}/run.json status {status!r}, expected 'complete'")
        outcomes = set()
        for line in (run_dir / "outcomes.jsonl").read_text().splitlines():
            try:
                outcomes.add(str(json.loads(line)["test"]))
            except (ValueError, KeyError):
                self.fail(f"run {index}: unreadable outcome line {line[:80]!r}")
        missing = expected - outcomes
        if missing:
            self.fail(f"run {index}: no outcome for {len(missing)} test(s): {sorted(missing)[:3]}")
        faults = [
            e for e in _jsonl(run_dir / "events.jsonl") if str(e.get("kind")).startswith("fault_")
        ]
        self.say(f"run {index}: {len(outcomes)} outcomes, {len(faults)} fault events")

    def check_leaks(self, index: int) -> None:
        report = Doctor(self.lab.rig).run(fix=False)
        for finding in report.findings:
            self.fail(f"run {index}: leftover {finding.line()}")
        now = self.lab_processes()
        for extra in sorted(now - self.processes):
            self.fail(f"run {index}: process left in the lab: {extra[:160]}")
        for name, count in self.service_fds().items():
            base = self.fd_baseline.setdefault(name, count)
            if count > base + FD_SLACK:
                self.fail(f"run {index}: the {name} service holds {count} fds, {base} after run 0")

    # --------------------------------------------------------------------- the end
    def check_host_clean(self) -> None:
        prefix = self.lab.plan.prefix
        spaces = [n for n in system.netns_list() if n.startswith(prefix)]
        if spaces:
            self.fail(f"namespaces left: {', '.join(spaces)}")
        for ns in [None, *system.netns_list()]:
            tables = system.run(system.in_namespace(ns, ["nft", "list", "tables"]), check=False)
            ours = [t.split()[-1] for t in tables.splitlines() if TABLE_PREFIX in t]
            if ours and (ns is None or ns.startswith(prefix)):
                self.fail(f"nft tables left in {ns or 'host'}: {', '.join(ours)}")
            out = system.run(system.in_namespace(ns, ["tc", "-j", "qdisc", "show"]), check=False)
            qdiscs = [q for q in json.loads(out or "[]") if q.get("handle") in TC_HANDLES]
            if qdiscs and (ns is None or ns.startswith(prefix)):
                self.fail(f"fieldrig qdiscs left in {ns or 'host'}: {qdiscs}")
        state = str(self.lab.plan.state_dir)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if state in line or f"/run/netns/{prefix}" in line:
                self.fail(f"mount left: {line}")


def _jsonl(path: Path) -> list[dict[str, object]]:
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def soak(runs: int, rig: str, runs_dir: Path, pytest_args: list[str], seed: int) -> list[str]:
    """Run the soak; returns one line per failed check (empty: everything held)."""
    system.require_root("the soak")
    spec = load_rig(rig)
    lab = VirtualLab(spec)
    checker = Soak(lab, runs_dir, pytest_args)
    built = lab.up()
    checker.say(f"lab '{lab.plan.lab_id}' {'up' if built else 'already up'}; {runs} run(s)")
    try:
        checker.processes = checker.lab_processes()
        expected = checker.collected()
        if not expected:
            raise BenchError(f"pytest collected nothing from {' '.join(pytest_args)}")
        for index in range(runs):
            checker.run_once(index, seed + index, expected)
    finally:
        if built:
            lab.down()
    if built:
        checker.check_host_clean()
    return checker.problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=10, help="runs (default 10)")
    parser.add_argument("--rig", default="virtual", help="a virtual rig (name or path)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "reports" / "soak")
    parser.add_argument("--seed", type=int, default=1, help="first run's fault seed")
    parser.add_argument("--fault-mean-s", type=float, default=None,
                        help="mean seconds between random faults (default 20)")  # fmt: skip
    parser.epilog = "After `--`: what pytest runs (default: suites/)."
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.pytest_args = argv[cut + 1 :] or ["suites/"]
    if args.fault_mean_s is not None:
        os.environ[MEAN_ENV] = str(args.fault_mean_s)
    try:
        problems = soak(args.runs, args.rig, args.runs_dir, args.pytest_args, args.seed)
    except BenchError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    print(f"soak: {args.runs} run(s): " + ("no leaks, every run complete" if not problems
                                          else f"{len(problems)} problem(s)"))  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
