"""``fieldrig lab doctor``: find (and with ``--fix`` remove) what a killed run left on a rig.

A SIGKILLed pytest cannot clean up. What it can leave, and how each is told from what a
live run is using:

- link faults (nft tables, tc qdiscs, their state files) whose owner mark names a dead
  process: found and removed by :mod:`bench.faults.stale`, on the bench host and, over
  SSH, on every router the rig's backhauls name (an unreachable router is noted);
- helper processes a session started in the lab's namespaces (artifact server, heartbeat
  collector, echo service, delay relay) whose session is gone: their ``--parent-pid`` is
  dead, or (artifact server) their parent is no longer a live bench process;
- processes on the gateways outside any SSH session (heartbeat agents, loads started with
  ``setsid``, update-client leftovers) while no session holds the rig (the rig lock of
  :mod:`bench.locks`);
- mounts of the lab's paths held by anything but a gateway's running sshd (and any in the
  host's own mount namespace, where the lab never mounts);
- namespaces with the lab's prefix that the rig does not plan (stray), lab services no pid
  file claims;
- a lab owned by a dead session (``owner.json``) or left half-built: taken down, as its
  session would have done;
- supply outputs and attenuator channels outside the rig's declared safe state, read
  through the drivers (only while no session holds the rig: a live run owns them);
- pid files whose process is gone.

Every finding is one line (or one JSON object); ``--fix`` removes each with the bench's
own cleanup code and says what it did, then looks again: exit 0 when nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.faults.router import Router, routers_of
from bench.faults.stale import StaleFault, clear_stale, find_stale
from bench.lab import system
from bench.lab.virtual import RADIOS, SUPPLY, LabPlan, VirtualLab, plan_for
from bench.locks import rig_in_use
from bench.rig import Rig

__all__ = ["Doctor", "Finding", "Report", "render"]

#: host-side helpers a session starts in the lab's namespaces: argv marker -> what it is
HELPERS = {
    "bench.update.server": "artifact server",
    "bench.fleet.collector": "heartbeat collector",
    "backhaul_remote.py": "echo service",
    "bench.faults.delay_relay": "delay relay",
}
AGENT_MARKER = "fieldrig-heartbeat"  # bench/fleet/heartbeat_remote.py MARKER
AGENT_PIDFILE = Path("tmp/fieldrig/heartbeat.pid")  # REMOTE_DIR on a gateway's disk
FIX_ROUNDS = 3
BOOT_WAIT_S = 60.0  # a virtual gateway powered on by a fix boots within seconds
_PARENT_PID = re.compile(r"--parent-pid\s+(\d+)")


@dataclass
class Finding:
    """One leftover: what it is, why it is stale, and (after --fix) what was done."""

    kind: str
    item: str
    detail: str
    action: str | None = None  # what --fix did
    error: str | None = None  # why --fix could not
    fix: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    @property
    def fixed(self) -> bool:
        return self.action is not None and self.error is None

    def line(self) -> str:
        text = f"{self.kind}: {self.item}: {self.detail}"
        if self.action is not None:
            text += f" -> {self.action}"
        if self.error is not None:
            text += f" -> NOT fixed: {self.error}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "item": self.item,
            "detail": self.detail,
            "fixed": self.fixed,
            "action": self.action,
            "error": self.error,
        }


@dataclass
class Report:
    """What one doctor run found, did, and found again afterwards."""

    rig: str
    lab_id: str | None
    fixing: bool
    findings: list[Finding]
    left: list[Finding]
    notes: list[str]

    @property
    def clean(self) -> bool:
        return not self.left

    def to_json(self) -> dict[str, Any]:
        return {
            "rig": self.rig,
            "lab_id": self.lab_id,
            "fix": self.fixing,
            "clean": self.clean,
            "findings": [f.to_json() for f in self.findings],
            "left": [f.to_json() for f in self.left],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    comm: str
    cmdline: str


def _proc(pid: int) -> _Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    comm = stat[stat.find("(") + 1 : stat.rfind(")")]
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    cmdline = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return _Proc(pid, int(fields[1]), comm, cmdline)


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _under_sshd(proc: _Proc, table: dict[int, _Proc]) -> bool:
    """True for an sshd and everything it started (a live SSH session's processes)."""
    seen = 0
    current: _Proc | None = proc
    while current is not None and seen < 64:
        if current.comm.startswith("sshd"):
            return True
        if current.ppid <= 1:
            return False
        current = table.get(current.ppid) or _proc(current.ppid)
        seen += 1
    return False


def _is_bench_process(pid: int) -> bool:
    """A live process that can own helpers: a Python bench (pytest, fieldrig), not init
    or a subreaper a dead bench's children were handed to."""
    if pid <= 1 or not system.pid_alive(pid):
        return False
    proc = _proc(pid)
    return proc is not None and (
        "python" in proc.comm
        or "python" in proc.cmdline
        or "pytest" in proc.cmdline
        or "fieldrig" in proc.cmdline
    )


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _kill(pids: Iterable[int]) -> str:
    alive = [p for p in pids if system.pid_alive(p)]
    system.kill_all(alive)
    return f"killed {', '.join(map(str, alive))}" if alive else "already gone"


# --------------------------------------------------------------------------- the doctor


class Doctor:
    """Examines one rig (and its virtual lab, if it is one) for leftovers of killed runs."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.plan: LabPlan | None = plan_for(rig) if rig.is_virtual else None
        self.lab = VirtualLab(rig) if rig.is_virtual else None
        self.notes: list[str] = []

    # ------------------------------------------------------------------ entry point
    def run(self, fix: bool) -> Report:
        """Examine; with ``fix`` remove every finding and examine again, up to three
        rounds (removing one thing can reveal another: a killed agent's pid file)."""
        system.require_root("`fieldrig lab doctor`")
        findings = self.examine()
        if not fix:
            return Report(self.rig.name, self._lab_id, False, findings, findings, self.notes)
        done: list[Finding] = []
        seen: set[tuple[str, str]] = set()
        for _ in range(FIX_ROUNDS):
            new = [f for f in findings if (f.kind, f.item) not in seen]
            if not new:
                break
            for finding in new:
                seen.add((finding.kind, finding.item))
                _apply(finding)
            done += new
            self._settle()
            self.notes = []
            findings = self.examine()
        return Report(self.rig.name, self._lab_id, True, done, findings, self.notes)

    @property
    def _lab_id(self) -> str | None:
        return self.plan.lab_id if self.plan else None

    def examine(self) -> list[Finding]:
        """Every leftover, in the order --fix removes them (read-only)."""
        holder = rig_in_use(self.rig.name)
        live = holder is not None
        if holder is not None:
            self.notes.append(
                f"a session holds rig '{self.rig.name}' (pid {holder.get('pid', '?')}): its "
                "gateway daemons and instruments are left alone"
            )
        found: list[Finding] = []
        found += self._faults()
        if self.plan is not None:
            table = {p.pid: p for pid in _all_pids() if (p := _proc(pid)) is not None}
            found += self._processes(table, live)
            found += self._lab_services(table)
            found += self._mounts(table)
            found += self._stray_namespaces()
        if not live:
            found += self._instruments()
            found += self._places()
        if self.plan is not None:
            found += self._lab(live)
            found += self._pid_files()
        return found

    # ------------------------------------------------------------------ labgrid places
    def _places(self) -> list[Finding]:
        """Places of this rig that the coordinator says this bench holds while no session
        of it runs here: a killed run's, which never released them."""
        coordinator = self.rig.coordinator
        places = {gw.place: gw.name for gw in self.rig.gateways if gw.place is not None}
        if coordinator is None or not places:
            return []
        from bench.errors import ReservationError
        from bench.reservation.labgrid import LabgridReservations

        try:
            backend = LabgridReservations(coordinator.address)
            holders = backend.holders()
        except ReservationError as exc:
            self.notes.append(f"labgrid places not checked: {exc}")
            return []
        found = []
        for place, gateway in sorted(places.items()):
            if holders.get(place) != backend.identity:
                continue

            def fix(place: str = place) -> str:
                backend.release_stale(place)
                return "released"

            found.append(
                Finding(
                    "labgrid-place",
                    f"place {place} (gateway {gateway}) on {coordinator.address}",
                    f"acquired by {backend.identity} but no session holds rig '{self.rig.name}'",
                    fix=fix,
                )
            )
        return found

    # ------------------------------------------------------------------ faults
    def _fault_namespaces(self) -> list[str | None]:
        spaces: set[str | None] = {None}
        for gw in self.rig.gateways:
            if gw.backhaul is not None and gw.backhaul.netns is not None:
                spaces.add(gw.backhaul.netns.namespace)
        if self.plan is not None:
            spaces.update(n for n in system.netns_list() if n.startswith(self.plan.prefix))
        present = set(system.netns_list())
        return sorted((s for s in spaces if s is None or s in present), key=lambda s: s or "")

    def _fault_routers(self) -> list[Router]:
        """The rig's routers that answer over SSH (the others are noted)."""
        reachable = []
        for router in routers_of(self.rig):
            try:
                router.run(["true"], what=f"reaching {router}")
            except BenchError as exc:
                self.notes.append(f"stale faults on {router} not checked: {exc}")
                continue
            reachable.append(router)
        return reachable

    def _faults(self) -> list[Finding]:
        namespaces = self._fault_namespaces()
        routers = self._fault_routers()
        cleared: list[StaleFault] | None = None

        def fix_for(stale: StaleFault) -> Callable[[], str]:
            def fix() -> str:
                nonlocal cleared
                if cleared is None:
                    cleared = clear_stale(namespaces, routers)
                if stale in cleared:
                    return "removed"
                if stale not in find_stale(namespaces, routers):
                    return "already gone"
                raise BenchError(f"{stale.resource} is still there")

            return fix

        return [
            Finding(
                "stale-fault",
                f"{s.resource} in {s.where}",
                f"{s.kind} fault, {s.reason}",
                fix=fix_for(s),
            )
            for s in find_stale(namespaces, routers)
        ]

    # ------------------------------------------------------------------ processes
    def _processes(self, table: dict[int, _Proc], live: bool) -> list[Finding]:
        """Helpers of dead sessions, and daemons on gateways while no session runs."""
        assert self.plan is not None
        found = []
        namespaces = [n for n in system.netns_list() if n.startswith(self.plan.prefix)]
        booting = self._booting()
        for ns in namespaces:
            where = (
                "cloud" if ns == self.plan.cloud_namespace else ns.removeprefix(self.plan.prefix)
            )
            if ns in booting:
                continue  # its sshd is being started by the virtual supply
            for pid in system.netns_pids(ns):
                proc = table.get(pid) or _proc(pid)
                if proc is None or _under_sshd(proc, table):
                    continue
                label = next((name for key, name in HELPERS.items() if key in proc.cmdline), None)
                if label is not None:
                    owner = _PARENT_PID.search(proc.cmdline)
                    if owner is not None:
                        parent = int(owner.group(1))
                        if system.pid_alive(parent):
                            continue
                        why = f"its session (pid {parent}) is dead"
                    else:
                        if _is_bench_process(proc.ppid):
                            continue
                        why = f"its session is gone (parent now pid {proc.ppid})"
                    kind = "helper-process"
                elif live:
                    continue
                else:
                    label = "heartbeat agent" if AGENT_MARKER in proc.cmdline else "process"
                    why = "outside any SSH session and no session holds the rig"
                    kind = "gateway-process" if where != "cloud" else "helper-process"
                found.append(
                    Finding(
                        kind,
                        f"{label} pid {pid} in {where}: {proc.cmdline[:120]}",
                        why,
                        fix=partial(_kill, [pid]),
                    )
                )
        return found

    def _lab_services(self, table: dict[int, _Proc]) -> list[Finding]:
        """Lab services (virtual supply, radios) of this rig that no pid file claims."""
        assert self.plan is not None and self.lab is not None
        source = self.rig.source_path
        if source is None:
            return []
        found = []
        for service in (SUPPLY, RADIOS):
            claimed = _read_pid(self.plan.state_dir / f"{service.name}.pid")
            for proc in table.values():
                argv = proc.cmdline.split()
                if service.module not in argv or "--rig" not in argv:
                    continue
                rig_arg = argv[argv.index("--rig") + 1] if argv[-1] != "--rig" else ""
                if not _same_file(rig_arg, source) or proc.pid == claimed:
                    continue
                found.append(
                    Finding(
                        "lab-service",
                        f"{service.title} pid {proc.pid}",
                        f"not the lab's (its pid file names {claimed or 'none'})",
                        fix=partial(_kill, [proc.pid]),
                    )
                )
        return found

    def _mounts(self, table: dict[int, _Proc]) -> list[Finding]:
        """Mounts of the lab's paths outside a running gateway (and any in the host)."""
        assert self.plan is not None
        plan = self.plan
        state = str(plan.state_dir)
        legit = set()
        for gw in plan.gateways:
            sshd = _read_pid(gw.disk / "run" / "sshd.pid")
            if sshd is not None and system.pid_alive(sshd):
                ns = _mount_ns(sshd)
                if ns is not None:
                    legit.add(ns)
        host_ns = _mount_ns(os.getpid())
        holders: dict[str, list[int]] = {}
        booting = self._booting()
        for ns_name in system.netns_list():
            if ns_name.startswith(plan.prefix) and ns_name not in booting:
                for pid in system.netns_pids(ns_name):
                    mnt = _mount_ns(pid)
                    if mnt is not None and mnt != host_ns and mnt not in legit:
                        holders.setdefault(mnt, []).append(pid)
        found = []
        for line in _mountinfo(os.getpid()):
            if _mentions(line, state):
                point = line.split()[4]
                found.append(
                    Finding(
                        "mount",
                        f"{point} in the host",
                        "the lab never mounts in the host",
                        fix=partial(_umount, point),
                    )
                )
        for _mnt, pids in sorted(holders.items()):
            lines = [ln for ln in _mountinfo(pids[0]) if _mentions(ln, state)]
            if lines:
                points = ", ".join(ln.split()[4] for ln in lines)
                found.append(
                    Finding(
                        "mount",
                        f"{points} held by pids {', '.join(map(str, pids))}",
                        "a mount namespace of the lab with no running sshd",
                        fix=partial(_kill, pids),
                    )
                )
        return found

    def _stray_namespaces(self) -> list[Finding]:
        assert self.plan is not None
        planned = self.plan.namespaces
        found = []
        for ns in system.netns_list():
            if ns.startswith(self.plan.prefix) and ns not in planned:

                def fix(ns: str = ns) -> str:
                    _kill(system.netns_pids(ns))
                    system.run(["ip", "netns", "del", ns])
                    return "deleted"

                found.append(Finding("stray-namespace", ns, "not in the rig's plan", fix=fix))
        return found

    # ------------------------------------------------------------------ instruments
    def _instruments(self) -> list[Finding]:
        """Supply outputs and attenuator channels outside the rig's declared safe state."""
        from bench.instruments.registry import open_attenuator, open_supply

        if self.lab is not None and not self._lab_services_running():
            self.notes.append(
                "instruments not checked: the virtual lab (and its instruments) is down"
            )
            return []
        found = []
        for name, instrument in self.rig.instruments.items():
            if not instrument.is_psu:
                continue
            try:
                psu = open_supply(name, instrument)
            except BenchError as exc:
                self.notes.append(f"supply {name} not checked: {exc}")
                continue
            try:
                for channel, spec in sorted(instrument.channels.items()):
                    is_on = psu.output_state(channel)
                    if is_on != (spec.safe_state == "on"):
                        found.append(
                            Finding(
                                "instrument",
                                f"supply {name} channel {channel}",
                                f"output {'on' if is_on else 'off'}, safe state is "
                                f"{spec.safe_state}",
                                fix=partial(_safe_supply, name, instrument),
                            )
                        )
            except BenchError as exc:
                self.notes.append(f"supply {name} not checked: {exc}")
            finally:
                psu.detach()
        for name, att_spec in self.rig.attenuators.items():
            try:
                attenuator = open_attenuator(name, att_spec)
            except BenchError as exc:
                self.notes.append(f"attenuator {name} not checked: {exc}")
                continue
            try:
                for channel, limits in sorted(att_spec.channels.items()):
                    db = attenuator.get_db(channel)
                    if abs(db - limits.safe_db) > 1e-6:
                        found.append(
                            Finding(
                                "instrument",
                                f"attenuator {name} channel {channel}",
                                f"{db:g} dB, safe is {limits.safe_db:g} dB",
                                fix=partial(_safe_attenuator, name, att_spec),
                            )
                        )
            except BenchError as exc:
                self.notes.append(f"attenuator {name} not checked: {exc}")
            finally:
                attenuator.detach()
        return found

    def _booting(self) -> set[str]:
        """Namespaces of gateways the virtual supply is booting (power file "booting")."""
        if self.plan is None:
            return set()
        found = set()
        for gw in self.plan.gateways:
            with contextlib.suppress(OSError):
                path = self.plan.state_dir / "power" / gw.name
                if path.read_text().strip() == "booting":
                    found.add(gw.namespace)
        if found:
            self.notes.append(f"booting, not examined: {', '.join(sorted(found))}")
        return found

    def _settle(self) -> None:
        """Wait (bounded) for gateways a fix powered on to finish booting."""
        deadline = time.monotonic() + BOOT_WAIT_S
        while self._booting() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _lab_services_running(self) -> bool:
        assert self.plan is not None
        pid = _read_pid(self.plan.state_dir / f"{SUPPLY.name}.pid")
        if pid is None:
            pid = _read_pid(self.plan.state_dir / f"{RADIOS.name}.pid")
        return pid is not None and system.pid_alive(pid)

    # ------------------------------------------------------------------ the lab itself
    def _lab(self, live: bool) -> list[Finding]:
        assert self.lab is not None and self.plan is not None
        if live:
            return []
        lab = self.lab
        status = lab.status()
        owner = _read_owner(self.plan.state_dir / "owner.json")
        present = status.anything_present or self._lab_services_running()
        if not present:
            return []
        if owner is not None and not system.pid_alive(owner):
            return [
                Finding(
                    "lab",
                    f"virtual lab '{self.plan.lab_id}'",
                    f"brought up by session pid {owner}, which is dead",
                    fix=partial(_down, lab),
                )
            ]
        if not status.built_as_planned:
            self.notes.append(
                f"virtual lab '{self.plan.lab_id}' was built from another rig "
                "file or fieldrig version: the next `lab up` or run rebuilds it"
            )
        elif not status.healthy:
            return [
                Finding(
                    "lab",
                    f"virtual lab '{self.plan.lab_id}'",
                    "partial (a killed bring-up or teardown, or a dead lab service)",
                    fix=partial(_down, lab, rebuild_hint=True),
                )
            ]
        return []

    def _pid_files(self) -> list[Finding]:
        assert self.plan is not None
        state = self.plan.state_dir
        files = [state / f"{SUPPLY.name}.pid", state / f"{RADIOS.name}.pid"]
        files += [gw.disk / AGENT_PIDFILE for gw in self.plan.gateways]
        found = []
        for path in files:
            pid = _read_pid(path)
            if path.exists() and (pid is None or not system.pid_alive(pid)):
                found.append(
                    Finding(
                        "pid-file",
                        str(path),
                        f"names pid {pid}, which is not running",
                        fix=partial(_unlink, path),
                    )
                )
        owner = state / "owner.json"
        pid = _read_owner(owner)
        lab_present = self.lab is not None and self.lab.status().anything_present
        if pid is not None and not system.pid_alive(pid) and not lab_present:
            found.append(
                Finding(
                    "pid-file",
                    str(owner),
                    f"names session pid {pid}, which is dead",
                    fix=partial(_unlink, owner),
                )
            )
        return found


# --------------------------------------------------------------------------- fixes, files


def _apply(finding: Finding) -> None:
    if finding.fix is None:
        finding.error = "no automatic fix"
        return
    try:
        finding.action = finding.fix()
    except (BenchError, OSError) as exc:
        finding.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _safe_supply(name: str, instrument: Any) -> str:
    from bench.instruments.registry import open_supply

    open_supply(name, instrument).close()  # close() is safe state, then the session ends
    return "every channel back to its safe state"


def _safe_attenuator(name: str, spec: Any) -> str:
    from bench.instruments.registry import open_attenuator

    open_attenuator(name, spec).close()  # close() is safe state, then the session ends
    return "every channel back to its safe_db"


def _down(lab: VirtualLab, rebuild_hint: bool = False) -> str:
    lab.down()
    return "lab taken down" + ("; `fieldrig lab up` rebuilds it" if rebuild_hint else "")


def _umount(point: str) -> str:
    system.run(["umount", "-l", point])
    return "unmounted"


def _unlink(path: Path) -> str:
    path.unlink(missing_ok=True)
    return "removed"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_owner(path: Path) -> int | None:
    try:
        pid = json.loads(path.read_text())["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(pid) if isinstance(pid, int) else None


def _same_file(a: str, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def _mountinfo(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return []


def _mentions(line: str, state_dir: str) -> bool:
    """A mountinfo line whose source (root) or mount point is under the lab's state_dir."""
    fields = line.split()
    return len(fields) > 4 and any(
        f == state_dir or f.startswith(state_dir + "/") for f in (fields[3], fields[4])
    )


def render(report: Report) -> list[str]:
    """The report as lines for people: one per finding, notes, then a verdict."""
    lines = [f.line() for f in report.findings]
    if report.fixing:
        lines += [f"still there: {f.line()}" for f in report.left]
    lines += [f"note: {n}" for n in report.notes]
    name = f"lab '{report.lab_id}'" if report.lab_id else f"rig '{report.rig}'"
    if not report.findings:
        lines.append(f"{name}: clean")
    elif report.fixing:
        done = sum(f.fixed for f in report.findings)
        verdict = "clean now" if report.clean else f"{len(report.left)} left"
        lines.append(f"{name}: {len(report.findings)} found, {done} fixed, {verdict}")
    else:
        lines.append(f"{name}: {len(report.findings)} found; `--fix` removes them")
    return lines
