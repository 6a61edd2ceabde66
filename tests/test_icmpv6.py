"""ICMPv6 echo packets: round trips through our codec and agreement with the Linux kernel's
own echo replies (captured on the loopback interface, checksums computed by the kernel)."""

from __future__ import annotations

import socket
import time

import pytest

from bench.radio.icmpv6 import ECHO_REPLY, ECHO_REQUEST, Echo, PacketError, decode_echo

ETH_P_IPV6 = 0x86DD


def test_round_trip_and_reply() -> None:
    request = Echo(ECHO_REQUEST, "fd00:db8:0:1::1", "fd00:db8:0:1::2a", 0xF1E1, 7, b"probe!")
    decoded = decode_echo(request.encode())
    assert decoded == request
    reply = decoded.reply()
    assert (reply.kind, reply.source, reply.destination) == (
        ECHO_REPLY,
        "fd00:db8:0:1::2a",
        "fd00:db8:0:1::1",
    )
    assert decode_echo(reply.encode()).data == b"probe!"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p[:30], "too short"),
        (lambda p: b"\x45" + p[1:], "IP version 4"),
        (lambda p: p[:6] + b"\x11" + p[7:], "next header 17"),
        (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "checksum"),
        (lambda p: p + b"x", "payload length"),
        (lambda p: p[:40] + b"\x87" + p[41:], "is not an echo"),
    ],
)
def test_malformed_packets_are_named(mutate: object, message: str) -> None:
    packet = Echo(ECHO_REQUEST, "::1", "::2", 1, 2, b"abc").encode()
    with pytest.raises(PacketError, match=message):
        decode_echo(mutate(packet))  # type: ignore[operator]


def test_checksums_agree_with_the_kernel() -> None:
    """Ping ::1 through the kernel and decode what crosses lo: the kernel computed those
    checksums, so a wrong pseudo-header or sum here fails decode_echo."""
    try:
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
        sender = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    except PermissionError:
        pytest.skip("needs root (raw sockets)")
    with capture, sender:
        capture.bind(("lo", 0))
        capture.settimeout(0.2)
        identifier = 0x4242
        body = Echo(ECHO_REQUEST, "::1", "::1", identifier, 9, b"fieldrig").encode()[40:]
        sender.sendto(body, ("::1", 0))  # the kernel fills in the checksum
        seen: dict[int, Echo] = {}
        deadline = time.monotonic() + 3
        while len(seen) < 2 and time.monotonic() < deadline:
            try:
                frame = capture.recv(65535)
            except TimeoutError:
                continue
            packet = frame[14:]  # lo carries a zeroed 14-byte Ethernet header
            try:
                echo = decode_echo(packet)
            except PacketError:
                continue
            if echo.identifier == identifier:
                seen[echo.kind] = echo
    assert set(seen) == {ECHO_REQUEST, ECHO_REPLY}
    assert seen[ECHO_REPLY].data == b"fieldrig"
    assert seen[ECHO_REPLY].sequence == 9
