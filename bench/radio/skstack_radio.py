"""``SkstackRadio``: a SKSTACK-IP Route-B dongle as a :class:`bench.radio.capability.Radio`.

A Route-B dongle talks to exactly one smart meter through a PANA session, so its "mesh" is
one neighbour reached in one hop. A probe is an ECHONET Lite Get of EPC 0x80 (operation
status) sent with SKSENDTO to UDP 3610 of the meter, with TID = ``seq & 0xFFFF``; the echo is
the meter's Get_Res (or Get_SNA) carrying the same TID, decoded from ERXUDP. The Get frame is
always 14 bytes: ``payload_len`` is ignored, because a meter drops a frame with trailing
bytes. ``send_probe`` waits for the dongle's ``EVENT 21`` (the end of the local transmission,
not the meter's answer); a failed send (``EVENT 21 .. 01``, also while the ARIB transmit-time
limit is active) is counted, the probe is then simply lost.

Opened for a rig (:func:`bench.radio.registry.open_radio`) it is joined at once with the
rig's ``route_b`` settings; ``join(known=...)`` rejoins a meter found before without a scan.
Its first use asks ``ROPT`` how the dongle shows ERXUDP data (raw bytes or hex: both are
read); ``write_ascii_option=True`` switches a binary one to hex with one ``WOPT 01`` (a flash
write, so off by default).

Counters in ``state()``: ``probes_sent``, ``send_failures``, ``echoes``, ``stray_echoes``
(no probe with that TID outstanding), ``session_expiries`` (EVENT 29), ``session_ends``
(EVENT 26/27/28), ``transmit_limit_on`` / ``transmit_limit_off`` (EVENT 32 / 33) and
``transmit_limited`` (1 while the limit is active).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from bench.errors import BenchError
from bench.radio.capability import (
    DongleIdentity,
    DongleState,
    MeshNeighbour,
    MeshRoute,
    ProbeEcho,
    Topology,
)
from bench.radio.echonet import (
    CONTROLLER,
    ECHONET_PORT,
    EPC_OPERATION_STATUS,
    SMART_METER,
    EchonetError,
    Eoj,
    Esv,
    Frame,
    get_request,
)
from bench.radio.skstack_driver import (
    Dialect,
    PanDescriptor,
    SkEvent,
    SkstackDriver,
    SkstackError,
    UdpDatagram,
)
from bench.transport.serial import SerialPort

_POLL_S = 0.05
# Events the driver already folded into its state and counters. Nothing waits for them
# between commands, and a stale EVENT 21 must not be taken for the next send's outcome.
_STATE_ONLY = frozenset({0x21, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x32, 0x33})


class SkstackRadioError(BenchError):
    """Setting up the Route-B link failed or the radio was used before it was set up."""


@dataclass(frozen=True)
class MeterLink:
    """The smart meter this dongle joined."""

    ipv6: str
    mac: str
    channel: int
    pan_id: int
    lqi: int

    @property
    def rssi_dbm(self) -> float:
        return 0.275 * self.lqi - 104.27


class SkstackRadio:
    """A Route-B dongle as a ``Radio``; it owns ``port`` and closes it in ``close()``."""

    driver_name = "skstack"

    def __init__(
        self,
        port: SerialPort,
        *,
        dialect: Dialect = "bp35a1",
        side: int = 0,
        meter_eoj: Eoj = SMART_METER,
        handle: int = 1,
        sec: int = 1,
        send_timeout_s: float = 5.0,
        write_ascii_option: bool = False,
    ) -> None:
        self.driver = SkstackDriver(
            port, dialect=dialect, side=side, write_ascii_option=write_ascii_option
        )
        self.meter_eoj = meter_eoj
        self.handle = handle
        self.sec = sec
        self.send_timeout_s = send_timeout_s
        self.meter: MeterLink | None = None
        self._local: str | None = None
        self._outstanding: dict[int, int] = {}  # TID -> seq of the latest probe with it
        self._counts: dict[str, int] = dict.fromkeys(
            ("probes_sent", "send_failures", "echoes", "stray_echoes"), 0
        )

    @classmethod
    def open(
        cls,
        url: str,
        *,
        baudrate: int = 115200,
        name: str = "",
        dialect: Dialect = "bp35a1",
        reopen_deadline_s: float = 10.0,
        write_ascii_option: bool = False,
    ) -> SkstackRadio:
        """Open the serial ``url`` and wrap it."""
        port = SerialPort(url, baudrate=baudrate, name=name, reopen_deadline_s=reopen_deadline_s)
        port.open()
        return cls(port, dialect=dialect, write_ascii_option=write_ascii_option)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def label(self) -> str:
        return self.driver.port.label

    def _ready(self) -> SkstackDriver:
        """The driver, with the port reopened if a lost device closed it (one-line error
        when it is still gone) and, on first use, the ERXUDP data format asked (ROPT)."""
        if not self.driver.port.is_open:
            self.driver.port.open()
        self.driver.ensure_data_format()
        return self.driver

    # -- Radio -----------------------------------------------------------------------------

    def identify(self) -> DongleIdentity:
        """SKVER + SKINFO."""
        firmware = self._ready().version()
        info = self.driver.info()
        return DongleIdentity(
            driver=self.driver_name,
            firmware=firmware,
            hwaddr=info.mac.lower(),
            protocol=f"skstack {self.driver.dialect}",
        )

    def _sweep(self) -> None:
        """Drop queued events whose meaning the driver's state and counters already hold."""
        stale = [
            item
            for item in self.driver.events
            if isinstance(item, SkEvent) and item.code in _STATE_ONLY
        ]
        for item in stale:
            self.driver.events.remove(item)

    def local_address(self) -> str:
        """The dongle's own link-local address (SKINFO, asked once)."""
        if self._local is None:
            self._local = self._ready().info().ipv6.upper()
        return self._local

    def state(self) -> DongleState:
        """``joined`` while the PANA session holds, ``detached`` otherwise; see the counters."""
        self._ready().poll(0.0)
        self._sweep()
        stats = self.driver.stats
        counters = dict(self._counts)
        counters.update(
            session_expiries=stats["session_expired"],
            session_ends=stats["session_terminated"],
            transmit_limit_on=stats["transmit_limit_on"],
            transmit_limit_off=stats["transmit_limit_off"],
            transmit_limited=int(self.driver.transmit_limited),
        )
        joined = self.driver.session_peer is not None
        return DongleState(
            role="joined" if joined else "detached", joined=joined, counters=counters
        )

    def topology(self) -> Topology:
        """The meter of the PANA session as one neighbour and a one-hop route; empty otherwise."""
        self._ready().poll(0.0)
        self._sweep()
        peer = self.driver.session_peer
        if peer is None or self.meter is None or self.meter.ipv6 != peer:
            return Topology(neighbours=[], routes=[])
        return Topology(
            neighbours=[MeshNeighbour(peer, self.meter.rssi_dbm, None)],
            routes=[
                MeshRoute(destination=peer, next_hop=peer, parent=self.local_address(), hops=1)
            ],
        )

    def send_probe(self, destination: str, seq: int, payload_len: int = 32) -> int:
        """ECHONET Lite Get of EPC 0x80 with TID ``seq & 0xFFFF`` (``payload_len`` ignored)."""
        if seq < 0:
            raise SkstackRadioError(f"{self.label}: probe seq must be >= 0, got {seq}")
        if self.meter is None:
            raise SkstackRadioError(
                f"{self.label}: no smart meter joined yet; call join() before send_probe()"
            )
        tid = seq & 0xFFFF
        frame = get_request(tid, [EPC_OPERATION_STATUS], deoj=self.meter_eoj, seoj=CONTROLLER)
        self._outstanding[tid] = seq
        self._counts["probes_sent"] += 1
        sent_ns = time.monotonic_ns()
        delivered = self._ready().send_udp(
            destination,
            ECHONET_PORT,
            frame.encode(),
            self.send_timeout_s,
            handle=self.handle,
            sec=self.sec,
        )
        if not delivered:
            self._counts["send_failures"] += 1
        return sent_ns

    def _echo(self, datagram: UdpDatagram) -> ProbeEcho | None:
        if datagram.rport != ECHONET_PORT:
            return None
        try:
            frame = Frame.decode(datagram.data)
        except EchonetError:
            self._counts["stray_echoes"] += 1
            return None
        seq = self._outstanding.pop(frame.tid, None)
        if frame.esv not in (Esv.GET_RES, Esv.GET_SNA) or seq is None:
            self._counts["stray_echoes"] += 1
            return None
        self._counts["echoes"] += 1
        return ProbeEcho(source=datagram.sender, seq=seq, received_ns=datagram.received_ns)

    def _take_echoes(self) -> list[ProbeEcho]:
        echoes: list[ProbeEcho] = []
        datagrams = [i for i in self.driver.events if isinstance(i, UdpDatagram)]
        for datagram in datagrams:
            self.driver.events.remove(datagram)
            if (echo := self._echo(datagram)) is not None:
                echoes.append(echo)
        return echoes

    def collect(self, timeout_s: float) -> list[ProbeEcho]:
        """Echoes that arrived: returns as soon as some did (plus any already waiting), else
        after ``timeout_s`` with ``[]``."""
        deadline = time.monotonic() + timeout_s
        self._ready()
        while True:
            echoes = self._take_echoes()
            if echoes:
                while self.driver.poll_line(0.0):
                    pass
                self._sweep()
                return echoes + self._take_echoes()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._sweep()
                return []
            self.driver.poll_line(min(remaining, _POLL_S))

    def close(self) -> None:
        self.driver.port.close()

    # -- set-up ----------------------------------------------------------------------------

    def join(
        self,
        rbid: str | None = None,
        password: str | None = None,
        *,
        scan_duration: int = 6,
        scan_timeout_s: float = 60.0,
        join_timeout_s: float = 40.0,
        attempts: int = 1,
        channel: int | None = None,
        known: MeterLink | None = None,
    ) -> MeterLink:
        """Set the Route-B credentials (when given), scan, pick the meter PAN with the best
        LQI, set channel and PAN ID and authenticate with PANA. One-line errors throughout.

        ``channel`` (0x21..0x3C) scans that channel only. ``known`` is a meter joined before
        (by an earlier open of this dongle): it is joined again without a scan, and only if
        that fails is the air scanned for it afresh.
        """
        if attempts < 1:
            raise SkstackRadioError(f"{self.label}: attempts must be >= 1, got {attempts}")
        if (rbid is None) != (password is None):
            raise SkstackRadioError(
                f"{self.label}: give both the Route-B ID and the password, or neither"
            )
        if channel is not None and not 0x21 <= channel <= 0x3C:
            raise SkstackRadioError(f"{self.label}: channel must be 0x21..0x3C, got {channel:#x}")
        self._ready()
        if rbid is not None and password is not None:
            self.driver.set_credentials(rbid, password)
        if known is not None:
            try:
                return self._join_meter(known, join_timeout_s)
            except SkstackError:
                pass  # the meter may have moved channel or PAN after a restart: scan for it
        mask = 0xFFFFFFFF if channel is None else 1 << (channel - 0x21)
        pans: list[PanDescriptor] = []
        for _ in range(attempts):
            pans = self.driver.scan(scan_duration, scan_timeout_s, channel_mask=mask)
            if pans:
                break
        if not pans:
            where = "" if channel is None else f" on channel {channel} ({channel:02X})"
            raise SkstackRadioError(
                f"{self.label}: no smart meter PAN found{where} in {attempts} scan(s) of "
                f"duration {scan_duration}; check the meter is in range and Route-B service "
                "is enabled"
            )
        pan = max(pans, key=lambda p: p.lqi)
        meter = MeterLink(pan.ipv6, pan.addr, pan.channel, pan.pan_id, pan.lqi)
        return self._join_meter(meter, join_timeout_s)

    def _join_meter(self, meter: MeterLink, timeout_s: float) -> MeterLink:
        """Tune to the meter's channel and PAN and authenticate (SkstackError on EVENT 24)."""
        self.meter = None
        self.driver.set_register("S2", f"{meter.channel:02X}")
        self.driver.set_register("S3", f"{meter.pan_id:04X}")
        self.driver.join(meter.ipv6, timeout_s)
        self.meter = meter
        self._sweep()
        return meter
