"""IPv6 ICMPv6 echo packets: what a host writes into a border router's STREAM_NET to ping a
meter, and what comes back.

Formats (facts from RFC 8200 section 3 and RFC 4443 sections 2.3 and 4.1): a 40-byte IPv6
header (version 6, traffic class, flow label, payload length, next header 58 for ICMPv6, hop
limit, source, destination), then type (128 echo request, 129 echo reply), code 0, a
checksum over the pseudo-header (source, destination, upper-layer length as 32 bits, three
zero bytes, next header) and the message, identifier, sequence number, data.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from bench.errors import BenchError

ECHO_REQUEST = 128
ECHO_REPLY = 129
NEXT_HEADER_ICMPV6 = 58
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_ECHO_HEADER = struct.Struct("!BBHHH")


class PacketError(BenchError, ValueError):
    """A packet that is not a well-formed IPv6 ICMPv6 echo."""


@dataclass(frozen=True)
class Echo:
    """An ICMPv6 echo request or reply."""

    kind: int
    source: str
    destination: str
    identifier: int
    sequence: int
    data: bytes = b""
    hop_limit: int = 64

    def encode(self) -> bytes:
        """The whole IPv6 packet with a correct checksum."""
        src = ipaddress.IPv6Address(self.source).packed
        dst = ipaddress.IPv6Address(self.destination).packed
        body = _ECHO_HEADER.pack(self.kind, 0, 0, self.identifier, self.sequence & 0xFFFF)
        body += self.data
        checksum = _checksum(src, dst, body)
        body = body[:2] + struct.pack("!H", checksum) + body[4:]
        header = _IPV6_HEADER.pack(6 << 28, len(body), NEXT_HEADER_ICMPV6, self.hop_limit, src, dst)
        return header + body

    def reply(self) -> Echo:
        """The echo reply a node sends back for this request."""
        return Echo(
            ECHO_REPLY, self.destination, self.source, self.identifier, self.sequence, self.data
        )


def _checksum(src: bytes, dst: bytes, message: bytes) -> int:
    pseudo = src + dst + struct.pack("!I3xB", len(message), NEXT_HEADER_ICMPV6)
    data = pseudo + message
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF or 0xFFFF


def decode_echo(packet: bytes) -> Echo:
    """Parse an IPv6 packet carrying an ICMPv6 echo; PacketError names what is wrong."""
    if len(packet) < _IPV6_HEADER.size + _ECHO_HEADER.size:
        raise PacketError(f"packet of {len(packet)} bytes is too short for an ICMPv6 echo")
    first, length, next_header, hop_limit, src, dst = _IPV6_HEADER.unpack_from(packet)
    if first >> 28 != 6:
        raise PacketError(f"IP version {first >> 28}, expected 6")
    if next_header != NEXT_HEADER_ICMPV6:
        raise PacketError(f"next header {next_header}, expected 58 (ICMPv6)")
    body = packet[_IPV6_HEADER.size :]
    if length != len(body):
        raise PacketError(f"payload length field {length} but {len(body)} bytes follow")
    kind, code, checksum, identifier, sequence = _ECHO_HEADER.unpack_from(body)
    if kind not in (ECHO_REQUEST, ECHO_REPLY) or code != 0:
        raise PacketError(f"ICMPv6 type {kind} code {code} is not an echo")
    zeroed = body[:2] + b"\0\0" + body[4:]
    if _checksum(src, dst, zeroed) != checksum:
        raise PacketError("ICMPv6 checksum does not match")
    return Echo(
        kind,
        str(ipaddress.IPv6Address(src)),
        str(ipaddress.IPv6Address(dst)),
        identifier,
        sequence,
        body[_ECHO_HEADER.size :],
        hop_limit,
    )
