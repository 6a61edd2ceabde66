"""Values of fieldrig's two vendor-range Spinel properties for an RPL border router's tables.

MESH_NEIGHBOURS = ``A(t(6cS))``: neighbour address, RSSI (dBm, int8), ETX x 128 (U16, the
fixed point RPL uses for ETX, RFC 6551 section 4.3.2), MESH_ROUTES = ``A(t(666C))``:
destination, first hop, DAO parent, hop count. In an array each struct is preceded by its
length as a U16 (Spinel ``A(t(...))``, PROTOCOL.md 7.4 / 7.5).
"""

from __future__ import annotations

import ipaddress
import math

from bench.radio.capability import MeshNeighbour, MeshRoute
from bench.radio.spinel import (
    SpinelError,
    Unpacker,
    pack_data_wlen,
    pack_i8,
    pack_ipv6,
    pack_u8,
    pack_u16,
)

ETX_SCALE = 128
#: entries per GET page of either table, so a frame stays under SPINEL_FRAME_MAX_SIZE (1300
#: bytes): a route entry is 2 + 49 bytes, a neighbour entry 2 + 19
PAGE_ENTRIES = 24
_UNKNOWN_ETX = 0xFFFF


def _addr(text: str) -> bytes:
    return pack_ipv6(ipaddress.IPv6Address(text).packed)


def _text(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))


def encode_neighbours(neighbours: list[MeshNeighbour]) -> bytes:
    out = bytearray()
    for n in neighbours:
        rssi = -128 if n.rssi_dbm is None else max(-127, min(127, round(n.rssi_dbm)))
        etx = _UNKNOWN_ETX if n.etx is None else min(_UNKNOWN_ETX - 1, round(n.etx * ETX_SCALE))
        out += pack_data_wlen(_addr(n.address) + pack_i8(rssi) + pack_u16(etx))
    return bytes(out)


def decode_neighbours(value: bytes) -> list[MeshNeighbour]:
    items = Unpacker(value)
    out: list[MeshNeighbour] = []
    while items.remaining:
        entry = Unpacker(items.data_wlen())
        address, rssi, etx = _text(entry.ipv6()), entry.i8(), entry.u16()
        out.append(
            MeshNeighbour(
                address,
                None if rssi == -128 else float(rssi),
                None if etx == _UNKNOWN_ETX else etx / ETX_SCALE,
            )
        )
    return out


def encode_routes(routes: list[MeshRoute]) -> bytes:
    out = bytearray()
    for r in routes:
        if not 0 < r.hops < 256:
            raise SpinelError(f"hop count {r.hops} does not fit a route entry (1..255)")
        body = _addr(r.destination) + _addr(r.next_hop) + _addr(r.parent) + pack_u8(r.hops)
        out += pack_data_wlen(body)
    return bytes(out)


def decode_routes(value: bytes) -> list[MeshRoute]:
    items = Unpacker(value)
    out: list[MeshRoute] = []
    while items.remaining:
        entry = Unpacker(items.data_wlen())
        destination, next_hop, parent = (_text(entry.ipv6()) for _ in range(3))
        out.append(MeshRoute(destination, next_hop, parent, entry.u8()))
    return out


def etx_or_none(value: float) -> float | None:
    """ETX as a neighbour entry carries it: None for an unusable (infinite) link."""
    return None if math.isinf(value) else value
