"""Spinel frames (the host <-> network co-processor protocol of OpenThread and TI Wi-SUN NCPs).

Sources checked (facts only; the code here is our own):

* OpenThread ``src/ncp/spinel.h`` and ``src/ncp/PROTOCOL.md`` (Spinel protocol 4.3):
  header byte = FLG (bits 7-6, always 0b10) | IID (bits 5-4) | TID (bits 3-0), TID 0 for
  unsolicited frames; ``SPINEL_HEADER_FLAG 0x80``, ``SPINEL_HEADER_IID_SHIFT 4``,
  ``SPINEL_HEADER_TID_MASK 15``. Commands NOOP 0 .. PROP_VALUE_REMOVED 8. Properties
  LAST_STATUS 0, PROTOCOL_VERSION 1 (``ii``), NCP_VERSION 2 (``U``), INTERFACE_TYPE 3,
  VENDOR_ID 4, CAPS 5, INTERFACE_COUNT 6, HWADDR 8 (``E``); NET range begins 0x40
  (NET_ROLE = +3), THREAD range 0x50 (CHILD_TABLE = +2), THREAD_EXT range 0x1500
  (NEIGHBOR_TABLE = +11, ROUTER_TABLE = +23); IPV6 range 0x60 (ML_ADDR = +1, ``6``);
  STREAM_NET 114 (``dD``: U16 length, IPv6
  packet, optional metadata; host writes with PROP_VALUE_SET, packets from the mesh arrive as
  unsolicited PROP_VALUE_IS); counters from CNTR__BEGIN 1280 (TX_PKT_TOTAL +1, TX_PKT_ACKED
  +3, TX_PKT_RETRY +10, TX_ERR_CCA +11, RX_PKT_TOTAL +100, TX_IP_DROPPED +202, all ``L``);
  VENDOR range 15360..16383.
* The mesh tables of a Wi-SUN (RPL) border router have no property in OpenThread's set, so
  fieldrig defines two in the vendor range (documented here, used by our emulator and
  driver; a real NCP needs its vendor's ids mapped in :mod:`bench.radio.spinel_radio`):
  MESH_NEIGHBOURS 15360 = ``A(t(6cS))`` (neighbour address, RSSI dBm, ETX x 128 as RPL
  encodes it) and MESH_ROUTES 15361 = ``A(t(666C))`` (destination, next hop, DAO parent,
  hop count), each struct prefixed by its U16 length (PROTOCOL.md 7.4/7.5). A table of
  thousands of meters does not fit one frame (OpenThread caps frames at 1300 bytes,
  ``SPINEL_FRAME_MAX_SIZE``), so the tables are paged: SET MESH_TABLE_OFFSET 15362 (``S``)
  to the first entry wanted, then GET returns at most one page from there; OFFSET 0 takes a
  fresh snapshot the following pages come from.
* TI Wi-SUN NCP's copy of ``spinel.h`` (same header layout and command numbers;
  ``SPINEL_PROTOCOL_TYPE_WISUN`` = 4, NET_ROLE at NET__BEGIN + 3).
* Packed unsigned integers: EXI-style, 7 bits per byte, least significant group first, bit
  0x80 set on every byte but the last (PROTOCOL.md section 7.2; matches public clients).

Example (checked in the tests): GET PROTOCOL_VERSION, TID 1, IID 0 is the Spinel payload
``81 02 01``, which HDLC-lite frames as ``7E 81 02 01 C5 B2 7E``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from bench.errors import BenchError

HEADER_FLAG = 0x80
HEADER_FLAG_MASK = 0xC0
IID_SHIFT = 4
IID_MASK = 0x30
TID_MASK = 0x0F
#: largest packed uint accepted (spinel.c decodes into a 32-bit unsigned int)
PACKED_UINT_MAX = 0xFFFFFFFF

PROTOCOL_VERSION_MAJOR = 4
PROTOCOL_VERSION_MINOR = 3


class SpinelError(BenchError, ValueError):
    """A Spinel frame or value could not be encoded or decoded; the message says why."""


class Cmd(IntEnum):
    """Spinel command ids (``SPINEL_CMD_*``)."""

    NOOP = 0
    RESET = 1
    PROP_VALUE_GET = 2
    PROP_VALUE_SET = 3
    PROP_VALUE_INSERT = 4
    PROP_VALUE_REMOVE = 5
    PROP_VALUE_IS = 6
    PROP_VALUE_INSERTED = 7
    PROP_VALUE_REMOVED = 8


_NET_BEGIN = 0x40
_THREAD_BEGIN = 0x50
_THREAD_EXT_BEGIN = 0x1500
_IPV6_BEGIN = 0x60
_STREAM_BEGIN = 0x70
_CNTR_BEGIN = 1280
_VENDOR_BEGIN = 15360


class Prop(IntEnum):
    """Spinel property ids a host needs (``SPINEL_PROP_*``)."""

    LAST_STATUS = 0
    PROTOCOL_VERSION = 1
    NCP_VERSION = 2
    INTERFACE_TYPE = 3
    VENDOR_ID = 4
    CAPS = 5
    INTERFACE_COUNT = 6
    HWADDR = 8
    NET_ROLE = _NET_BEGIN + 3
    THREAD_CHILD_TABLE = _THREAD_BEGIN + 2
    THREAD_NEIGHBOR_TABLE = _THREAD_EXT_BEGIN + 11
    THREAD_ROUTER_TABLE = _THREAD_EXT_BEGIN + 23
    IPV6_ML_ADDR = _IPV6_BEGIN + 1
    STREAM_NET = _STREAM_BEGIN + 2
    CNTR_TX_PKT_TOTAL = _CNTR_BEGIN + 1
    CNTR_TX_PKT_ACKED = _CNTR_BEGIN + 3
    CNTR_TX_PKT_RETRY = _CNTR_BEGIN + 10
    CNTR_TX_ERR_CCA = _CNTR_BEGIN + 11
    CNTR_RX_PKT_TOTAL = _CNTR_BEGIN + 100
    CNTR_TX_IP_DROPPED = _CNTR_BEGIN + 202
    MESH_NEIGHBOURS = _VENDOR_BEGIN + 0
    MESH_ROUTES = _VENDOR_BEGIN + 1
    MESH_TABLE_OFFSET = _VENDOR_BEGIN + 2


# ---------------------------------------------------------------- packed unsigned integers


def encode_packed_uint(value: int) -> bytes:
    """Encode ``value`` as a Spinel packed unsigned integer."""
    if not 0 <= value <= PACKED_UINT_MAX:
        raise SpinelError(f"packed uint out of range 0..{PACKED_UINT_MAX}: {value}")
    out = bytearray()
    while True:
        group = value & 0x7F
        value >>= 7
        if value:
            out.append(group | 0x80)
        else:
            out.append(group)
            return bytes(out)


def decode_packed_uint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode a packed uint at ``offset``; return ``(value, bytes_consumed)``."""
    value = 0
    shift = 0
    pos = offset
    while True:
        if pos >= len(data):
            raise SpinelError(f"truncated packed uint at offset {offset}")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    if value > PACKED_UINT_MAX:
        raise SpinelError(f"packed uint at offset {offset} exceeds 32 bits")
    return value, pos - offset


