"""Spinel over HDLC-lite codec: known vectors, round trips, stream splitting, error paths."""

from __future__ import annotations

import pytest

from bench.radio.hdlc import (
    ESCAPED_BYTES,
    FCS_GOOD,
    HdlcDecoder,
    encode_frame,
    fcs16,
    fcs16_check,
    fcs16_update,
)
from bench.radio.spinel import (
    Cmd,
    Prop,
    SpinelError,
    SpinelFrame,
    Unpacker,
    decode_packed_uint,
    encode_packed_uint,
    pack_data_wlen,
    pack_eui64,
    pack_header,
    pack_u8,
    pack_u16,
    pack_u32,
    pack_uint,
    pack_utf8,
    unpack_header,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SPECIALS = sorted(ESCAPED_BYTES)
payloads = st.lists(st.one_of(st.sampled_from(SPECIALS), st.integers(0, 255)), max_size=80).map(
    bytes
)


# ------------------------------------------------------------------ known vectors


def test_design_example_get_protocol_version() -> None:
    frame = SpinelFrame(command=Cmd.PROP_VALUE_GET, prop=Prop.PROTOCOL_VERSION, tid=1)
    assert frame.encode() == bytes.fromhex("810201")
    assert encode_frame(frame.encode()) == bytes.fromhex("7E810201C5B27E")
    assert HdlcDecoder().feed(bytes.fromhex("7E810201C5B27E")) == [bytes.fromhex("810201")]


def test_fcs_check_value_crc16_ibm_sdlc() -> None:
    # CRC catalogue, CRC-16/IBM-SDLC: check = 0x906E, residue 0xF0B8
    assert fcs16(b"123456789") == 0x906E
    assert fcs16_update(0xFFFF, b"123456789" + bytes((0x6E, 0x90))) == FCS_GOOD
    assert fcs16_check(b"123456789\x6e\x90")
    assert not fcs16_check(b"123456789\x90\x6e")


def test_escaped_bytes_on_the_wire() -> None:
    wire = encode_frame(bytes((0x7E, 0x7D, 0x11, 0x13, 0xF8, 0x20)))
    body = wire[1:-1]
    assert wire[0] == wire[-1] == 0x7E
    assert 0x7E not in body
    assert body.startswith(bytes.fromhex("7D5E 7D5D 7D31 7D33 7DD8 20"))
    for special in (0x11, 0x13, 0xF8):
        assert special not in body


def test_empty_payload_round_trips() -> None:
    assert encode_frame(b"") == bytes.fromhex("7E00007E")
    assert HdlcDecoder().feed(encode_frame(b"")) == [b""]


# ------------------------------------------------------------------ round trips


@given(payloads)
def test_round_trip(payload: bytes) -> None:
    wire = encode_frame(payload)
    assert 0x7E not in wire[1:-1]
    assert not any(b in wire[1:-1] for b in (0x11, 0x13, 0xF8))
    assert HdlcDecoder().feed(wire) == [payload]


@given(st.lists(payloads, min_size=1, max_size=5), st.data())
@settings(max_examples=60)
def test_merged_and_randomly_split(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = HdlcDecoder()
    got: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[prev:cut])
        prev = cut
    assert got == frames
    assert decoder.bad_fcs == 0


def test_split_at_every_byte_boundary() -> None:
    frames = [bytes(range(256)), b"\x7e\x7d\x11\x13\xf8", b"", b"\x81\x06\x01\x04\x03"]
    stream = b"".join(encode_frame(p) for p in frames)
    for cut in range(len(stream) + 1):
        decoder = HdlcDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == frames, cut
    decoder = HdlcDecoder()
    got: list[bytes] = []
    for byte in stream:
        got += decoder.feed(bytes((byte,)))
    assert got == frames


def test_shared_flag_between_frames() -> None:
    a, b = encode_frame(b"one"), encode_frame(b"two")
    assert HdlcDecoder().feed(a + b[1:]) == [b"one", b"two"]


# ------------------------------------------------------------------ error paths


def test_bad_fcs_counted_and_skipped() -> None:
    good = encode_frame(b"\x81\x02\x01")
    bad = bytearray(encode_frame(b"\x81\x02\x02"))
    bad[-2] ^= 0x01
    decoder = HdlcDecoder()
    assert decoder.feed(good + bytes(bad) + good) == [b"\x81\x02\x01"] * 2
    assert decoder.bad_fcs == 1


@given(payloads, st.integers(0, 10_000), st.integers(1, 255))
def test_any_single_byte_corruption_is_never_returned(payload: bytes, at: int, flip: int) -> None:
    wire = bytearray(encode_frame(payload))
    i = 1 + at % (len(wire) - 2)
    wire[i] ^= flip
    out = HdlcDecoder().feed(bytes(wire) + encode_frame(b"next"))
    # the damaged frame is dropped (FCS, abort or runt), the next one still arrives
    assert out == [b"next"]


def test_garbage_and_repeated_flags_tolerated() -> None:
    decoder = HdlcDecoder()
    stream = b"\x00\x11garbage\x7d" + b"\x7e" * 5 + encode_frame(b"abc") + b"\x7e\x7e"
    assert decoder.feed(stream) == [b"abc"]
    assert decoder.garbage == 10
    assert decoder.bad_fcs == 0


def test_abort_sequence_drops_partial_frame() -> None:
    decoder = HdlcDecoder()
    partial = encode_frame(b"hello")[:-3]
    assert decoder.feed(partial + b"\x7d\x7e" + encode_frame(b"ok")) == [b"ok"]
    assert decoder.aborts == 1
    assert decoder.bad_fcs == 0


def test_runt_frame_counted() -> None:
    decoder = HdlcDecoder()
    assert decoder.feed(b"\x7e\x42\x7e" + encode_frame(b"x")) == [b"x"]
    assert decoder.runts == 1


def test_oversized_frame_dropped_then_resyncs() -> None:
    decoder = HdlcDecoder(max_frame=16)
    assert decoder.feed(encode_frame(bytes(40)) + encode_frame(b"small")) == [b"small"]
    assert decoder.overruns == 1


# ------------------------------------------------------------------ packed integers


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (1337, "b90a"),
        (16383, "ff7f"),
        (16384, "808001"),
        (2**21 - 1, "ffff7f"),
        (2**21, "80808001"),
        (2**32 - 1, "ffffffff0f"),
    ],
)
def test_packed_uint_vectors(value: int, encoded: str) -> None:
    raw = bytes.fromhex(encoded)
    assert encode_packed_uint(value) == raw
    assert decode_packed_uint(raw + b"\xaa") == (value, len(raw))


