"""Fleet liveness: is each gateway online, offline or dead, and on what evidence.

Heartbeats (bench/fleet/heartbeat_remote.py on each board, every H seconds over the
backhaul) reach a collector (bench/fleet/collector.py); :class:`CollectorClient` reads its
log. :class:`FleetMonitor` polls that log and, for a gateway whose heartbeats are late, two
second signals: the current its supply channel draws (:class:`PowerProbe`; powered when
above a fraction of the board profile's idle current) and its management link
(:class:`ManagementProbe`: an SSH banner on port 22 within a short timeout).

Rules (:func:`classify`), with ``silent`` = seconds since the last heartbeat was received
(since the monitor started, before the first one):

1. a heartbeat came and ``silent < k * H`` (the offline deadline): **online**;
2. the management link answers: **offline**, never dead: the board is up and its backhaul
   is cut (a partition or a flapping link) or its agent is not running;
3. the supply channel draws no current: **offline**, then **dead** once ``silent`` reaches
   the dead deadline. Dead is NOT declared the moment the current drops: a planned reboot
   (power off, power on) must stay offline as long as it is shorter than the dead deadline;
4. otherwise (powered or no supply known, management silent or not known): **offline**
   ("rebooting" while the current is back and no heartbeat came yet), **dead** once the
   gateway has been silent and unreachable for the dead deadline counted from the later of
   its last heartbeat and the last time its current came back (a board that regains
   power is given a whole dead deadline to boot). Without any second signal this is the
   plain two-deadline heartbeat classifier.

Each change of verdict is kept (:meth:`FleetMonitor.history`) with its time and evidence
(heartbeat age and sequence, boot id, current and threshold, reachability, the rule).

:class:`HeartbeatAgent` starts and stops the agent on a board. A power cut kills the agent
as it kills everything on the board: the bench must start it again once the board booted.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.boards import BOARDS
from bench.errors import BenchError
from bench.gateway import ConnectedGateway
from bench.instruments.psu import PowerSupply
from bench.rig import Rig

__all__ = [
    "AGENT_SOURCE",
    "POWERED_FRACTION",
    "CollectorClient",
    "FleetMonitor",
    "GatewayProbes",
    "GatewayTracker",
    "Heartbeat",
    "HeartbeatAgent",
    "Liveness",
    "LivenessError",
    "LivenessPolicy",
    "ManagementProbe",
    "PowerProbe",
    "Signals",
    "Verdict",
    "classify",
    "probes_for",
]

AGENT_SOURCE = Path(__file__).with_name("heartbeat_remote.py")
REMOTE_DIR = "/tmp/fieldrig"
POWERED_FRACTION = 0.3
"""A board drawing less than this fraction of its profile's idle current is unpowered (a
running board never idles that far below its typical figure; an unpowered one draws ~0)."""


class LivenessError(BenchError):
    """Bad liveness settings, or the heartbeat agent could not be started or stopped."""


class Liveness(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DEAD = "dead"


@dataclass(frozen=True)
class LivenessPolicy:
    """Heartbeat interval H, offline after ``missed`` intervals, dead after ``dead_after_s``
    (default 10 H). Second signals are re-read at most every ``signal_max_age_s`` (H)."""

    interval_s: float = 1.0
    missed: int = 3
    dead_after_s: float | None = None
    signal_max_age_s: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and 0.01 <= self.interval_s <= 3600):
            raise LivenessError(f"liveness: interval_s {self.interval_s!r} must be 0.01-3600 s")
        if not isinstance(self.missed, int) or self.missed < 1:
            raise LivenessError(f"liveness: missed {self.missed!r} must be an integer >= 1")
        if not self.dead_deadline_s > self.offline_after_s:
            raise LivenessError(
                f"liveness: dead_after_s {self.dead_after_s!r} must exceed the offline deadline "
                f"({self.missed} x {self.interval_s:g} s = {self.offline_after_s:g} s)"
            )

    @property
    def offline_after_s(self) -> float:
        return self.missed * self.interval_s

    @property
    def dead_deadline_s(self) -> float:
        return 10 * self.interval_s if self.dead_after_s is None else self.dead_after_s

    @property
    def signal_age_s(self) -> float:
        return self.interval_s if self.signal_max_age_s is None else self.signal_max_age_s


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat as the collector logged it (``recv_mono``: the bench host's monotonic
    clock at receipt)."""

    gateway: str
    seq: int
    agent_id: str
    boot_id: str | None
    uptime_s: float | None
    interval_s: float | None
    send_errors: int
    recv_mono: float
    recv_wall: float
    sender: str

    @classmethod
    def parse(cls, record: Mapping[str, Any]) -> Heartbeat | None:
        """The heartbeat in a collector record; None for other lines or malformed ones."""
        try:
            return cls(
                gateway=str(record["gateway"]),
                seq=int(record["seq"]),
                agent_id=str(record["agent_id"]),
                boot_id=None if record.get("boot_id") is None else str(record["boot_id"]),
                uptime_s=_float_or_none(record.get("uptime_s")),
                interval_s=_float_or_none(record.get("interval_s")),
                send_errors=int(record.get("send_errors") or 0),
                recv_mono=float(record["recv_mono"]),
                recv_wall=float(record["recv_wall"]),
                sender=str(record.get("from", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


class CollectorClient:
    """Reads a collector's log incrementally: each :meth:`read` returns the new heartbeats
    (``from_end``: only those logged after the client was made)."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self._offset = path.stat().st_size if from_end and path.exists() else 0
        self._tail = b""
        self.invalid = 0  # lines that were not heartbeats (bad JSON, foreign datagrams)

    def read(self) -> list[Heartbeat]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()  # an unfinished last line waits for the next read
        found = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                self.invalid += 1
                continue
            if not isinstance(record, dict) or "event" in record:
                continue
            heartbeat = Heartbeat.parse(record)
            if heartbeat is None:
                self.invalid += 1
            else:
                found.append(heartbeat)
        return found


# --- second signals ----------------------------------------------------------------------


@dataclass(frozen=True)
class Signals:
    """What the second signals said at ``at`` (None: not known: no probe, or it failed)."""

    at: float
    powered: bool | None = None
    current_a: float | None = None
    threshold_a: float | None = None
    reachable: bool | None = None
    errors: tuple[str, ...] = ()


class PowerProbe:
    """Whether the board draws current from its supply channel (``psu.measure_current``)."""

    def __init__(self, psu: PowerSupply, channel: int, threshold_a: float) -> None:
        if not (math.isfinite(threshold_a) and threshold_a > 0):
            raise LivenessError(f"power probe: threshold {threshold_a!r} A must be > 0")
        self.psu = psu
        self.channel = channel
        self.threshold_a = threshold_a

    @classmethod
    def for_board(
        cls,
        psu: PowerSupply,
        channel: int,
        board: str,
        volts: float,
        fraction: float = POWERED_FRACTION,
    ) -> PowerProbe:
        """Threshold = ``fraction`` x the board profile's idle watts / the channel's volts."""
        if board not in BOARDS:
            raise LivenessError(f"power probe: unknown board {board!r}; known: {sorted(BOARDS)}")
        if not volts > 0:
            raise LivenessError(f"power probe: channel {channel} voltage {volts!r} must be > 0")
        return cls(psu, channel, fraction * BOARDS[board].idle_watts / volts)

    def read(self) -> tuple[bool, float]:
        """(powered, amps)."""
        amps = self.psu.measure_current(self.channel)
        return amps >= self.threshold_a, amps


class ManagementProbe:
    """Whether the board answers on its management link: an SSH banner on ``port``."""

    def __init__(self, host: str, port: int = 22, timeout_s: float = 0.5) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s

    def read(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as s:
                s.settimeout(self.timeout_s)
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False


@dataclass(frozen=True)
class GatewayProbes:
    """The second signals of one gateway; either may be absent."""

    power: PowerProbe | None = None
    management: ManagementProbe | None = None

    def read(self, now: float) -> Signals:
        powered = current = threshold = reachable = None
        errors = []
        if self.power is not None:
            threshold = self.power.threshold_a
            try:
                powered, current = self.power.read()
            except (BenchError, OSError) as exc:
                errors.append(f"power: {exc}")
        if self.management is not None:
            reachable = self.management.read()
        return Signals(now, powered, current, threshold, reachable, tuple(errors))


def probes_for(
    rig: Rig, gateway: str, psu: PowerSupply | None, *, mgmt_timeout_s: float = 0.5
) -> GatewayProbes:
    """The probes the rig gives a gateway: its SSH host, and its supply channel if ``psu``
    (the supply named by the gateway's ``power:``) is given."""
    spec = rig.gateway(gateway)
    management = ManagementProbe(spec.ssh.host, spec.ssh.port, mgmt_timeout_s)
    power = None
    if psu is not None and spec.power is not None:
        channel = rig.instruments[spec.power.instrument].channels[spec.power.channel]
        power = PowerProbe.for_board(psu, spec.power.channel, spec.board, channel.voltage)
    return GatewayProbes(power, management)


# --- the state machine -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A gateway's liveness at ``at`` (bench monotonic clock), why, and the evidence."""

    gateway: str
    state: Liveness
    at: float
    wall: str
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        return data


def classify(
    policy: LivenessPolicy,
    *,
    heard: bool,
    silent_s: float,
    dead_clock_s: float,
    signals: Signals | None,
    rebooting: bool = False,
) -> tuple[Liveness, str]:
    """The verdict and its rule (see the module docstring). ``dead_clock_s``: seconds since
    the later of the last heartbeat and the last return of the board's current."""
    if heard and silent_s < policy.offline_after_s:
        return Liveness.ONLINE, "heartbeats arriving"
    dead_after = policy.dead_deadline_s
    sig = signals or Signals(at=0.0)
    quiet = "silent" if heard else "no heartbeat yet"
    if sig.reachable:
        why = " (partitioned)" if heard else ""
        return Liveness.OFFLINE, f"{quiet}, but answering on the management link{why}"
    if sig.powered is False:
        if silent_s >= dead_after:
            return Liveness.DEAD, f"no current draw and {quiet} for {dead_after:g} s"
        return Liveness.OFFLINE, f"{quiet}, no current draw; dead at the dead deadline"
    if dead_clock_s >= dead_after:
        basis = "powered" if sig.powered else "power unknown"
        return Liveness.DEAD, f"{basis}, {quiet} and unreachable for {dead_after:g} s"
    if rebooting:
        return Liveness.OFFLINE, "rebooting: current back, no heartbeat yet"
    return Liveness.OFFLINE, f"{quiet} and unreachable; dead at the dead deadline"


class GatewayTracker:
    """Liveness of one gateway from its heartbeats and second signals (no I/O here)."""

    def __init__(self, gateway: str, policy: LivenessPolicy, started_at: float) -> None:
        self.gateway = gateway
        self.policy = policy
        self.started_at = started_at
        self.last: Heartbeat | None = None
        self.last_heard: float | None = None
        self.power_on_at: float | None = None  # when its current was last seen coming back
        self._was_powered: bool | None = None
        self.heartbeats = 0
        self.lost = 0  # sequence gaps within one agent run
        self.agent_starts = 0
        self.longest_gap_s = 0.0  # between two heartbeats received in a row
        self.current: Verdict | None = None
        self.history: list[Verdict] = []

    def heartbeat(self, hb: Heartbeat) -> None:
        last = self.last
        if last is None or hb.agent_id != last.agent_id:
            self.agent_starts += 1
        elif hb.seq > last.seq + 1:
            self.lost += hb.seq - last.seq - 1
        self.heartbeats += 1
        if self.last_heard is not None:
            self.longest_gap_s = max(self.longest_gap_s, hb.recv_mono - self.last_heard)
        if self.last_heard is None or hb.recv_mono >= self.last_heard:
            self.last_heard, self.last = hb.recv_mono, hb

    def silence(self, now: float) -> float:
        reference = self.started_at if self.last_heard is None else self.last_heard
        return max(0.0, now - reference)

    def late(self, now: float) -> bool:
        """Whether the second signals are needed: no heartbeat within the offline deadline."""
        return self.last_heard is None or self.silence(now) >= self.policy.offline_after_s

    def evaluate(self, now: float, signals: Signals | None = None) -> Verdict | None:
        """Classify at ``now``; returns the new verdict when the state changed, else None."""
        if signals is not None and signals.powered is not None:
            if signals.powered and self._was_powered is False:
                self.power_on_at = signals.at
            self._was_powered = signals.powered
        silent = self.silence(now)
        reference = self.started_at if self.last_heard is None else self.last_heard
        if self.power_on_at is not None and self.power_on_at > reference:
            reference = self.power_on_at
        rebooting = (
            bool(signals and signals.powered)
            and self.power_on_at is not None
            and (self.last_heard is None or self.power_on_at > self.last_heard)
        )
        state, rule = classify(
            self.policy,
            heard=self.last_heard is not None,
            silent_s=silent,
            dead_clock_s=max(0.0, now - reference),
            signals=signals,
            rebooting=rebooting,
        )
        evidence = self._evidence(now, silent, signals)
        verdict = Verdict(self.gateway, state, now, _wall(), rule, evidence)
        changed = self.current is None or self.current.state != state
        self.current = verdict
        if changed:
            self.history.append(verdict)
            return verdict
        return None

    def _evidence(self, now: float, silent: float, signals: Signals | None) -> dict[str, Any]:
        last = self.last
        evidence: dict[str, Any] = {
            "heartbeat_age_s": round(silent, 3) if last is not None else None,
            "last_seq": last.seq if last else None,
            "agent_id": last.agent_id if last else None,
            "boot_id": last.boot_id if last else None,
            "uptime_s": last.uptime_s if last else None,
            "heartbeats": self.heartbeats,
            "lost": self.lost,
            "offline_after_s": self.policy.offline_after_s,
            "dead_after_s": self.policy.dead_deadline_s,
        }
        if signals is not None:
            evidence.update(
                powered=signals.powered,
                current_a=signals.current_a,
                threshold_a=signals.threshold_a,
                reachable=signals.reachable,
                signals_age_s=round(max(0.0, now - signals.at), 3),
            )
            if signals.errors:
                evidence["signal_errors"] = list(signals.errors)
        return evidence


def _wall() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the monitor -------------------------------------------------------------------------


class FleetMonitor:
    """Polls the collector log and the second signals; keeps every gateway's verdicts.

    ``poll()`` does one round; ``start()`` polls on a thread every ``period_s`` (default
    H / 5) until ``stop()``. ``on_verdict`` is called (on the polling thread) with every
    change of verdict, e.g. to write it into the run's records.
    """

    def __init__(
        self,
        client: CollectorClient,
        probes: Mapping[str, GatewayProbes],
        policy: LivenessPolicy,
        *,
        on_verdict: Callable[[Verdict], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not probes:
            raise LivenessError("fleet monitor: no gateways to watch")
        self.client = client
        self.policy = policy
        self.probes = dict(probes)
        self.on_verdict = on_verdict
        self.clock = clock
        started = clock()
        self._trackers = {name: GatewayTracker(name, policy, started) for name in probes}
        self._signals: dict[str, Signals] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.unknown_gateways: set[str] = set()
        self.errors: list[str] = []

    # --- polling ---

    def poll(self) -> dict[str, Verdict]:
        """One round: read heartbeats, probe late gateways, classify; the current verdicts."""
        heartbeats = self.client.read()
        changes: list[Verdict] = []
        with self._cond:
            for hb in heartbeats:
                tracker = self._trackers.get(hb.gateway)
                if tracker is None:
                    self.unknown_gateways.add(hb.gateway)
                else:
                    tracker.heartbeat(hb)
            now = self.clock()
            late = [name for name, t in self._trackers.items() if t.late(now)]
        for name in late:  # outside the lock: probes take network and instrument time
            cached = self._signals.get(name)
            if cached is None or self.clock() - cached.at >= self.policy.signal_age_s:
                self._signals[name] = self.probes[name].read(self.clock())
        with self._cond:
            now = self.clock()
            current = {}
            for name, tracker in self._trackers.items():
                signals = self._signals.get(name) if name in late else None
                change = tracker.evaluate(now, signals)
                if change is not None:
                    changes.append(change)
                assert tracker.current is not None
                current[name] = tracker.current
            self._cond.notify_all()
        for name in self._trackers:
            if name not in late:
                self._signals.pop(name, None)  # fresh signals next time it is late
        if self.on_verdict is not None:
            for change in changes:
                self.on_verdict(change)
        return current

    def start(self, period_s: float | None = None) -> Self:
        """Poll on a background thread until :meth:`stop`."""
        if self._thread is not None:
            raise LivenessError("fleet monitor: already started")
        period = self.policy.interval_s / 5 if period_s is None else period_s
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(period,), name="fleet-monitor", daemon=True
        )
        self._thread.start()
        return self

    def _loop(self, period: float) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
            except Exception as exc:  # keep watching; the error is reported at stop()
                with self._cond:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def stop(self) -> None:
        """Stop the polling thread; raises LivenessError if any poll failed."""
        self._join()
        self._raise_errors()

    def _join(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(30)

    def _raise_errors(self) -> None:
        if self.errors:
            count, first = len(self.errors), self.errors[0]
            raise LivenessError(f"fleet monitor: {count} poll(s) failed, the first: {first}")

    def __enter__(self) -> Self:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._join()
        if exc_type is None:
            self._raise_errors()

    # --- reading verdicts ---

    def _tracker(self, name: str) -> GatewayTracker:
        try:
            return self._trackers[name]
        except KeyError:
            raise LivenessError(
                f"fleet monitor: not watching gateway {name!r}; it watches "
                f"{', '.join(sorted(self._trackers))}"
            ) from None

    def current(self, name: str) -> Verdict | None:
        """The latest verdict (None before the first poll)."""
        with self._cond:
            return self._tracker(name).current

    def history(self, name: str, since: float | None = None) -> list[Verdict]:
        """Every change of verdict, oldest first (those at or after ``since`` if given)."""
        with self._cond:
            found = list(self._tracker(name).history)
        return [v for v in found if since is None or v.at >= since]

    def tracker(self, name: str) -> GatewayTracker:
        return self._tracker(name)

    def wait_for(
        self, name: str, state: Liveness, *, timeout: float, since: float | None = None
    ) -> Verdict | None:
        """The first change into ``state`` at or after ``since`` (default: now, or the
        current verdict when it is already ``state``); None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            tracker = self._tracker(name)
            if since is None:
                current = tracker.current
                if current is not None and current.state == state:
                    return tracker.history[-1]
                since = self.clock()
            while True:
                for verdict in tracker.history:
                    if verdict.state == state and verdict.at >= since:
                        return verdict
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))


# --- the agent on the board --------------------------------------------------------------


class HeartbeatAgent:
    """Starts and stops heartbeat_remote.py on one gateway (a daemon that outlives the SSH
    session, so only a power cut, :meth:`stop` or its ttl end it)."""

    def __init__(
        self,
        gateway: ConnectedGateway,
        collector: tuple[str, int],
        interval_s: float,
        *,
        ttl_s: float = 3600.0,
        python: str = "python3",
    ) -> None:
        if not (math.isfinite(interval_s) and 0.01 <= interval_s <= 3600):
            raise LivenessError(f"heartbeat agent: interval_s {interval_s!r} must be 0.01-3600 s")
        self.gateway = gateway
        self.collector = collector
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.python = python
        self.script = f"{REMOTE_DIR}/{AGENT_SOURCE.name}"
        self.pidfile = f"{REMOTE_DIR}/heartbeat.pid"
        self.pid: int | None = None

    def start(self, timeout: float = 30.0) -> int:
        """Upload the agent if needed and start it (replacing a running one); its pid."""
        self.gateway.put(AGENT_SOURCE, self.script)
        host, port = self.collector
        argv = [self.python, self.script, "--detach", "--gateway", self.gateway.name,
                "--collector", host, "--port", str(port), "--interval", repr(self.interval_s),
                "--ttl", repr(self.ttl_s), "--pidfile", self.pidfile]  # fmt: skip
        result = self.gateway.run(argv, timeout=timeout, check=False)
        text = result.text.strip()
        if not result.ok or not text.isdigit():
            err = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise LivenessError(
                f"gateway {self.gateway.name}: the heartbeat agent did not start: "
                f"{err[-1] if err else text or f'exit status {result.exit_status}'}"
            )
        self.pid = int(text)
        return self.pid

    def _call(self, flag: str, timeout: float) -> int | None:
        result = self.gateway.run(
            [self.python, self.script, flag, "--pidfile", self.pidfile], timeout=timeout,
            check=False,
        )  # fmt: skip
        return result.exit_status

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the agent if it runs (idempotent)."""
        self._call("--stop", timeout)
        self.pid = None

    def running(self, timeout: float = 15.0) -> bool:
        return self._call("--status", timeout) == 0
