"""What a SKSTACK-IP dongle sends, cut into text lines and ``ERXUDP`` datagrams.

Every answer and event is an ASCII line ending CRLF except the data field of ``ERXUDP``,
whose display format is a stored option of the dongle: ``ROPT`` reads it (``OK 00`` raw
bytes, ``OK 01`` hex text), ``WOPT`` writes it to flash. Sources: smdn/Smdn.Net.SkStackIP
(``SkStackERXUDPDataFormat``: raw binary or hexadecimal text, "BP35A1 command reference
3.30 WOPT"; ``SkStackEventParser.TryExpectERXUDP`` reads datalen bytes, or 2 x datalen
characters for hex text, then CRLF); public BP35A1 set-up notes (``OK 00`` is the factory
default, the option lives in flash so ``WOPT 01`` is written only when ``ROPT`` says 00, and
it affects only ERXUDP / ERXTCP); notes of a BP35C0-based RS-WSUHA-P client (the same
``ROPT`` -> ``OK 00``, ``WOPT 01``, ``ROPT`` -> ``OK 01`` exchange; its hardware spec limits
flash writes to 10,000) and a client of the Tessera RL7023 Stick-D/IPS (hex text only, so
``ROPT`` answers ``FAIL ER04``).

Raw data may hold CR, LF or text such as ``OK`` or ``ERXUDP``, so an ERXUDP line is not cut
at its first LF: :class:`SkstackStream` reads the header up to the datalen field and then
takes the data in whichever shape the bytes have:

- hex: the rest of the line, up to its first LF, is exactly 2 x datalen hex digits (+ CR);
- raw: datalen bytes followed by CRLF.

The shapes cannot be confused: raw data and its CRLF come to at most datalen + 2 bytes
before their first LF, hex text to 2 x datalen + 2; and where raw data has its CR (offset
datalen) hex text has a digit. So both are read whatever the option says. With ``hex_only``
(the dongle said ``ROPT`` 01 or has no ``ROPT``) a line decides at its first LF and is never
waited on for raw bytes. A header that breaks off, a datalen above 0x4D0 and data in neither
shape are handed on as the text line up to the first LF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ERXUDP_HEAD = b"ERXUDP "
MAX_DATALEN = 0x04D0
_HEX = re.compile(rb"[0-9A-Fa-f]*")
_TEXT: Literal[False] = False  # "not a datagram after all: hand on the text line"


@dataclass(frozen=True)
class RawErxudp:
    """One ``ERXUDP``: the header words between ``ERXUDP`` and datalen, and the data."""

    fields: tuple[str, ...]
    data: bytes
    binary: bool
    """True when the data came as raw bytes (ROPT 00), False for hex text (ROPT 01)."""


class SkstackStream:
    """An incremental reader: ``feed()`` bytes, take items with ``next()`` until None."""

    def __init__(self, header_fields: int) -> None:
        self.header_fields = header_fields
        """Words between ``ERXUDP`` and datalen: 6, or 7 with the BP35C0 ``<side>``."""
        self.hex_only = False
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete item."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()

    def next(self) -> str | RawErxudp | None:
        """The next complete line (without CR/LF) or datagram; None until one is complete."""
        if self._buf.startswith(ERXUDP_HEAD):
            item = self._erxudp()
            if item is not _TEXT:
                return item
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buf[:end]).rstrip(b"\r")
        del self._buf[: end + 1]
        return line.decode(errors="replace")

    def _erxudp(self) -> RawErxudp | Literal[False] | None:
        buf = self._buf
        words: list[str] = []
        pos = len(ERXUDP_HEAD)
        for _ in range(self.header_fields + 1):  # the header words, then datalen
            space, eol = buf.find(b" ", pos), buf.find(b"\n", pos)
            if eol >= 0 and (space < 0 or eol < space):
                return _TEXT  # the line ended inside the header
            if space < 0:
                return None
            words.append(buf[pos:space].decode(errors="replace"))
            pos = space + 1
        try:
            datalen = int(words.pop(), 16)
        except ValueError:
            datalen = -1
        eol = buf.find(b"\n", pos)
        if not 0 <= datalen <= MAX_DATALEN:
            return _TEXT if eol >= 0 else None
        fields = tuple(words)
        if eol >= 0:
            text = bytes(buf[pos:eol])
            text = text[:-1] if text.endswith(b"\r") else text
            if len(text) == 2 * datalen and _HEX.fullmatch(text):
                del buf[: eol + 1]
                return RawErxudp(fields, bytes.fromhex(text.decode()), binary=False)
            if self.hex_only:
                return _TEXT
        end = pos + datalen
        if len(buf) < end + 2:
            return None
        if buf[end : end + 2] == b"\r\n":
            data = bytes(buf[pos:end])
            del buf[: end + 2]
            return RawErxudp(fields, data, binary=True)
        return _TEXT if eol >= 0 else None