@given(st.integers(0, 2**32 - 1), st.binary(max_size=3))
def test_packed_uint_round_trip(value: int, prefix: bytes) -> None:
    raw = prefix + encode_packed_uint(value)
    assert decode_packed_uint(raw, len(prefix)) == (value, len(raw) - len(prefix))


def test_packed_uint_errors() -> None:
    with pytest.raises(SpinelError):
        encode_packed_uint(-1)
    with pytest.raises(SpinelError):
        encode_packed_uint(2**32)
    with pytest.raises(SpinelError, match="truncated"):
        decode_packed_uint(b"\x80\x80")
    with pytest.raises(SpinelError, match="32 bits"):
        decode_packed_uint(b"\xff\xff\xff\xff\x7f")


# ------------------------------------------------------------------ header and frames


def test_header_packing() -> None:
    assert pack_header(0) == 0x80
    assert pack_header(1) == 0x81
    assert pack_header(15, 3) == 0xBF
    assert pack_header(5, 2) == 0xA5
    for tid in range(16):
        for iid in range(4):
            assert unpack_header(pack_header(tid, iid)) == (tid, iid)
    for bad_tid, bad_iid in ((16, 0), (-1, 0), (0, 4)):
        with pytest.raises(SpinelError):
            pack_header(bad_tid, bad_iid)


@pytest.mark.parametrize("byte", [0x00, 0x3F, 0x40, 0x7F, 0xC0, 0xFF])
def test_non_header_byte_rejected(byte: int) -> None:
    with pytest.raises(SpinelError, match="not a Spinel header byte"):
        unpack_header(byte)
    with pytest.raises(SpinelError, match="not a Spinel header byte"):
        SpinelFrame.decode(bytes((byte, 0x06, 0x00)))