# ---------------------------------------------------------------- header byte


def pack_header(tid: int, iid: int = 0) -> int:
    """The header byte for transaction id ``tid`` (0..15) on interface ``iid`` (0..3)."""
    if not 0 <= tid <= TID_MASK:
        raise SpinelError(f"transaction id must be 0..15, got {tid}")
    if not 0 <= iid <= 3:
        raise SpinelError(f"interface id must be 0..3, got {iid}")
    return HEADER_FLAG | (iid << IID_SHIFT) | tid


def unpack_header(header: int) -> tuple[int, int]:
    """Split a header byte into ``(tid, iid)``; reject bytes whose flag bits are not 0b10."""
    if not 0 <= header <= 0xFF:
        raise SpinelError(f"header must be one byte, got {header}")
    if header & HEADER_FLAG_MASK != HEADER_FLAG:
        raise SpinelError(
            f"not a Spinel header byte: 0x{header:02X} (top two bits must be 0b10, "
            f"got 0b{header >> 6:02b})"
        )
    return header & TID_MASK, (header & IID_MASK) >> IID_SHIFT


# ---------------------------------------------------------------- frames

_PROP_COMMANDS = frozenset(range(Cmd.PROP_VALUE_GET, Cmd.PROP_VALUE_REMOVED + 1))


@dataclass(frozen=True)
class SpinelFrame:
    """One Spinel frame (the payload inside an HDLC-lite frame).

    ``prop`` is present for the PROP_VALUE_* commands (2..8) and ``None`` otherwise; for
    other commands ``value`` holds the raw command payload.
    """

    command: int
    prop: int | None = None
    value: bytes = b""
    tid: int = 0
    iid: int = 0

    @property
    def unsolicited(self) -> bool:
        return self.tid == 0

    def encode(self) -> bytes:
        out = bytearray((pack_header(self.tid, self.iid),))
        out += encode_packed_uint(self.command)
        if self.command in _PROP_COMMANDS:
            if self.prop is None:
                raise SpinelError(f"command {self.command} needs a property id")
            out += encode_packed_uint(self.prop)
        elif self.prop is not None:
            raise SpinelError(f"command {self.command} takes no property id")
        out += self.value
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> SpinelFrame:
        if not payload:
            raise SpinelError("empty Spinel frame")
        tid, iid = unpack_header(payload[0])
        command, n = decode_packed_uint(payload, 1)
        pos = 1 + n
        prop: int | None = None
        if command in _PROP_COMMANDS:
            prop, n = decode_packed_uint(payload, pos)
            pos += n
        return cls(command=command, prop=prop, value=bytes(payload[pos:]), tid=tid, iid=iid)


