"""Smoke suite: every gateway is reachable, known, and its clock is measured."""

from __future__ import annotations

import pytest

from bench.boards import BOARDS
from bench.fleet.clock import estimate_clock
from bench.gateway import ConnectedGateway
from bench.plugin import Recorder
from bench.session import BenchSession

CLOCK_SAMPLES = 32


def test_reachable(gateway: ConnectedGateway, results: Recorder) -> None:
    """A command runs on the board and its exit status and output come back intact."""
    result = gateway.run(["sh", "-c", "echo fieldrig-$((6*7)); echo to-stderr >&2; exit 3"],
                         check=False)  # fmt: skip
    assert result.exit_status == 3
    assert result.text == "fieldrig-42\n"
    assert result.stderr == b"to-stderr\n"
    results.record("command.duration_on_board", result.duration_s * 1e3, "ms")


def test_inventory_recorded(
    gateway: ConnectedGateway, rig: BenchSession, results: Recorder
) -> None:
    """The session's inventory says what the board is, and it is the board the rig declares."""
    inventory = rig.inventory[gateway.name]
    for key in ("board_model", "os", "kernel", "libc", "python", "fingerprint"):
        assert inventory.get(key), f"inventory of {gateway.name} lacks {key}"
    profile = BOARDS.get(gateway.spec.board)
    if profile is not None:
        assert profile.model_family in inventory["board_model"], (
            f"{gateway.name} is declared {gateway.spec.board} but reports "
            f"{inventory['board_model']!r}"
        )
    results.record("inventory.fingerprint", inventory["fingerprint"], "1")


@pytest.mark.needs("ssh")
def test_clock_offset(gateway: ConnectedGateway, results: Recorder) -> None:
    """Clock offset and round trip, NTP-style over the agent channel, best sample by RTT."""
    estimate = estimate_clock(gateway.ping, samples=CLOCK_SAMPLES)
    assert estimate.rtt_ns > 0
    assert estimate.rtt_ns <= estimate.median_rtt_ns
    results.record("clock.offset", estimate.offset_ns / 1e6, "ms", samples=CLOCK_SAMPLES,
                   error_bound_ms=estimate.error_bound_ns / 1e6)  # fmt: skip
    results.record("clock.rtt_min", estimate.rtt_ns / 1e3, "us", samples=CLOCK_SAMPLES)
    results.record("clock.rtt_median", estimate.median_rtt_ns / 1e3, "us", samples=CLOCK_SAMPLES)
