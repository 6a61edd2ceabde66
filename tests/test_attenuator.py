"""The Mini-Circuits attenuator driver against the virtual attenuator, over pyvisa-py TCP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from bench.errors import BenchError
from bench.instruments.attenuator import Attenuator, MiniCircuitsAttenuator, parse_model
from bench.instruments.psu import InstrumentError, SetpointRefused
from bench.lab.attenuator_server import AttenuatorServer
from bench.rig import AttenuatorChannel


def ch(max_db: float, safe_db: float) -> AttenuatorChannel:
    """Channel limits as a rig file declares them."""
    return AttenuatorChannel(max_db=max_db, safe_db=safe_db)


LIMITS = {1: ch(60.0, 60.0), 2: ch(30.0, 20.0)}


@pytest.fixture
def changes() -> list[tuple[int, float]]:
    return []


@pytest.fixture
def start_server(
    changes: list[tuple[int, float]],
) -> Iterator[Callable[..., AttenuatorServer]]:
    servers: list[AttenuatorServer] = []

    def start(**options: object) -> AttenuatorServer:
        options.setdefault("on_set", lambda ch, db: changes.append((ch, db)))
        server = AttenuatorServer(**options).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., AttenuatorServer]) -> AttenuatorServer:
    return start_server(channels=4, max_db=95.0)


@pytest.fixture
def att(server: AttenuatorServer) -> Iterator[MiniCircuitsAttenuator]:
    with MiniCircuitsAttenuator(server.resource, LIMITS, "att") as driver:
        yield driver


def sets(server: AttenuatorServer) -> list[str]:
    return [line for line in server.transcript() if "SETATT" in line.upper()]


def test_identify(att: MiniCircuitsAttenuator, server: AttenuatorServer) -> None:
    ident = att.identify()
    assert (ident.model, ident.serial) == ("RC4DAT-6G-95", "12301230001")
    assert (ident.channels, ident.max_db) == (4, 95.0)
    assert isinstance(att, Attenuator)


def test_set_and_get(
    att: MiniCircuitsAttenuator, server: AttenuatorServer, changes: list[tuple[int, float]]
) -> None:
    assert att.set_db(1, 12.5) == 12.5
    assert att.set_db(2, 30.0) == 30.0
    assert att.get_db(1) == 12.5
    assert att.get_db(2) == 30.0
    assert server.attenuation(1) == 12.5
    assert server.attenuation(3) == 0.0  # undeclared channels are never touched
    assert sets(server) == [":CHAN:1:SETATT:12.50", ":CHAN:2:SETATT:30.00"]
    assert changes == [(1, 12.5), (2, 30.0)]


def test_values_are_rounded_to_the_step(
    att: MiniCircuitsAttenuator, server: AttenuatorServer
) -> None:
    assert att.set_db(1, 10.1) == 10.0
    assert att.set_db(1, 10.13) == 10.25
    assert att.set_db(1, 0.12) == 0.0
    assert server.attenuation(1) == 0.0
    assert att.get_db(1) == 0.0


def test_rounding_never_crosses_max_db(start_server: Callable[..., AttenuatorServer]) -> None:
    server = start_server(channels=1, max_db=90.0)
    with MiniCircuitsAttenuator(server.resource, {1: ch(30.2, 0.0)}, "a") as att:
        assert att.set_db(1, 30.2) == 30.0  # nearest step 30.25 is above the limit
        assert server.attenuation(1) == 30.0


@pytest.mark.parametrize(("channel", "db"), [(1, 60.25), (2, 31.0), (1, -0.25), (1, float("nan"))])
def test_out_of_range_is_refused_before_writing(
    att: MiniCircuitsAttenuator,
    server: AttenuatorServer,
    changes: list[tuple[int, float]],
    channel: int,
    db: float,
) -> None:
    server.clear_transcript()
    with pytest.raises(SetpointRefused) as info:
        att.set_db(channel, db)
    assert f"att channel {channel}" in str(info.value)
    assert "refused before anything was sent" in str(info.value)
    assert "\n" not in str(info.value)
    assert server.transcript() == []
    assert changes == []


def test_unknown_channel_is_refused_before_writing(
    att: MiniCircuitsAttenuator, server: AttenuatorServer
) -> None:
    server.clear_transcript()
    with pytest.raises(SetpointRefused, match="channel 3 is not declared"):
        att.set_db(3, 1.0)
    with pytest.raises(SetpointRefused, match="channel 3 is not declared"):
        att.get_db(3)
    assert server.transcript() == []


def test_channels_the_model_lacks_are_refused_at_open(
    start_server: Callable[..., AttenuatorServer],
) -> None:
    server = start_server(channels=2, max_db=95.0)
    with pytest.raises(SetpointRefused, match="RC2DAT-6G-95 has channels 1 to 2"):
        MiniCircuitsAttenuator(server.resource, {3: ch(10.0, 10.0)}, "a")
    with pytest.raises(SetpointRefused, match="beyond the RC2DAT-6G-95's 95 dB range"):
        MiniCircuitsAttenuator(server.resource, {1: ch(100.0, 100.0)}, "a")
    assert sets(server) == []


def test_single_channel_model_uses_the_plain_commands(
    start_server: Callable[..., AttenuatorServer],
) -> None:
    server = start_server(channels=1, max_db=90.0)
    with MiniCircuitsAttenuator(server.resource, {1: ch(60.0, 45.0)}, "a") as att:
        assert att.identify().model == "RCDAT-6000-90"
        att.set_db(1, 7.75)
        assert att.get_db(1) == 7.75
    assert sets(server) == [":SETATT=7.75", ":SETATT=45.00"]
    assert ":ATT?" in server.transcript()


def test_safe_state_on_close(server: AttenuatorServer, changes: list[tuple[int, float]]) -> None:
    att = MiniCircuitsAttenuator(server.resource, LIMITS, "att")
    att.set_db(1, 3.0)
    att.set_db(2, 4.0)
    att.close()
    assert (server.attenuation(1), server.attenuation(2)) == (60.0, 20.0)
    assert changes[-2:] == [(1, 60.0), (2, 20.0)]
    att.close()  # a second close does nothing
    with pytest.raises(InstrumentError, match="closed"):
        att.get_db(1)


def test_safe_state_on_exception_inside_with(server: AttenuatorServer) -> None:
    with (
        pytest.raises(RuntimeError, match="test body failed"),
        MiniCircuitsAttenuator(server.resource, LIMITS, "att") as att,
    ):
        att.set_db(1, 0.0)
        att.set_db(2, 0.0)
        raise RuntimeError("test body failed")
    assert (server.attenuation(1), server.attenuation(2)) == (60.0, 20.0)


def test_device_return_codes_are_errors(start_server: Callable[..., AttenuatorServer]) -> None:
    # a rig whose limit is above what this (smaller) device can do: the device answers 2
    server = start_server(channels=4, max_db=30.0, model="RC4DAT-6G-95")
    with MiniCircuitsAttenuator(server.resource, {1: ch(60.0, 0.0)}, "att") as att:
        with pytest.raises(InstrumentError, match=r"answered '2' \(requested attenuation above"):
            att.set_db(1, 40.0)
        assert att.get_db(1) == 30.0  # the device set its maximum instead


def test_virtual_device_error_paths(server: AttenuatorServer) -> None:
    device = server.device
    assert device.execute(":BOGUS?") == "0"
    assert device.execute(":CHAN:9:SETATT:1") == "0"
    assert device.execute(":CHAN:9:ATT?") == "0"
    assert device.execute(":CHAN:1:SETATT:-1") == "0"
    assert device.execute(":CHAN:1:SETATT:abc") == "0"
    assert device.execute(":CHAN:1:SETATT:200") == "2"
    assert device.execute(":CHAN:1:ATT?") == "95.00"
    assert device.execute("chan:2:3:setatt:10.25;") == "1"
    assert device.execute("ATT?") == "95.00 10.25 10.25 0.00"
    assert device.execute(":SETATT=5") == "1"
    assert device.execute(":ATT?") == "5.00 5.00 5.00 5.00"


def test_wrong_instrument_is_refused(start_server: Callable[..., AttenuatorServer]) -> None:
    server = start_server(channels=4, max_db=95.0, model="ZX76-31R5")
    with pytest.raises(InstrumentError, match="not a Mini-Circuits RCDAT"):
        MiniCircuitsAttenuator(server.resource, LIMITS, "att")


def test_unreachable_attenuator_is_one_line_error() -> None:
    with pytest.raises(InstrumentError) as info:
        MiniCircuitsAttenuator("TCPIP::127.0.0.1::1::SOCKET", LIMITS, "att", timeout_ms=500)
    message = str(info.value)
    assert message.startswith("att: ") and "reachable" in message and "\n" not in message
    assert isinstance(info.value, BenchError)


def test_parse_model() -> None:
    assert parse_model("RCDAT-6000-90") == (1, 90.0)
    assert parse_model("RUDAT-13G-90") == (1, 90.0)
    assert parse_model("RC4DAT-6G-95") == (4, 95.0)
    assert parse_model("RC8DAT-8G-95") == (8, 95.0)
    with pytest.raises(ValueError):
        parse_model("SPD3303X")


def test_server_runs_as_a_module() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.lab.attenuator_server", "--port", "0", "--channels", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "RC2DAT-6G-95" in banner
        resource = banner.rsplit(" ", 1)[1].strip()
        with MiniCircuitsAttenuator(resource, {2: ch(95.0, 95.0)}, "a") as att:
            att.set_db(2, 1.0)
            assert att.get_db(2) == 1.0
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
