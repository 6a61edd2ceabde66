"""One command to twenty virtual gateways: fieldrig's fan-out vs a sequential loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.gateway import ConnectedGateway
from bench.lab.virtual import VirtualLab
from bench.transport.fanout import fan_out
from benchmarks.conftest import interleaved_medians, remember


@pytest.fixture(scope="module")
def twenty(lab20: VirtualLab) -> Iterator[list[ConnectedGateway]]:
    gateways = [ConnectedGateway(lab20.rig.gateway(n)) for n in lab20.rig.gateway_names()]
    warm = fan_out(gateways, ["true"])
    assert warm.ok, warm.errors
    yield gateways
    for gw in gateways:
        gw.close()


def test_fanout_20(benchmark: Any, twenty: list[ConnectedGateway]) -> None:
    outcome = benchmark(fan_out, twenty, ["uname", "-n"])
    assert sorted(r.text.strip() for r in outcome.results.values()) == sorted(
        gw.name for gw in twenty
    )
    remember("fanout_20", benchmark)


def test_sequential_20(benchmark: Any, twenty: list[ConnectedGateway]) -> None:
    def loop() -> list[str]:
        return [gw.run(["uname", "-n"]).text for gw in twenty]

    assert len(benchmark(loop)) == 20
    remember("sequential_20", benchmark)


def test_fanout_ratio(twenty: list[ConnectedGateway]) -> None:
    """Fan-out against the sequential loop, interleaved in one loop."""
    medians = interleaved_medians(
        {
            "fanout": lambda: fan_out(twenty, ["uname", "-n"]),
            "sequential": lambda: [gw.run(["uname", "-n"]) for gw in twenty],
        },
        rounds=15,
    )
    print(f"interleaved fan-out: {medians}")
    assert medians["sequential"] / medians["fanout"] >= 1.3
