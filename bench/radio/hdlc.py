"""HDLC-lite framing as used by Spinel NCP/RCP serial links (OpenThread, TI Wi-SUN NCP).

Sources checked (facts only; the code here is our own):

* RFC 1662 "PPP in HDLC-like Framing", section 4 (flag 0x7E, control escape 0x7D with the
  following octet XOR 0x20, abort sequence 0x7D 0x7E) and appendix C.2 (FCS-16: init 0xFFFF,
  reflected polynomial 0x8408, the one's complement is transmitted least significant octet
  first, and a good frame including its FCS leaves 0xF0B8 in the register).
* OpenThread ``src/lib/hdlc`` / ``src/ncp/PROTOCOL.md`` appendix A.1.1 "HDLC-Lite", and
  client code derived from it: bytes escaped on transmit are 0x7E, 0x7D, 0x11 (XON),
  0x13 (XOFF) and 0xF8 (OpenThread's "vendor special"); good-FCS constant 0xF0B8.
* CRC catalogue, CRC-16/IBM-SDLC (alias X-25, CRC-16/ISO-HDLC): check("123456789") = 0x906E,
  residue 0xF0B8.
"""

from __future__ import annotations

FLAG = 0x7E
ESCAPE = 0x7D
ESCAPE_XOR = 0x20
#: bytes escaped on transmit (RFC 1662 requires 0x7E/0x7D; OpenThread adds XON, XOFF, 0xF8)
ESCAPED_BYTES = frozenset({FLAG, ESCAPE, 0x11, 0x13, 0xF8})
FCS_INIT = 0xFFFF
FCS_GOOD = 0xF0B8
FCS_POLY_REFLECTED = 0x8408
#: frames longer than this (unescaped, FCS included) are dropped as runaway garbage
DEFAULT_MAX_FRAME = 4096


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ FCS_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_FCS_TABLE = _make_table()


def fcs16_update(fcs: int, data: bytes) -> int:
    """Run the raw FCS-16 register over ``data`` (no final inversion)."""
    table = _FCS_TABLE
    for byte in data:
        fcs = (fcs >> 8) ^ table[(fcs ^ byte) & 0xFF]
    return fcs


def fcs16(data: bytes) -> int:
    """The FCS-16 value to transmit for ``data`` (register inverted, RFC 1662)."""
    return fcs16_update(FCS_INIT, data) ^ 0xFFFF


def fcs16_check(data_with_fcs: bytes) -> bool:
    """True when ``data_with_fcs`` (payload followed by its FCS, low byte first) is intact."""
    return fcs16_update(FCS_INIT, data_with_fcs) == FCS_GOOD


def _escape(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        if byte in ESCAPED_BYTES:
            out.append(ESCAPE)
            out.append(byte ^ ESCAPE_XOR)
        else:
            out.append(byte)
    return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in one HDLC-lite frame: flag, escaped payload + FCS, flag."""
    fcs = fcs16(payload)
    body = bytes(payload) + bytes((fcs & 0xFF, fcs >> 8))
    return bytes((FLAG,)) + _escape(body) + bytes((FLAG,))


class HdlcDecoder:
    """Incremental HDLC-lite deframer.

    Feed it whatever a serial read returned; it returns every complete frame whose FCS
    checks, with FCS and escapes removed. Frames may be split or merged at any byte.
    Bytes before the first flag are discarded (``garbage`` counts them). Empty frames
    (repeated flags) are ignored. A frame with a bad FCS is dropped and counted in
    ``bad_fcs``; one too short to hold an FCS in ``runts``; an RFC 1662 abort (0x7D 0x7E)
    in ``aborts``; one longer than ``max_frame`` in ``overruns``.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.bad_fcs = 0
        self.runts = 0
        self.aborts = 0
        self.overruns = 0
        self.garbage = 0
        self.frames = 0
        self._buf = bytearray()
        self._synced = False
        self._escaped = False
        self._overrun = False

    def reset(self) -> None:
        """Forget any partial frame and wait for the next flag (counters are kept)."""
        self._buf.clear()
        self._synced = False
        self._escaped = False
        self._overrun = False

    def _end_frame(self, out: list[bytes]) -> None:
        buf = self._buf
        if self._escaped:
            self.aborts += 1
        elif self._overrun:
            self.overruns += 1
        elif not buf:
            pass  # back-to-back flags: inter-frame fill, not an error
        elif len(buf) < 2:
            self.runts += 1
        elif fcs16_check(bytes(buf)):
            self.frames += 1
            out.append(bytes(buf[:-2]))
        else:
            self.bad_fcs += 1
        buf.clear()
        self._escaped = False
        self._overrun = False

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the payloads of the frames it completed, in order."""
        out: list[bytes] = []
        for byte in data:
            if byte == FLAG:
                if self._synced:
                    self._end_frame(out)
                else:
                    self._synced = True
                continue
            if not self._synced:
                self.garbage += 1
                continue
            if self._escaped:
                byte ^= ESCAPE_XOR
                self._escaped = False
            elif byte == ESCAPE:
                self._escaped = True
                continue
            if self._overrun:
                continue
            if len(self._buf) >= self.max_frame:
                self._overrun = True
                self._buf.clear()
                continue
            self._buf.append(byte)
        return out
