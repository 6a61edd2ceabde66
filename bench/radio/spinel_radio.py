"""The radio capability over a Spinel NCP (mesh border router): identity, role and counters,
the RPL tables, and ICMPv6 echo probes written into STREAM_NET.

Probes are real IPv6 packets: the host writes an echo request to the meter's address with
PROP_VALUE_SET STREAM_NET (answered LAST_STATUS OK once the NCP took it), the meter's echo
reply arrives as an unsolicited PROP_VALUE_IS STREAM_NET, timestamped the moment its frame
is decoded.
"""

from __future__ import annotations

import collections
import ipaddress
import time

from bench.radio.capability import (
    DongleIdentity,
    DongleState,
    MeshNeighbour,
    MeshRoute,
    ProbeEcho,
    Topology,
)
from bench.radio.icmpv6 import ECHO_REPLY, ECHO_REQUEST, Echo, PacketError, decode_echo
from bench.radio.spinel import (
    PROTOCOL_TYPE_THREAD,
    PROTOCOL_TYPE_WISUN,
    Cmd,
    Prop,
    SpinelError,
    SpinelFrame,
    Unpacker,
    pack_data_wlen,
    pack_u16,
)
from bench.radio.spinel_driver import SpinelDriver
from bench.radio.spinel_mesh import PAGE_ENTRIES, decode_neighbours, decode_routes
from bench.transport.serial import SerialPort

#: NET_ROLE values (OpenThread ``SPINEL_NET_ROLE_*``); our emulated border router, the
#: root of its network, reports LEADER.
ROLE_NAMES = {0: "detached", 1: "child", 2: "router", 3: "leader"}
_PROTOCOLS = {PROTOCOL_TYPE_THREAD: "thread", PROTOCOL_TYPE_WISUN: "wisun"}
_COUNTERS = {
    "tx_total": Prop.CNTR_TX_PKT_TOTAL,
    "tx_acked": Prop.CNTR_TX_PKT_ACKED,
    "tx_retry": Prop.CNTR_TX_PKT_RETRY,
    "tx_err_cca": Prop.CNTR_TX_ERR_CCA,
    "rx_total": Prop.CNTR_RX_PKT_TOTAL,
    "tx_ip_dropped": Prop.CNTR_TX_IP_DROPPED,
}
#: ICMPv6 echo identifier of fieldrig probes (any 16-bit value; echoes carrying another
#: identifier are someone else's and are ignored)
PROBE_IDENTIFIER = 0xF1E1
_ECHOES_KEPT = 65536