# ---------------------------------------------------------------- value packing


def pack_u8(value: int) -> bytes:
    """Spinel ``C``."""
    return struct.pack("<B", value)


def pack_i8(value: int) -> bytes:
    """Spinel ``c``."""
    return struct.pack("<b", value)


def pack_u16(value: int) -> bytes:
    """Spinel ``S`` (little endian)."""
    return struct.pack("<H", value)


def pack_u32(value: int) -> bytes:
    """Spinel ``L`` (little endian)."""
    return struct.pack("<I", value)


def pack_uint(value: int) -> bytes:
    """Spinel ``i`` (packed unsigned integer)."""
    return encode_packed_uint(value)


def pack_utf8(text: str) -> bytes:
    """Spinel ``U``: UTF-8, NUL-terminated; the text itself may not contain NUL."""
    if "\0" in text:
        raise SpinelError("a Spinel UTF-8 string cannot contain NUL")
    return text.encode("utf-8") + b"\0"


def pack_eui64(eui: bytes) -> bytes:
    """Spinel ``E``: 8 bytes, as they are."""
    if len(eui) != 8:
        raise SpinelError(f"EUI-64 must be 8 bytes, got {len(eui)}")
    return bytes(eui)


def pack_ipv6(address: bytes) -> bytes:
    """Spinel ``6``: the 16 address bytes."""
    if len(address) != 16:
        raise SpinelError(f"IPv6 address must be 16 bytes, got {len(address)}")
    return bytes(address)


def pack_data_wlen(data: bytes) -> bytes:
    """Spinel ``d``: data prefixed by its length as a little-endian U16."""
    if len(data) > 0xFFFF:
        raise SpinelError(f"data too long for a U16 length prefix: {len(data)}")
    return pack_u16(len(data)) + bytes(data)


class Unpacker:
    """Reads Spinel values off a byte string in order; raises SpinelError when short."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def _take(self, n: int, what: str) -> bytes:
        if self.remaining < n:
            raise SpinelError(f"truncated {what} at offset {self.pos}: need {n} bytes")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self._take(1, "U8")[0]

    def i8(self) -> int:
        value: int = struct.unpack("<b", self._take(1, "I8"))[0]
        return value

    def u16(self) -> int:
        value: int = struct.unpack("<H", self._take(2, "U16"))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("<I", self._take(4, "U32"))[0]
        return value

    def uint(self) -> int:
        value, n = decode_packed_uint(self.data, self.pos)
        self.pos += n
        return value

    def utf8(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise SpinelError(f"UTF-8 string at offset {self.pos} has no NUL terminator")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpinelError(f"invalid UTF-8 in Spinel string: {exc}") from exc

    def eui64(self) -> bytes:
        return self._take(8, "EUI-64")

    def ipv6(self) -> bytes:
        return self._take(16, "IPv6 address")

    def data_wlen(self) -> bytes:
        length = self.u16()
        return self._take(length, "data")

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


class Status(IntEnum):
    """Spinel status codes (``SPINEL_STATUS_*``, the value of ``PROP_LAST_STATUS``)."""

    OK = 0
    FAILURE = 1
    UNIMPLEMENTED = 2
    INVALID_ARGUMENT = 3
    INVALID_STATE = 4
    INVALID_COMMAND = 5
    INVALID_INTERFACE = 6
    INTERNAL_ERROR = 7
    SECURITY_ERROR = 8
    PARSE_ERROR = 9
    IN_PROGRESS = 10
    NOMEM = 11
    BUSY = 12
    PROP_NOT_FOUND = 13
    DROPPED = 14
    EMPTY = 15
    CMD_TOO_BIG = 16
    NO_ACK = 17
    CCA_FAILURE = 18
    ALREADY = 19
    ITEM_NOT_FOUND = 20
    INVALID_COMMAND_FOR_PROP = 21
    RESET_POWER_ON = 112
    RESET_EXTERNAL = 113
    RESET_SOFTWARE = 114
    RESET_FAULT = 115
    RESET_CRASH = 116
    RESET_ASSERT = 117
    RESET_OTHER = 118
    RESET_UNKNOWN = 119
    RESET_WATCHDOG = 120


STATUS_RESET_BEGIN = 112
STATUS_RESET_END = 128  # one past the last reset cause

#: ``SPINEL_PROTOCOL_TYPE_*`` (the value of ``PROP_INTERFACE_TYPE``)
PROTOCOL_TYPE_THREAD = 3
PROTOCOL_TYPE_WISUN = 4
