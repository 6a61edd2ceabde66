"""ECHONET Lite codec, the emulated smart meter, and SkstackRadio over real pseudo-terminals."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.errors import InfrastructureError, RigError, TransportError
from bench.radio.capability import ProbeEcho, Radio
from bench.radio.echonet import (
    CONTROLLER,
    ECHONET_PORT,
    EPC_INSTANTANEOUS_POWER,
    EPC_OPERATION_STATUS,
    SMART_METER,
    EchonetError,
    Eoj,
    Esv,
    Frame,
    Property,
    SmartMeter,
    decode_power_w,
    get_request,
)
from bench.radio.registry import RadioSetupError, open_radio
from bench.radio.skstack_driver import Dialect, SkstackError
from bench.radio.skstack_emulator import MeterPan, SkstackEmulator
from bench.radio.skstack_radio import MeterLink, SkstackRadio, SkstackRadioError
from bench.results import RunStore, read_jsonl
from bench.rig import RadioLink, load_rig, parse_rig
from bench.session import BenchSession
from bench.transport.ptyport import PtyDevice
from bench.transport.serial import SerialPort

# The Get of EPC 0xE7 public Route-B readers send (TID 1, controller -> smart meter).
GET_E7 = bytes.fromhex("1081000105FF010288016201E700")
RBID = "0123456789ABCDEF0123456789ABCDEF"
PASSWORD = "PASSWORD1234"

# -- ECHONET Lite codec ----------------------------------------------------------------------


def test_get_request_matches_the_known_bytes() -> None:
    frame = get_request(1, [EPC_INSTANTANEOUS_POWER])
    assert frame.encode() == GET_E7
    assert Frame.decode(GET_E7) == frame
    assert (frame.seoj, frame.deoj, frame.esv) == (CONTROLLER, SMART_METER, Esv.GET)
    assert str(SMART_METER) == "028801"


def test_get_res_power_decodes_signed_watts() -> None:
    data = bytes.fromhex("1081BEEF02880105FF017201E704FFFFFF9C")
    frame = Frame.decode(data)
    assert frame.tid == 0xBEEF and frame.esv == Esv.GET_RES
    edt = frame.get(EPC_INSTANTANEOUS_POWER)
    assert edt is not None and decode_power_w(edt) == -100
    assert frame.get(0x80) is None
    with pytest.raises(EchonetError, match="4 bytes"):
        decode_power_w(b"\x01")


def test_every_truncation_is_a_one_line_error() -> None:
    data = SmartMeter().answer(get_request(7, [0x80, 0xE7]))
    assert data is not None
    raw = data.encode()
    for cut in range(len(raw)):
        with pytest.raises(EchonetError) as err:
            Frame.decode(raw[:cut])
        assert "\n" not in str(err.value)
    assert Frame.decode(raw) == data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (GET_E7 + b"\x00", "1 trailing bytes"),
        (bytes.fromhex("1082000105FF010288016201E700"), "EHD 0x1082"),
        (bytes.fromhex("1081000105FF01028801"), "too short"),
        (bytes.fromhex("1081000105FF010288016E01E700"), "SetGet"),
        (bytes.fromhex("1081000105FF010288017201E7040000"), "PDC 4 but only 2"),
        (bytes.fromhex("1081000105FF0102880162028000"), "property 2 of 2"),
        (b"ERXUDP garbage\r\n", "EHD"),
    ],
)
def test_malformed_frames(data: bytes, match: str) -> None:
    with pytest.raises(EchonetError, match=match):
        Frame.decode(data)


def test_encode_refuses_bad_values() -> None:
    with pytest.raises(EchonetError, match="TID"):
        get_request(0x10000, [0x80])
    with pytest.raises(EchonetError, match="at least one EPC"):
        get_request(1, [])
    with pytest.raises(EchonetError, match="max 255"):
        Property(0x80, bytes(256))
    with pytest.raises(EchonetError, match="EOJ"):
        Eoj(0x02, 0x88, 0x100)


_props = st.lists(st.builds(Property, st.integers(0, 255), st.binary(max_size=8)), max_size=5).map(
    tuple
)
_eojs = st.builds(Eoj, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
_esvs = st.integers(0, 255).filter(lambda v: v not in (0x5E, 0x6E, 0x7E))


@given(st.builds(Frame, st.integers(0, 0xFFFF), _eojs, _eojs, _esvs, _props))
def test_frames_round_trip(frame: Frame) -> None:
    assert Frame.decode(frame.encode()) == frame


@given(st.binary(max_size=40))
def test_garbage_decodes_or_fails_cleanly(data: bytes) -> None:
    try:
        frame = Frame.decode(data)
    except EchonetError:
        return
    assert frame.encode() == data


def test_smart_meter_answers_like_a_meter() -> None:
    meter = SmartMeter(power_w=-42, operating=False)
    reply = meter(ECHONET_PORT, get_request(9, [0x80, 0xE7]).encode())
    assert reply is not None
    frame = Frame.decode(reply)
    assert (frame.tid, frame.esv, frame.seoj, frame.deoj) == (
        9,
        Esv.GET_RES,
        SMART_METER,
        CONTROLLER,
    )
    assert frame.get(EPC_OPERATION_STATUS) == b"\x31"
    assert frame.get(EPC_INSTANTANEOUS_POWER) == struct.pack(">i", -42)
    sna = meter(ECHONET_PORT, get_request(10, [0xE7, 0xD3]).encode())
    assert sna is not None
    refused = Frame.decode(sna)
    assert refused.esv == Esv.GET_SNA and refused.get(0xD3) == b"" and refused.get(0xE7)
    every_instance = get_request(11, [0x80], deoj=Eoj(0x02, 0x88, 0x00))
    assert meter(ECHONET_PORT, every_instance.encode()) is not None


@pytest.mark.parametrize(
    ("port", "data"),
    [
        (0x0E1B, GET_E7),  # not the ECHONET Lite port
        (ECHONET_PORT, b"hello"),  # not a frame
        (ECHONET_PORT, get_request(1, [0x80], deoj=Eoj(0x01, 0x30, 0x01)).encode()),  # an aircon
        (ECHONET_PORT, Frame(1, CONTROLLER, SMART_METER, Esv.GET_RES).encode()),  # no Get
    ],
)
def test_smart_meter_ignores_what_is_not_for_it(port: int, data: bytes) -> None:
    assert SmartMeter()(port, data) is None


# -- SkstackRadio over a pty -----------------------------------------------------------------


@pytest.fixture
def dongle(device: PtyDevice) -> Iterator[SkstackEmulator]:
    with SkstackEmulator(
        device,
        seed=3,
        rbid=RBID,
        password=PASSWORD,
        answer_drop_probability=0.25,
        answer_delay_s=0.03,
    ) as emulator:
        yield emulator


@pytest.fixture
def radio(device: PtyDevice, dongle: SkstackEmulator, tmp_path: Path) -> Iterator[SkstackRadio]:
    port = SerialPort(
        str(device.path), name="routeb", transcript=tmp_path / "rb.log", reopen_deadline_s=0.5
    )
    port.open()
    with SkstackRadio(port) as r:
        yield r


def _sent_lines(radio: SkstackRadio) -> list[str]:
    log = radio.driver.port.transcript
    assert log is not None
    return [ln for ln in log.read_text().splitlines() if " TX " in ln]


def test_identify_and_state_before_join(radio: SkstackRadio, dongle: SkstackEmulator) -> None:
    assert isinstance(radio, Radio)
    ident = radio.identify()
    assert (ident.driver, ident.firmware, ident.protocol) == ("skstack", "1.2.10", "skstack bp35a1")
    assert ident.hwaddr == dongle.mac.lower()
    state = radio.state()
    assert (state.role, state.joined) == ("detached", False)
    assert state.counters["probes_sent"] == 0 and state.counters["transmit_limited"] == 0
    topo = radio.topology()
    assert topo.neighbours == [] and topo.routes == []
    with pytest.raises(SkstackRadioError, match="join") as err:
        radio.send_probe(dongle.meter.ipv6, 1)
    assert "\n" not in str(err.value)


def test_join_gives_one_neighbour_one_hop(radio: SkstackRadio, dongle: SkstackEmulator) -> None:
    link = radio.join(RBID, PASSWORD, scan_duration=3, scan_timeout_s=3.0, join_timeout_s=2.0)
    assert (link.ipv6, link.mac, link.channel, link.pan_id) == (
        dongle.meter.ipv6,
        dongle.meter.mac,
        0x21,
        0x8888,
    )
    assert dongle.registers["S2"] == "21" and dongle.registers["S3"] == "8888"
    state = radio.state()
    assert (state.role, state.joined) == ("joined", True)
    topo = radio.topology()
    assert [n.address for n in topo.neighbours] == [dongle.meter.ipv6]
    assert topo.neighbours[0].rssi_dbm == pytest.approx(0.275 * 0xE1 - 104.27)
    assert topo.hops_to(dongle.meter.ipv6) == 1
    route = topo.routes[0]
    assert (route.next_hop, route.parent) == (dongle.meter.ipv6, dongle.ipv6)


def test_join_errors_are_one_line(radio: SkstackRadio, dongle: SkstackEmulator) -> None:
    with pytest.raises(SkstackError, match="EVENT 24") as err:
        radio.join(RBID, "WRONGPASSWORD", scan_duration=2, scan_timeout_s=3.0)
    assert "\n" not in str(err.value) and radio.meter is None
    with pytest.raises(SkstackRadioError, match="both"):
        radio.join(RBID)
    dongle.meter_in_range = False
    with pytest.raises(SkstackRadioError, match="no smart meter PAN found in 2 scan") as err2:
        radio.join(RBID, PASSWORD, scan_duration=2, scan_timeout_s=3.0, attempts=2)
    assert "\n" not in str(err2.value)
    assert radio.state().joined is False


def _wait_echoes(radio: SkstackRadio, want: int, timeout_s: float) -> list[ProbeEcho]:
    echoes: list[ProbeEcho] = []
    deadline = time.monotonic() + timeout_s
    while len(echoes) < want and time.monotonic() < deadline:
        echoes += radio.collect(0.1)
    return echoes


def _collect_all(radio: SkstackRadio, want: int, timeout_s: float) -> dict[int, int]:
    echoes: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(echoes) < want and time.monotonic() < deadline:
        for echo in radio.collect(0.2):
            assert echo.seq not in echoes
            echoes[echo.seq] = echo.received_ns
    return echoes


def test_probes_with_drops_match_by_tid(radio: SkstackRadio, dongle: SkstackEmulator) -> None:
    radio.join(RBID, PASSWORD, scan_duration=2, scan_timeout_s=3.0)
    seqs = list(range(65530, 65570))  # the TID wraps at 65536; seq must not
    sent = {seq: radio.send_probe(dongle.meter.ipv6, seq, payload_len=100) for seq in seqs}
    dropped = {Frame.decode(p).tid for p in dongle.dropped_requests}
    assert 3 <= len(dropped) <= 20  # p = 0.25 of 40, seed 3
    expected = {seq for seq in seqs if seq & 0xFFFF not in dropped}
    echoes = _collect_all(radio, len(expected), timeout_s=5.0)
    assert set(echoes) == expected
    assert all(echoes[seq] > sent[seq] for seq in echoes)
    assert radio.collect(0.1) == []
    counters = radio.state().counters
    assert counters["probes_sent"] == 40 and counters["echoes"] == len(expected)
    assert counters["send_failures"] == 0 and counters["stray_echoes"] == 0
    # payload_len is ignored: every Get is 14 bytes
    assert all(" 000E " in ln for ln in _sent_lines(radio) if "SKSENDTO" in ln)


def test_same_seed_drops_the_same_probes(device: PtyDevice, tmp_path: Path) -> None:
    runs = []
    for _ in range(2):
        with (
            SkstackEmulator(device, seed=11, answer_drop_probability=0.5) as emu,
            SerialPort(str(device.path)) as port,
        ):
            radio = SkstackRadio(port)
            radio.join(scan_duration=2, scan_timeout_s=3.0)
            for seq in range(12):
                radio.send_probe(emu.meter.ipv6, seq)
            runs.append(sorted(_collect_all(radio, 12, timeout_s=0.8)))
    assert runs[0] == runs[1] and 0 < len(runs[0]) < 12


def test_collect_times_out_with_empty_list(radio: SkstackRadio, dongle: SkstackEmulator) -> None:
    assert radio.collect(0.3) == []
    radio.join(RBID, PASSWORD, scan_duration=2, scan_timeout_s=3.0)
    dongle.answer_drop_probability = 0.0
    dongle.answer_delay_s = 0.5
    radio.send_probe(dongle.meter.ipv6, 9)
    assert radio.collect(0.05) == []  # gave up at its timeout, before the meter answered
    assert [e.seq for e in _wait_echoes(radio, 1, 3.0)] == [9]  # the answer was kept, not lost


def test_stray_and_foreign_datagrams_are_not_echoes(
    radio: SkstackRadio, dongle: SkstackEmulator
) -> None:
    radio.join(RBID, PASSWORD, scan_duration=2, scan_timeout_s=3.0)
    meter = dongle.meter
    stray = SmartMeter().answer(get_request(4242, [0x80]))
    assert stray is not None
    for data, rport in ((stray.encode(), 0x0E1A), (b"junk", 0x0E1A), (stray.encode(), 0x02CC)):
        dongle.send_raw(
            f"ERXUDP {meter.ipv6} {dongle.ipv6} {rport:04X} 0E1A {meter.mac} 1 "
            f"{len(data):04X} {data.hex().upper()}\r\n".encode()
        )
    assert radio.collect(0.3) == []
    assert radio.state().counters["stray_echoes"] == 2  # the PANA-port one is not ours at all


def test_send_failures_and_session_expiry_show_in_state(
    radio: SkstackRadio, dongle: SkstackEmulator
) -> None:
    radio.join(RBID, PASSWORD, scan_duration=2, scan_timeout_s=3.0)
    dongle.send_fail_probability = 1.0
    radio.send_probe(dongle.meter.ipv6, 1)
    assert radio.collect(0.2) == []
    assert radio.state().counters["send_failures"] == 1
    dongle.expire_session()
    time.sleep(0.1)
    state = radio.state()
    assert (state.role, state.joined) == ("detached", False)
    assert state.counters["session_expiries"] == 1
    assert radio.topology().routes == []
    assert not radio.driver.events  # state-only events do not pile up


def test_transmit_limit_shows_in_state(device: PtyDevice, tmp_path: Path) -> None:
    with (
        SkstackEmulator(device, airtime_budget_s=0.012, limit_window_s=60.0) as emu,
        SerialPort(str(device.path)) as port,
    ):
        radio = SkstackRadio(port)
        radio.join(scan_duration=2, scan_timeout_s=3.0)
        for seq in range(4):  # ~5.3 ms of airtime each: the third one crosses the budget
            radio.send_probe(emu.meter.ipv6, seq)
        assert len(_collect_all(radio, 3, timeout_s=1.0)) == 3
        counters = radio.state().counters
        assert counters["transmit_limit_on"] == 1 and counters["transmit_limited"] == 1
        assert counters["send_failures"] == 1 and counters["transmit_limit_off"] == 0


def test_unplug_and_replug(radio: SkstackRadio, device: PtyDevice, dongle: SkstackEmulator) -> None:
    radio.join(RBID, PASSWORD, scan_duration=2, scan_timeout_s=3.0)
    device.unplug()
    with pytest.raises(TransportError) as err:
        radio.identify()
    message = str(err.value)
    assert "\n" not in message and radio.label in message
    assert "did not return within 0.5 s" in message  # gave up at the port's reopen deadline
    device.replug()
    assert radio.identify().firmware == "1.2.10"
    radio.join(RBID, PASSWORD, scan_duration=2, scan_timeout_s=3.0)
    radio.send_probe(dongle.meter.ipv6, 77)
    deadline = time.monotonic() + 2.0
    echoes: list[ProbeEcho] = []
    while not echoes and time.monotonic() < deadline:
        echoes = radio.collect(0.2)
        if dongle.dropped_requests:  # the seeded drop hit this probe: send another
            dongle.dropped_requests.clear()
            radio.send_probe(dongle.meter.ipv6, 78)
    assert echoes and echoes[0].source == dongle.meter.ipv6


def test_bp35c0_radio(device: PtyDevice) -> None:
    with (
        SkstackEmulator(device, dialect="bp35c0") as emu,
        SkstackRadio.open(str(device.path), dialect="bp35c0", reopen_deadline_s=1.0) as radio,
    ):
        assert radio.identify().protocol == "skstack bp35c0"
        radio.join(scan_duration=2, scan_timeout_s=3.0)
        radio.send_probe(emu.meter.ipv6, 5)
        echoes = _collect_all(radio, 1, timeout_s=2.0)
        assert list(echoes) == [5]
        assert radio.topology().hops_to(emu.meter.ipv6) == 1


# -- a rig's Route-B dongle, opened and joined through the registry ----------------------


def _route_b_rig(port: str, radio: str) -> str:
    return (
        "name: rb\n"
        "ssh_defaults:\n"
        "  auth: {identity_file: /etc/fieldrig/id_ed25519}\n"
        "  host_key: {known_hosts: /etc/fieldrig/known_hosts}\n"
        "gateways:\n"
        "  - name: gw1\n"
        "    board: rpi4\n"
        "    ssh: {host: 192.168.10.101}\n"
        f"    radio: {{port: {port}, {radio}}}\n"
    )


def _link(port: str, radio: str) -> RadioLink:
    link = parse_rig(_route_b_rig(port, radio), "rb.yaml").gateway("gw1").radio
    assert link is not None
    return link


ROUTE_B = "route_b: {id_env: T_RB_ID, password_env: T_RB_PASSWORD, scan_duration: 2}"


@pytest.mark.parametrize(
    ("radio", "message"),
    [
        ("driver: skstack, " + ROUTE_B, "rb.yaml:9: gateways[0].radio.dialect: a skstack dongle "
         "needs dialect: bp35a1 or bp35c0"),
        ("driver: skstack, dialect: bp35c0", "rb.yaml:9: gateways[0].radio.route_b: a skstack "
         "dongle needs route_b: {id_env: <ENV_VAR_NAME>, password_env: <ENV_VAR_NAME>}"),
        ("driver: skstack, dialect: bp35c1, " + ROUTE_B, "rb.yaml:9: gateways[0].radio.dialect: "
         "must be bp35a1 or bp35c0"),
        ("driver: spinel, " + ROUTE_B, "rb.yaml:9: gateways[0].radio.route_b: only a skstack "
         "dongle takes route_b"),
        ("driver: skstack, dialect: bp35a1, route_b: {id_env: A, password_env: B, channel: 12}",
         "rb.yaml:9: gateways[0].radio.route_b.channel: must be a Route-B channel 33-60"),
    ],
)  # fmt: skip
def test_rig_route_b_mistakes_are_one_line(radio: str, message: str) -> None:
    with pytest.raises(RigError) as err:
        parse_rig(_route_b_rig("/dev/ttyUSB0", radio), "rb.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_rig_never_echoes_a_route_b_id_written_in_place_of_its_variable() -> None:
    route_b = f"route_b: {{id_env: {RBID.lower()}, password_env: B}}"
    radio = f"driver: skstack, dialect: bp35a1, {route_b}"
    with pytest.raises(RigError) as err:
        parse_rig(_route_b_rig("/dev/ttyUSB0", radio), "rb.yaml")
    assert "route_b.id_env: must be the NAME of an environment variable" in str(err.value)
    assert RBID.lower() not in str(err.value)


@pytest.fixture
def route_b_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("T_RB_ID", RBID)
    monkeypatch.setenv("T_RB_PASSWORD", PASSWORD)
    return monkeypatch


@pytest.mark.parametrize("dialect", ["bp35a1", "bp35c0"])
def test_open_radio_joins_the_meter_once_scanned(
    device: PtyDevice, tmp_path: Path, route_b_env: pytest.MonkeyPatch, dialect: Dialect
) -> None:
    link = _link(str(device.path), f"driver: skstack, dialect: {dialect}, {ROUTE_B}")
    meters: dict[str, MeterLink] = {}
    with SkstackEmulator(device, dialect=dialect, rbid=RBID, password=PASSWORD) as emu:
        for opening in range(2):
            port = SerialPort(str(device.path), name="gw1-radio", transcript=tmp_path / "rb.log")
            port.open()
            radio = open_radio(link, port, where="rb.yaml: gateway gw1", meters=meters)
            try:
                assert radio.topology().hops_to(emu.meter.ipv6) == 1
                assert radio.state().joined
                radio.send_probe(emu.meter.ipv6, 40 + opening)
                assert [e.seq for e in _wait_echoes(radio, 1, 3.0)] == [40 + opening]
            finally:
                radio.close()
        joins = [c for c in emu.commands if c.startswith("SKJOIN")]
        scans = [c for c in emu.commands if c.startswith("SKSCAN")]
    assert len(joins) == 2 and len(scans) == 1  # the second opening rejoined the known meter
    assert scans[0].split()[3] == "2"  # scan_duration from the rig
    assert meters[str(device.path)].ipv6 == emu.meter.ipv6
    transcript = (tmp_path / "rb.log").read_text()
    assert "SKSETRBID <secret>" in transcript
    assert RBID not in transcript and PASSWORD not in transcript


def test_open_radio_scans_only_the_rig_channel(
    device: PtyDevice, route_b_env: pytest.MonkeyPatch
) -> None:
    route_b = "route_b: {id_env: T_RB_ID, password_env: T_RB_PASSWORD, channel: 34}"
    link = _link(str(device.path), f"driver: skstack, dialect: bp35a1, {route_b}")
    with (
        SkstackEmulator(device, meter=MeterPan(channel=0x22)) as emu,
        SerialPort(str(device.path), name="gw1-radio") as port,
    ):
        radio = open_radio(link, port)
        assert radio.topology().hops_to(emu.meter.ipv6) == 1
        (scan,) = [c for c in emu.commands if c.startswith("SKSCAN")]
        assert scan.split()[2] == "00000002"  # channel 34 = 0x22: mask bit 1 only
        assert emu.registers["S2"] == "22"


def test_open_radio_setup_errors_are_infrastructure_and_keep_secrets(
    device: PtyDevice, route_b_env: pytest.MonkeyPatch
) -> None:
    link = _link(str(device.path), f"driver: skstack, dialect: bp35a1, {ROUTE_B}")
    where = "rb.yaml: gateway gw1"
    with (
        SkstackEmulator(device, rbid=RBID, password=PASSWORD) as emu,
        SerialPort(str(device.path), name="gw1-radio") as port,
    ):
        route_b_env.delenv("T_RB_ID")
        with pytest.raises(RadioSetupError) as err:
            open_radio(link, port, where=where)
        assert str(err.value) == (
            "rb.yaml: gateway gw1: radio.route_b.id_env: environment variable T_RB_ID is not "
            "set; export the 32-character Route-B ID in it before the run"
        )
        assert not emu.commands  # nothing was sent to the dongle
        route_b_env.setenv("T_RB_ID", "SHORT")
        with pytest.raises(RadioSetupError, match="T_RB_ID holds 5 characters") as err:
            open_radio(link, port, where=where)
        assert "SHORT" not in str(err.value)
        route_b_env.setenv("T_RB_ID", RBID)
        route_b_env.setenv("T_RB_PASSWORD", "WRONGPASSWORD")
        with pytest.raises(RadioSetupError) as err:
            open_radio(link, port, where=where)
    message = str(err.value)
    assert isinstance(err.value, InfrastructureError) and "\n" not in message
    assert message.startswith(f"{where}: Route-B join failed: {port.label}: SKJOIN")
    assert "EVENT 24" in message and "WRONGPASSWORD" not in message and RBID not in message


def test_session_reports_a_failed_join_once_as_infrastructure(
    device: PtyDevice, tmp_path: Path, route_b_env: pytest.MonkeyPatch
) -> None:
    """The bench session's radio(): a join refused for a wrong password is recorded and said
    once; a later test's radio() repeats the error without touching the dongle again."""
    rig_file = tmp_path / "rb.yaml"
    radio = f"driver: skstack, dialect: bp35a1, {ROUTE_B}"
    rig_file.write_text(_route_b_rig(str(device.path), radio))
    spec = load_rig(rig_file)
    store = RunStore.create(tmp_path / "runs", rig_name="rb", rig_path=rig_file,
                            rig_sha256=spec.file_sha256, virtual=False)  # fmt: skip
    said: list[str] = []
    session = BenchSession(spec=spec, store=store, gateways={}, say=said.append)
    route_b_env.setenv("T_RB_PASSWORD", "WRONGPASSWORD")
    try:
        with SkstackEmulator(device, rbid=RBID, password=PASSWORD) as emu:
            with pytest.raises(RadioSetupError) as first:
                session.radio("gw1")
            sent = len(emu.commands)
            with pytest.raises(RadioSetupError) as second:
                session.radio("gw1")
            assert len(emu.commands) == sent  # the second call did not try again
    finally:
        session.close("complete", say=said.append)
    assert str(first.value) == str(second.value)
    assert str(first.value).startswith(f"{rig_file}: gateway gw1: Route-B join failed: ")
    assert said[0] == (
        f"fieldrig: INFRASTRUCTURE ERROR radio of gateway gw1 unavailable: {first.value}"
    )
    assert sum("INFRASTRUCTURE ERROR" in line for line in said) == 1
    events = read_jsonl(store.run_dir / "events.jsonl")
    assert [(e["gateway"], e["kind"]) for e in events] == [("gw1", "radio_failed")]
    transcript = (store.run_dir / "serial" / "gw1.log").read_text()
    assert "SKJOIN" in transcript and "WRONGPASSWORD" not in transcript