class SpinelRadio:
    """A Spinel border-router dongle behind ``port`` as a :class:`~bench.radio.capability.Radio`."""

    driver_name = "spinel"

    def __init__(self, port: SerialPort, *, timeout_s: float = 1.0) -> None:
        self.driver = SpinelDriver(port)
        self.timeout_s = timeout_s
        self.unparsable_packets = 0
        self._echoes: collections.deque[ProbeEcho] = collections.deque(maxlen=_ECHOES_KEPT)
        self._local: str | None = None
        self._outstanding: dict[tuple[str, int], int] = {}  # (meter, 16-bit seq) -> seq
        self.driver.on_unsolicited = self._on_unsolicited

    @property
    def label(self) -> str:
        return self.driver.port.label

    def _on_unsolicited(self, frame: SpinelFrame, received_ns: int) -> None:
        if frame.command != Cmd.PROP_VALUE_IS or frame.prop != Prop.STREAM_NET:
            return
        try:
            packet = Unpacker(frame.value).data_wlen()
            echo = decode_echo(packet)
        except (SpinelError, PacketError):
            self.unparsable_packets += 1
            return
        if echo.kind != ECHO_REPLY or echo.identifier != PROBE_IDENTIFIER:
            return
        seq = self._outstanding.pop((echo.source, echo.sequence), None)
        if seq is not None:
            self._echoes.append(ProbeEcho(echo.source, seq, received_ns))

    def _drop_stream_frames(self) -> None:
        """STREAM_NET notifications were consumed by the listener; keep the queue short."""
        kept = [f for f in self.driver.unsolicited if f.prop != Prop.STREAM_NET]
        self.driver.unsolicited.clear()
        self.driver.unsolicited.extend(kept)

    def identify(self) -> DongleIdentity:
        ident = self.driver.identify(self.timeout_s)
        major, minor = ident["protocol_version"]
        kind = _PROTOCOLS.get(ident["interface_type"], f"type {ident['interface_type']}")
        return DongleIdentity(
            driver=self.driver_name,
            firmware=ident["ncp_version"],
            hwaddr=ident["hwaddr"].replace(":", ""),
            protocol=f"spinel {major}.{minor} {kind}",
        )

    def local_address(self) -> str:
        """The NCP's mesh-local address (the source of our probes)."""
        if self._local is None:
            raw = Unpacker(self.driver.get(Prop.IPV6_ML_ADDR, self.timeout_s)).ipv6()
            self._local = str(ipaddress.IPv6Address(raw))
        return self._local

    def state(self) -> DongleState:
        role_value = Unpacker(self.driver.get(Prop.NET_ROLE, self.timeout_s)).u8()
        counters = {
            name: Unpacker(self.driver.get(prop, self.timeout_s)).u32()
            for name, prop in _COUNTERS.items()
        }
        counters["host_bad_frames"] = self.driver.bad_frames
        counters["host_unparsable_packets"] = self.unparsable_packets
        self._drop_stream_frames()
        role = ROLE_NAMES.get(role_value, f"role {role_value}")
        return DongleState(role=role, joined=role_value != 0, counters=counters)

    def topology(self) -> Topology:
        """Both tables, page by page from one snapshot (OFFSET 0 takes it)."""
        neighbours: list[MeshNeighbour] = []
        routes: list[MeshRoute] = []
        more_neighbours = more_routes = True
        offset = 0
        while more_neighbours or more_routes:
            self.driver.set(Prop.MESH_TABLE_OFFSET, pack_u16(offset), self.timeout_s)
            if more_neighbours:
                page_n = decode_neighbours(self.driver.get(Prop.MESH_NEIGHBOURS, self.timeout_s))
                neighbours += page_n
                more_neighbours = len(page_n) == PAGE_ENTRIES
            if more_routes:
                page_r = decode_routes(self.driver.get(Prop.MESH_ROUTES, self.timeout_s))
                routes += page_r
                more_routes = len(page_r) == PAGE_ENTRIES
            offset += PAGE_ENTRIES
        self._drop_stream_frames()
        return Topology(neighbours=neighbours, routes=routes)

    def send_probe(self, destination: str, seq: int, payload_len: int = 32) -> int:
        request = Echo(
            ECHO_REQUEST,
            self.local_address(),
            destination,
            PROBE_IDENTIFIER,
            seq & 0xFFFF,
            bytes(i & 0xFF for i in range(payload_len)),
        )
        # The echo carries 16 bits of the sequence number; the newest probe with them wins.
        meter = str(ipaddress.IPv6Address(destination))
        self._outstanding[(meter, request.sequence)] = seq
        if len(self._outstanding) > _ECHOES_KEPT:
            self._outstanding.pop(next(iter(self._outstanding)))
        sent_ns = time.monotonic_ns()
        self.driver.set(Prop.STREAM_NET, pack_data_wlen(request.encode()), self.timeout_s)
        return sent_ns

    def collect(self, timeout_s: float) -> list[ProbeEcho]:
        if not self._echoes:
            deadline = time.monotonic() + timeout_s
            while not self._echoes and time.monotonic() < deadline:
                self.driver.poll(0)
        out = list(self._echoes)
        self._echoes.clear()
        self._drop_stream_frames()
        return out

    def close(self) -> None:
        self.driver.port.close()
