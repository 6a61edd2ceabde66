"""Probe schedules and the prober, against a small threaded fake radio.

The fake answers each probe on a timer thread after a chosen delay (or never), so the
prober's real waiting, matching and Tmax logic runs on real clocks. The real dongle
emulators are exercised by the radio tests.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from bench.errors import BenchError
from bench.mesh.loss import ProbeRecord, summarize
from bench.mesh.probing import ProbeError, Prober, periodic_schedule, poisson_schedule
from bench.radio.capability import DongleIdentity, DongleState, ProbeEcho, Radio, Topology

Delay = Callable[[str, int], float | None]
"""Host seconds until the echo of (destination, seq) arrives; None: it never does."""


class FakeRadio:
    driver_name = "fake"

    def __init__(self, delay: Delay, duplicate_after_s: float | None = None) -> None:
        self.delay = delay
        self.duplicate_after_s = duplicate_after_s
        self.sent: list[tuple[str, int, int]] = []
        self._echoes: queue.Queue[ProbeEcho] = queue.Queue()
        self._timers: list[threading.Timer] = []

    def identify(self) -> DongleIdentity:
        return DongleIdentity("fake", "0", "00" * 8, "fake")

    def state(self) -> DongleState:
        return DongleState("border-router", True)

    def topology(self) -> Topology:
        return Topology([], [])

    def send_probe(self, destination: str, seq: int, payload_len: int = 32) -> int:
        sent_ns = time.monotonic_ns()
        self.sent.append((destination, seq, sent_ns))
        after = self.delay(destination, seq)
        if after is not None:
            self.echo_later(after, destination, seq)
            if self.duplicate_after_s is not None:
                self.echo_later(self.duplicate_after_s, destination, seq)
        return sent_ns

    def echo_later(self, after: float, source: str, seq: int) -> None:
        def arrive() -> None:
            self._echoes.put(ProbeEcho(source, seq, time.monotonic_ns()))

        timer = threading.Timer(after, arrive)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def collect(self, timeout_s: float) -> list[ProbeEcho]:
        try:
            echoes = [
                self._echoes.get(timeout=timeout_s) if timeout_s > 0 else self._echoes.get_nowait()
            ]
        except queue.Empty:
            return []
        while True:
            try:
                echoes.append(self._echoes.get_nowait())
            except queue.Empty:
                return echoes

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()


TARGETS = [("fd00::1", 1), ("fd00::2", 2), ("fd00::3", None)]


def test_fake_radio_is_a_radio() -> None:
    assert isinstance(FakeRadio(lambda d, s: None), Radio)


def test_drops_delays_and_matching() -> None:
    dropped = {2, 5, 6, 11}
    radio = FakeRadio(lambda d, s: None if s in dropped else 0.004 + 0.002 * (s % 3))
    seen: list[ProbeRecord] = []
    prober = Prober(radio, tmax_s=0.2, on_record=seen.append)
    records = prober.run(TARGETS, periodic_schedule(0.003, 12))
    assert [r.seq for r in records] == list(range(12))
    assert [(r.destination, r.hops) for r in records] == [TARGETS[i % 3] for i in range(12)]
    assert [r.seq for r in records if r.lost] == sorted(dropped)
    for r in records:
        assert not r.late
        if r.lost:
            assert r.rtt_s is None
        else:
            assert r.rtt_s is not None
            assert 0.004 + 0.002 * (r.seq % 3) <= r.rtt_s < 0.1
    assert sorted(seen, key=lambda r: r.seq) == records
    assert [s for _, s, _ in radio.sent] == list(range(12))
    summary = summarize(records)
    assert summary.lost == 4 and summary.loss_periods == (1, 2, 1)
    radio.close()


def test_probes_go_out_on_schedule() -> None:
    radio = FakeRadio(lambda d, s: 0.001)
    schedule = [0.0, 0.02, 0.05, 0.09]
    Prober(radio, tmax_s=0.5).run(TARGETS[:1], schedule)
    start = radio.sent[0][2]
    for (_, _, sent_ns), offset in zip(radio.sent, schedule, strict=True):
        assert offset <= (sent_ns - start) / 1e9 < offset + 0.03


def test_each_fate_is_reported_when_known_not_at_the_end() -> None:
    # probe 0 is lost (Tmax 50 ms); the run lasts until probe 5's echo, ~0.5 s in
    radio = FakeRadio(lambda d, s: None if s == 0 else 0.002)
    reported_at: dict[int, int] = {}

    def on_record(record: ProbeRecord) -> None:
        reported_at[record.seq] = time.monotonic_ns()

    records = Prober(radio, tmax_s=0.05, on_record=on_record).run(
        TARGETS, periodic_schedule(0.1, 6)
    )
    assert records[0].lost
    assert 0.05 <= (reported_at[0] - records[0].sent_ns) / 1e9 < 0.1
    for r in records[1:]:
        assert (reported_at[r.seq] - r.sent_ns) / 1e9 < 0.05
    radio.close()


def test_late_echo_is_lost_with_its_rtt() -> None:
    radio = FakeRadio(lambda d, s: 0.12 if s == 0 else 0.002)
    seen: list[ProbeRecord] = []
    records = Prober(radio, tmax_s=0.04, on_record=seen.append).run(TARGETS[:1], [0.0, 0.25])
    first = records[0]
    assert first.lost and first.late
    assert first.rtt_s is not None and 0.12 <= first.rtt_s < 0.2
    # reported lost at Tmax first, then again when the late echo came
    assert [(r.seq, r.lost, r.late) for r in seen] == [
        (0, True, False),
        (0, True, True),
        (1, False, False),
    ]
    assert seen[0].rtt_s is None
    assert summarize(seen).lost == 1
    radio.close()


def test_time_scale_converts_host_time_to_mesh_time() -> None:
    # the mesh runs 10x faster than real time: 10 ms on the host is 100 ms of mesh time
    radio = FakeRadio(lambda d, s: None if s == 1 else 0.01)
    reported_at: dict[int, int] = {}

    def on_record(record: ProbeRecord) -> None:
        reported_at[record.seq] = time.monotonic_ns()

    records = Prober(
        radio,
        tmax_s=0.5,  # mesh seconds: 50 ms on the host
        time_scale=10.0,
        on_record=on_record,
    ).run(TARGETS[:1], [0.0, 0.2, 1.0])  # mesh seconds: 0, 20 and 100 ms on the host
    rtt = records[0].rtt_s
    assert rtt is not None and 0.1 <= rtt < 0.3
    assert 0.02 <= (radio.sent[1][2] - radio.sent[0][2]) / 1e9 < 0.05
    assert 0.05 <= (reported_at[1] - records[1].sent_ns) / 1e9 < 0.095
    radio.close()


def test_sequence_numbers_are_global_across_runs_and_strays_kept() -> None:
    radio = FakeRadio(lambda d, s: 0.002)
    prober = Prober(radio, tmax_s=0.1, first_seq=100)
    first = prober.run(TARGETS, periodic_schedule(0.001, 4))
    radio.echo_later(0.0, "fd00::9", 5)  # nobody asked
    radio.echo_later(0.0, "fd00::1", 999)
    second = prober.run(TARGETS, periodic_schedule(0.001, 3))
    assert [r.seq for r in first + second] == list(range(100, 107))
    assert not any(r.lost for r in first + second)
    assert {(e.source, e.seq) for e in prober.strays} == {("fd00::9", 5), ("fd00::1", 999)}
    radio.close()


def test_duplicate_echo_counts_once() -> None:
    radio = FakeRadio(lambda d, s: 0.002, duplicate_after_s=0.004)
    seen: list[ProbeRecord] = []
    prober = Prober(radio, tmax_s=0.1, on_record=seen.append)
    records = prober.run(TARGETS[:1], [0.0, 0.03, 0.06])
    assert [r.lost for r in records] == [False, False, False]
    assert len(seen) == 3
    assert {("fd00::1", 0), ("fd00::1", 1)} <= {(e.source, e.seq) for e in prober.strays}
    radio.close()


@pytest.mark.parametrize(
    "options",
    [
        {"tmax_s": 0.0},
        {"tmax_s": -1.0},
        {"tmax_s": float("nan")},
        {"tmax_s": 0.1, "time_scale": 0.0},
        {"tmax_s": 0.1, "payload_len": -1},
    ],
)
def test_bad_prober_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ProbeError) as info:
        Prober(FakeRadio(lambda d, s: 0.0), **options)  # type: ignore[arg-type]
    assert isinstance(info.value, BenchError) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("targets", "schedule"),
    [
        ([], [0.0]),
        ([("", 1)], [0.0]),
        ([("fd00::1", -1)], [0.0]),
        (TARGETS, [0.0, 0.2, 0.1]),
        (TARGETS, [-0.1]),
        (TARGETS, [float("inf")]),
    ],
)
def test_bad_runs_send_nothing(
    targets: list[tuple[str, int | None]], schedule: list[float]
) -> None:
    radio = FakeRadio(lambda d, s: 0.0)
    with pytest.raises(ProbeError):
        Prober(radio, tmax_s=0.1).run(targets, schedule)
    assert radio.sent == []


def test_tmax_is_documented_as_worst_case_mac_retry_time() -> None:
    assert "at least the worst-case MAC retry time" in (Prober.__doc__ or "")


# --- schedules ------------------------------------------------------------------------------


def test_periodic_schedule() -> None:
    assert periodic_schedule(0.5, 4) == [0.0, 0.5, 1.0, 1.5]
    assert periodic_schedule(1.0, 0) == []
    for interval, count in ((0.0, 3), (-1.0, 3), (float("inf"), 3), (1.0, -1)):
        with pytest.raises(ProbeError):
            periodic_schedule(interval, count)


def test_poisson_schedule_has_exponential_gaps() -> None:
    offsets = poisson_schedule(20.0, 20_000, np.random.default_rng(5))
    gaps = np.diff([0.0, *offsets])
    assert np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 20.0, rel=0.05)  # exponential: std == mean
    assert np.mean(gaps > 0.1) == pytest.approx(np.exp(-2.0), abs=0.01)  # P(gap > 2/rate)
    again = poisson_schedule(20.0, 20_000, np.random.default_rng(5))
    assert offsets == again
    with pytest.raises(ProbeError):
        poisson_schedule(0.0, 3, np.random.default_rng(1))