def test_value_is_frame_decodes() -> None:
    payload = bytes.fromhex("8106010403")  # VALUE_IS PROTOCOL_VERSION 4.3, tid 1
    frame = SpinelFrame.decode(payload)
    assert frame == SpinelFrame(Cmd.PROP_VALUE_IS, Prop.PROTOCOL_VERSION, b"\x04\x03", tid=1)
    assert not frame.unsolicited
    reader = Unpacker(frame.value)
    assert (reader.uint(), reader.uint(), reader.remaining) == (4, 3, 0)
    assert frame.encode() == payload


def test_non_property_commands() -> None:
    reset = SpinelFrame(Cmd.RESET, tid=2)
    assert reset.encode() == b"\x82\x01"
    assert SpinelFrame.decode(b"\x82\x01") == reset
    assert SpinelFrame.decode(b"\x80\x00").unsolicited
    with pytest.raises(SpinelError):
        SpinelFrame(Cmd.PROP_VALUE_GET).encode()
    with pytest.raises(SpinelError):
        SpinelFrame(Cmd.NOOP, prop=1).encode()
    with pytest.raises(SpinelError):
        SpinelFrame.decode(b"")
    with pytest.raises(SpinelError):
        SpinelFrame.decode(b"\x81\x02")  # GET without its property id


def test_property_ids() -> None:
    assert [Prop.LAST_STATUS, Prop.PROTOCOL_VERSION, Prop.NCP_VERSION] == [0, 1, 2]
    assert [Prop.INTERFACE_TYPE, Prop.VENDOR_ID, Prop.CAPS, Prop.HWADDR] == [3, 4, 5, 8]
    assert int(Prop.NET_ROLE) == 0x43
    assert int(Prop.THREAD_CHILD_TABLE) == 0x52
    assert int(Prop.THREAD_NEIGHBOR_TABLE) == 0x150B
    assert int(Prop.THREAD_ROUTER_TABLE) == 0x1517
    assert [int(c) for c in Cmd] == list(range(9))
    # a two-byte property id goes out packed
    get = SpinelFrame(Cmd.PROP_VALUE_GET, Prop.THREAD_NEIGHBOR_TABLE, tid=3).encode()
    assert get == bytes.fromhex("83028b2a")


@given(
    st.integers(0, 15),
    st.integers(0, 3),
    st.integers(2, 8),
    st.integers(0, 2**21 - 1),
    payloads,
)
def test_frame_round_trip_through_hdlc(
    tid: int, iid: int, cmd: int, prop: int, value: bytes
) -> None:
    frame = SpinelFrame(cmd, prop, value, tid=tid, iid=iid)
    (payload,) = HdlcDecoder().feed(encode_frame(frame.encode()))
    assert SpinelFrame.decode(payload) == frame


# ------------------------------------------------------------------ value packing


def test_value_packing() -> None:
    blob = (
        pack_u8(0xAB)
        + pack_u16(0x1234)
        + pack_u32(0xDEADBEEF)
        + pack_uint(300)
        + pack_utf8("OPENTHREAD/1.0 é")
        + pack_eui64(bytes.fromhex("0011223344556677"))
        + pack_data_wlen(b"\x7e\x00")
    )
    assert blob[:7] == bytes.fromhex("ab3412efbeadde")
    r = Unpacker(blob)
    assert r.u8() == 0xAB
    assert r.u16() == 0x1234
    assert r.u32() == 0xDEADBEEF
    assert r.uint() == 300
    assert r.utf8() == "OPENTHREAD/1.0 é"
    assert r.eui64() == bytes.fromhex("0011223344556677")
    assert r.data_wlen() == b"\x7e\x00"
    assert r.remaining == 0
    assert pack_data_wlen(b"ab") == b"\x02\x00ab"


def test_value_packing_errors() -> None:
    with pytest.raises(SpinelError):
        pack_utf8("a\0b")
    with pytest.raises(SpinelError):
        pack_eui64(b"\x00" * 7)
    with pytest.raises(SpinelError, match="NUL"):
        Unpacker(b"abc").utf8()
    with pytest.raises(SpinelError, match="truncated"):
        Unpacker(b"\x05\x00ab").data_wlen()
    with pytest.raises(SpinelError, match="truncated"):
        Unpacker(b"\x01").u16()
