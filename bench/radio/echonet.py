"""ECHONET Lite frames: what a Route-B smart meter speaks over UDP port 3610.

A minimal codec for the specified message format (format 1) and a meter that answers it.
Facts from the ECHONET Lite specification (Part II, chapter 3 "Frame format") and its
Appendix "Detailed Requirements for ECHONET Device objects", as used by public Route-B
clients (e.g. smdn/Smdn.Net.EchonetLite, the uecho-rs ``echonet`` crate):

- a frame is ``EHD1 EHD2 TID SEOJ DEOJ ESV OPC (EPC PDC EDT)*``: EHD1 0x10 (ECHONET Lite),
  EHD2 0x81 (format 1), TID 2 bytes big endian, SEOJ/DEOJ 3 bytes each (class group, class,
  instance), ESV 1 byte, OPC the number of properties, then per property EPC (1 byte), PDC
  (the EDT length, 1 byte) and PDC bytes of EDT; a Get carries PDC 0 and no EDT;
- ESV Get 0x62, Get_Res 0x72, Get_SNA 0x52 (the "not possible" answer: properties the node
  cannot give come back with PDC 0, the others with their values); SetGet (0x6E/0x7E/0x5E)
  has two property lists and is not supported here;
- objects: controller 0x05FF01, low-voltage smart electric energy meter class 0x0288
  (instance 0x01; instance 0x00 addresses every instance of the class);
- EPC 0x80 operation status (1 byte: 0x30 ON, 0x31 OFF), EPC 0xE7 measured instantaneous
  electric power (4 bytes, signed big endian, in W).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from bench.errors import BenchError

EHD = 0x1081
ECHONET_PORT = 3610
"""UDP port of ECHONET Lite (0x0E1A)."""

EPC_OPERATION_STATUS = 0x80
EPC_INSTANTANEOUS_POWER = 0xE7
OPERATION_ON = 0x30
OPERATION_OFF = 0x31

_HEADER = struct.Struct(">HH3s3sBB")  # EHD, TID, SEOJ, DEOJ, ESV, OPC
_SETGET = frozenset({0x6E, 0x7E, 0x5E})


class EchonetError(BenchError):
    """A frame is malformed or a value cannot be encoded (one line: what and where)."""


class Esv(IntEnum):
    """The ECHONET Lite services this codec names (others decode as plain ints)."""

    GET_SNA = 0x52
    GET = 0x62
    GET_RES = 0x72


@dataclass(frozen=True)
class Eoj:
    """An ECHONET object: class group code, class code, instance code."""

    group: int
    cls: int
    instance: int

    def __post_init__(self) -> None:
        for name in ("group", "cls", "instance"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise EchonetError(f"EOJ {name} must be 0..255, got {value}")

    def encode(self) -> bytes:
        return bytes((self.group, self.cls, self.instance))

    @classmethod
    def decode(cls, data: bytes) -> Eoj:
        return cls(data[0], data[1], data[2])

    def same_class(self, other: Eoj) -> bool:
        return (self.group, self.cls) == (other.group, other.cls)

    def __str__(self) -> str:
        return f"{self.group:02X}{self.cls:02X}{self.instance:02X}"


CONTROLLER = Eoj(0x05, 0xFF, 0x01)
SMART_METER = Eoj(0x02, 0x88, 0x01)


@dataclass(frozen=True)
class Property:
    """One EPC with its EDT (empty in a Get request or a refused property)."""

    epc: int
    edt: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.epc <= 0xFF:
            raise EchonetError(f"EPC must be 0..255, got {self.epc}")
        if len(self.edt) > 0xFF:
            raise EchonetError(f"EDT of EPC 0x{self.epc:02X} is {len(self.edt)} bytes; max 255")


@dataclass(frozen=True)
class Frame:
    """An ECHONET Lite format-1 frame."""

    tid: int
    seoj: Eoj
    deoj: Eoj
    esv: int
    properties: tuple[Property, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 0 <= self.tid <= 0xFFFF:
            raise EchonetError(f"TID must be 0..65535, got {self.tid}")
        if not 0 <= self.esv <= 0xFF:
            raise EchonetError(f"ESV must be 0..255, got {self.esv}")
        if self.esv in _SETGET:
            raise EchonetError(f"ESV 0x{self.esv:02X} (SetGet family) is not supported")
        if len(self.properties) > 0xFF:
            raise EchonetError(f"OPC must be at most 255, got {len(self.properties)} properties")

    def encode(self) -> bytes:
        out = bytearray(
            _HEADER.pack(
                EHD,
                self.tid,
                self.seoj.encode(),
                self.deoj.encode(),
                self.esv,
                len(self.properties),
            )
        )
        for prop in self.properties:
            out += bytes((prop.epc, len(prop.edt))) + prop.edt
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        """Parse one whole UDP payload; ``EchonetError`` says what is wrong and at which byte."""
        if len(data) < _HEADER.size:
            raise EchonetError(
                f"ECHONET Lite frame too short: {len(data)} bytes, the header needs {_HEADER.size}"
            )
        ehd, tid, seoj, deoj, esv, opc = _HEADER.unpack_from(data)
        if ehd != EHD:
            raise EchonetError(f"not an ECHONET Lite format-1 frame: EHD 0x{ehd:04X}, want 0x1081")
        if esv in _SETGET:
            raise EchonetError(f"ESV 0x{esv:02X} (SetGet family) is not supported")
        pos = _HEADER.size
        props: list[Property] = []
        for index in range(opc):
            if pos + 2 > len(data):
                raise EchonetError(
                    f"ECHONET Lite frame truncated in property {index + 1} of {opc} "
                    f"at byte {pos} (length {len(data)})"
                )
            epc, pdc = data[pos], data[pos + 1]
            pos += 2
            if pos + pdc > len(data):
                raise EchonetError(
                    f"ECHONET Lite frame truncated: EPC 0x{epc:02X} has PDC {pdc} but only "
                    f"{len(data) - pos} bytes follow"
                )
            props.append(Property(epc, bytes(data[pos : pos + pdc])))
            pos += pdc
        if pos != len(data):
            raise EchonetError(
                f"ECHONET Lite frame has {len(data) - pos} trailing bytes after {opc} properties"
            )
        return cls(tid, Eoj.decode(seoj), Eoj.decode(deoj), esv, tuple(props))

    def get(self, epc: int) -> bytes | None:
        """The EDT of ``epc`` (None when the frame does not carry it)."""
        for prop in self.properties:
            if prop.epc == epc:
                return prop.edt
        return None


def get_request(
    tid: int,
    epcs: Sequence[int],
    *,
    deoj: Eoj = SMART_METER,
    seoj: Eoj = CONTROLLER,
) -> Frame:
    """A Get (ESV 0x62) for ``epcs``, each with PDC 0."""
    if not epcs:
        raise EchonetError("a Get needs at least one EPC")
    return Frame(tid, seoj, deoj, Esv.GET, tuple(Property(epc) for epc in epcs))


def decode_power_w(edt: bytes) -> int:
    """EPC 0xE7: signed 32-bit big endian watts."""
    if len(edt) != 4:
        raise EchonetError(f"EPC 0xE7 needs 4 bytes of EDT, got {len(edt)}")
    value: int = struct.unpack(">i", edt)[0]
    return value


@dataclass(frozen=True)
class SmartMeter:
    """A low-voltage smart meter answering Get on UDP 3610; usable as an emulator responder.

    Answers Get for EPC 0x80 and 0xE7 with Get_Res; a Get that includes any other EPC gets
    Get_SNA (that EPC with PDC 0). Anything that is not a well-formed Get to class 0x0288
    (instance 1 or 0) on port 3610 is ignored, as a meter would.
    """

    power_w: int = 1200
    operating: bool = True
    eoj: Eoj = SMART_METER

    def values(self) -> dict[int, bytes]:
        return {
            EPC_OPERATION_STATUS: bytes((OPERATION_ON if self.operating else OPERATION_OFF,)),
            EPC_INSTANTANEOUS_POWER: struct.pack(">i", self.power_w),
        }

    def answer(self, request: Frame) -> Frame | None:
        if request.esv != Esv.GET or not request.properties:
            return None
        if not request.deoj.same_class(self.eoj) or request.deoj.instance not in (
            0,
            self.eoj.instance,
        ):
            return None
        values = self.values()
        props = tuple(Property(p.epc, values.get(p.epc, b"")) for p in request.properties)
        esv = Esv.GET_RES if all(p.epc in values for p in request.properties) else Esv.GET_SNA
        return Frame(request.tid, self.eoj, request.seoj, esv, props)

    def __call__(self, port: int, data: bytes) -> bytes | None:
        if port != ECHONET_PORT:
            return None
        try:
            request = Frame.decode(data)
        except EchonetError:
            return None
        reply = self.answer(request)
        return None if reply is None else reply.encode()
