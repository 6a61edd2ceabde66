"""Probe schedules and the prober: sequence-numbered echo probes through a gateway's radio.

Schedules give each probe's send time as an offset from the start: periodic (RFC 3432) or
Poisson (RFC 2330 section 11.1.1: exponentially distributed gaps, so the probes neither
synchronise with periodic network behaviour nor let it hide between them).

The :class:`Prober` pipelines probes through :class:`~bench.radio.capability.Radio`: it
sends each one at its scheduled time, and while it waits it collects echoes and matches them
to probes by (source, seq). A probe whose echo has not come back within the loss threshold
Tmax is lost (RFC 7680 / 6673); Tmax must be at least the worst-case MAC retry time
(every CSMA-CA backoff and frame retry on every hop, there and back), or slow deliveries are
miscounted as losses. An echo after Tmax is kept as a late loss with its RTT.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.errors import BenchError
from bench.mesh.loss import ProbeRecord
from bench.radio.capability import ProbeEcho, Radio

__all__ = ["ProbeError", "Prober", "periodic_schedule", "poisson_schedule"]

_MAX_WAIT_S = 0.05  # longest single collect() call, so sends are never held up for long


class ProbeError(BenchError):
    """A probe run asked for something impossible (bad Tmax, schedule or targets)."""


def _count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ProbeError(f"probe count must be a whole number >= 0, got {count!r}")


def periodic_schedule(interval_s: float, count: int) -> list[float]:
    """``count`` send offsets ``interval_s`` apart, the first at 0 (RFC 3432 periodic)."""
    if not math.isfinite(interval_s) or interval_s <= 0:
        raise ProbeError(f"probe interval must be a finite number of seconds > 0, got {interval_s}")
    _count(count)
    return [i * interval_s for i in range(count)]


def poisson_schedule(rate_hz: float, count: int, rng: np.random.Generator) -> list[float]:
    """``count`` send offsets of a Poisson process of ``rate_hz`` (RFC 2330 section 11.1.1).

    The gaps are independent exponential draws of mean 1 / ``rate_hz``; the first probe goes
    one gap after the start.
    """
    if not math.isfinite(rate_hz) or rate_hz <= 0:
        raise ProbeError(f"probe rate must be a finite number of hertz > 0, got {rate_hz}")
    _count(count)
    gaps = rng.exponential(1.0 / rate_hz, size=count)
    return [float(t) for t in np.cumsum(gaps)]


@dataclass
class _Pending:
    index: int
    destination: str
    hops: int | None
    sent_ns: int


class Prober:
    """Sends scheduled probes through ``radio`` and reports each probe's fate.

    ``tmax_s`` is the loss threshold Tmax: at least the worst-case MAC retry time of the path.
    ``time_scale`` is mesh seconds per host second (a virtual mesh may run faster than real
    time; a real dongle has 1): RTTs are host-clock nanoseconds times ``time_scale``, and
    ``tmax_s`` and the schedule are in mesh seconds, so on the host they last ``1 /
    time_scale`` as long. Each record goes to ``on_record`` as soon as its fate is known: at
    its echo, or at Tmax when it is lost. A lost probe whose echo then arrives late during
    the run is reported again with ``late=True`` and its RTT (that record supersedes the
    first; :func:`~bench.mesh.loss.summarize` accepts the pair). Sequence numbers are global
    to the prober and increase across runs, starting at ``first_seq``.
    """

    def __init__(
        self,
        radio: Radio,
        *,
        tmax_s: float,
        time_scale: float = 1.0,
        on_record: Callable[[ProbeRecord], None] | None = None,
        payload_len: int = 32,
        first_seq: int = 0,
    ) -> None:
        if not math.isfinite(tmax_s) or tmax_s <= 0:
            raise ProbeError(
                f"Tmax must be a finite number of seconds > 0, got {tmax_s}; use at least the "
                "worst-case MAC retry time of the path"
            )
        if not math.isfinite(time_scale) or time_scale <= 0:
            raise ProbeError(f"time_scale must be a finite number > 0, got {time_scale}")
        if payload_len < 0:
            raise ProbeError(f"payload length must be >= 0 bytes, got {payload_len}")
        if first_seq < 0:
            raise ProbeError(f"first_seq must be >= 0, got {first_seq}")
        self.radio = radio
        self.tmax_s = tmax_s
        self.time_scale = time_scale
        self.on_record = on_record
        self.payload_len = payload_len
        self.next_seq = first_seq
        self.strays: list[ProbeEcho] = []
        """Echoes that matched no probe of a run (unknown source/seq, or duplicates)."""

    def run(
        self, targets: Sequence[tuple[str, int | None]], schedule: Sequence[float]
    ) -> list[ProbeRecord]:
        """Send probe ``i`` to ``targets[i % len(targets)]`` at start + ``schedule[i]``.

        Returns one record per probe, in send order, once every probe's fate is known.
        """
        self._check(targets, schedule)
        scale = self.time_scale
        tmax_ns = self.tmax_s / scale * 1e9
        offsets_ns = [round(offset / scale * 1e9) for offset in schedule]
        records: list[ProbeRecord | None] = [None] * len(schedule)
        pending: dict[tuple[str, int], _Pending] = {}  # sent, fate unknown
        expired: dict[tuple[str, int], _Pending] = {}  # reported lost at Tmax, no echo yet

        def match(echo: ProbeEcho) -> None:
            key = (echo.source, echo.seq)
            if key in pending:
                probe = pending.pop(key)
                late = echo.received_ns - probe.sent_ns > tmax_ns
            elif key in expired:
                probe, late = expired.pop(key), True
            else:
                self.strays.append(echo)
                return
            rtt_s = (echo.received_ns - probe.sent_ns) * scale / 1e9
            self._emit(records, probe, echo.seq, rtt_s, late)

        sent = 0
        start = time.monotonic_ns()
        while sent < len(schedule) or pending:
            now = time.monotonic_ns()
            while sent < len(schedule) and start + offsets_ns[sent] <= now:
                destination, hops = targets[sent % len(targets)]
                seq = self.next_seq
                self.next_seq += 1
                sent_ns = self.radio.send_probe(destination, seq, self.payload_len)
                pending[(destination, seq)] = _Pending(sent, destination, hops, sent_ns)
                sent += 1
                now = time.monotonic_ns()
            wake = float(start + offsets_ns[sent]) if sent < len(schedule) else math.inf
            if pending:
                wake = min(wake, min(p.sent_ns for p in pending.values()) + tmax_ns)
            before_collect = time.monotonic_ns()
            for echo in self.radio.collect(min(max(wake - before_collect, 0) / 1e9, _MAX_WAIT_S)):
                match(echo)
            # An echo that arrived before a deadline was in that collect's batch: expire only
            # the probes whose deadline had passed before the collect began.
            for key, probe in list(pending.items()):
                if probe.sent_ns + tmax_ns < before_collect:
                    expired[key] = pending.pop(key)
                    self._emit(records, probe, key[1], None, False)
        for echo in self.radio.collect(0.0):  # late echoes already waiting
            match(echo)
        return [r for r in records if r is not None]

    def _emit(
        self,
        records: list[ProbeRecord | None],
        probe: _Pending,
        seq: int,
        rtt_s: float | None,
        late: bool,
    ) -> None:
        record = ProbeRecord(
            seq=seq,
            destination=probe.destination,
            hops=probe.hops,
            sent_ns=probe.sent_ns,
            rtt_s=rtt_s,
            lost=rtt_s is None or late,
            late=late,
        )
        records[probe.index] = record
        if self.on_record is not None:
            self.on_record(record)

    @staticmethod
    def _check(targets: Sequence[tuple[str, int | None]], schedule: Sequence[float]) -> None:
        if not targets:
            raise ProbeError("no probe targets: give at least one (destination, hops) pair")
        for destination, hops in targets:
            if not destination:
                raise ProbeError("a probe target has an empty destination address")
            if hops is not None and (isinstance(hops, bool) or hops < 0):
                raise ProbeError(f"hop count for {destination} must be >= 0 or None, got {hops}")
        previous = 0.0
        for i, offset in enumerate(schedule):
            if not math.isfinite(offset) or offset < previous:
                raise ProbeError(
                    f"schedule offset {i} is {offset} s: offsets must be finite, >= 0 and "
                    "non-decreasing (use periodic_schedule or poisson_schedule)"
                )
            previous = offset
