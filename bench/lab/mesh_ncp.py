"""A Wi-SUN border-router NCP for the virtual lab: a Spinel emulator on a pty fronting a
simulated mesh of meters.

The emulator answers identity, role, counters, the RPL tables (fieldrig's vendor
properties, :mod:`bench.radio.spinel_mesh`) and STREAM_NET: an ICMPv6 echo request written
by the host becomes a probe in :class:`~bench.mesh.sim.MeshSimulator`; when the simulated
echo reaches the root, the echo reply goes back to the host as an unsolicited STREAM_NET
notification. A clock thread advances the simulation ``time_scale`` simulated seconds per
wall second, so a probe's round trip on the host is its simulated round trip divided by
``time_scale`` (the prober multiplies back; a real dongle has time_scale 1).
"""

from __future__ import annotations

import collections
import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.mesh.sim import MeshConfig, MeshSimulator, ProbeResult, UnknownNode
from bench.radio.capability import MeshNeighbour, MeshRoute
from bench.radio.icmpv6 import ECHO_REQUEST, Echo, PacketError, decode_echo
from bench.radio.spinel import (
    PROTOCOL_TYPE_WISUN,
    Cmd,
    Prop,
    SpinelFrame,
    Status,
    Unpacker,
    pack_data_wlen,
    pack_ipv6,
    pack_u8,
    pack_u16,
    pack_u32,
)
from bench.radio.spinel_emulator import PropertyError, SpinelEmulator
from bench.radio.spinel_mesh import PAGE_ENTRIES, encode_neighbours, encode_routes
from bench.transport.ptyport import PtyDevice

NCP_VERSION = "fieldrig-wisun-br/1.0; virtual mesh"
ROLE_LEADER = 3
_TICK_S = 0.002
_MAX_TICK_S = 0.01
_MAX_PENDING = 4096


@dataclass
class _Pending:
    request: Echo


class MeshNcp:
    """One gateway's dongle: ``SpinelEmulator`` + ``MeshSimulator`` + the clock thread."""

    def __init__(
        self,
        device: PtyDevice,
        config: MeshConfig,
        *,
        time_scale: float = 1.0,
        hwaddr: bytes = bytes.fromhex("18b4300000000001"),
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.sim = MeshSimulator(config)
        self.sim.warm_up()
        self.time_scale = time_scale
        self.lock = threading.RLock()
        self.emulator = SpinelEmulator(
            device, ncp_version=NCP_VERSION, hwaddr=hwaddr, interface_type=PROTOCOL_TYPE_WISUN
        )
        self.counters = {"host_packets": 0, "host_bad_packets": 0, "echoes_sent": 0, "no_route": 0}
        self.lag_s = 0.0
        #: the simulator's verdict on every probe the host sent, newest last
        self.history: collections.deque[ProbeResult] = collections.deque(maxlen=_MAX_PENDING)
        self._pending: dict[int, _Pending] = {}
        self._offset = 0
        self._tables: tuple[list[MeshNeighbour], list[MeshRoute]] = ([], [])
        self._stop = threading.Event()
        self._clock: threading.Thread | None = None
        self._wall0 = 0.0
        self._sim0 = 0.0
        e = self.emulator
        e.add_property(Prop.NET_ROLE, lambda: pack_u8(ROLE_LEADER))
        e.add_property(Prop.IPV6_ML_ADDR, self._root_address)
        e.add_property(Prop.MESH_TABLE_OFFSET, self._get_offset, self._set_offset)
        e.add_property(Prop.MESH_NEIGHBOURS, self._neighbours_page)
        e.add_property(Prop.MESH_ROUTES, self._routes_page)
        for prop, name in (
            (Prop.CNTR_TX_PKT_TOTAL, "attempts"),
            (Prop.CNTR_TX_PKT_ACKED, "acks"),
            (Prop.CNTR_TX_PKT_RETRY, "retries"),
            (Prop.CNTR_TX_IP_DROPPED, "queue_drops"),
            (Prop.CNTR_RX_PKT_TOTAL, "root_received"),
        ):
            e.add_property(prop, self._counter_getter(name))
        e.add_property(Prop.CNTR_TX_ERR_CCA, self._counter_getter("channel_access_failures"))
        e.add_stream(Prop.STREAM_NET, self._from_host)

    # -- properties ------------------------------------------------------------------------

    def _counter_getter(self, name: str) -> Any:
        def get() -> bytes:
            with self.lock:
                return pack_u32(self.sim.counters.get(name, 0) & 0xFFFFFFFF)

        return get

    def _root_address(self) -> bytes:
        return pack_ipv6(ipaddress.IPv6Address(self.sim.address(0)).packed)

    def _get_offset(self) -> bytes:
        return pack_u16(self._offset)

    def _set_offset(self, value: bytes) -> None:
        self._offset = Unpacker(value).u16()
        if self._offset == 0:
            self._tables = (self._neighbours(), self._routes())

    def _neighbours_page(self) -> bytes:
        entries = self._tables[0][self._offset : self._offset + PAGE_ENTRIES]
        return encode_neighbours(entries)

    def _routes_page(self) -> bytes:
        return encode_routes(self._tables[1][self._offset : self._offset + PAGE_ENTRIES])

    def _neighbours(self) -> list[MeshNeighbour]:
        with self.lock:
            return [
                MeshNeighbour(self.sim.address(n.node), n.rssi_dbm, n.etx)
                for n in self.sim.neighbours(0)
                if self.sim.is_powered(n.node)
            ]

    def _routes(self) -> list[MeshRoute]:
        routes: list[MeshRoute] = []
        with self.lock:
            sim = self.sim
            for node in range(1, sim.meters + 1):
                path = sim.route(node)
                if not path or len(path) < 2:
                    continue
                routes.append(
                    MeshRoute(
                        destination=sim.address(node),
                        next_hop=sim.address(path[1]),
                        parent=sim.address(path[-2]),
                        hops=len(path) - 1,
                    )
                )
        return routes

    # -- packets ---------------------------------------------------------------------------

    def _from_host(self, value: bytes) -> None:
        self.counters["host_packets"] += 1
        try:
            packet = Unpacker(value).data_wlen()
            echo = decode_echo(packet)
        except (PacketError, ValueError) as exc:
            self.counters["host_bad_packets"] += 1
            raise PropertyError(Status.PARSE_ERROR) from exc
        if echo.kind != ECHO_REQUEST:
            return  # a reply from the host to a meter: delivered nowhere, like a real BR
        with self.lock:
            # Bring the mesh to "now" first, so the probe leaves at the right mesh time.
            self._deliver(self.sim.run_until(max(self.sim.now, self.sim_time_now())))
            try:
                node = self.sim.node_of(echo.destination)
            except UnknownNode:
                self.counters["no_route"] += 1
                return  # no such meter: dropped silently, as routing would
            if len(self._pending) >= _MAX_PENDING:
                raise PropertyError(Status.NOMEM)
            probe_id = self.sim.send_probe(node, payload_bytes=len(echo.data))
            self._pending[probe_id] = _Pending(echo)

    def _deliver(self, results: list[ProbeResult]) -> None:
        for result in results:
            self.history.append(result)
            pending = self._pending.pop(result.probe_id, None)
            if pending is None or not result.delivered:
                continue
            reply = pending.request.reply()
            self.counters["echoes_sent"] += 1
            self.emulator.emit_unsolicited(
                SpinelFrame(
                    command=Cmd.PROP_VALUE_IS,
                    prop=Prop.STREAM_NET,
                    value=pack_data_wlen(reply.encode()),
                    tid=0,
                )
            )

    # -- clock -----------------------------------------------------------------------------

    def sim_time_now(self) -> float:
        """Where the simulated clock should be now."""
        return self._sim0 + (time.monotonic() - self._wall0) * self.time_scale

    def _run_clock(self) -> None:
        while not self._stop.is_set():
            target = self.sim_time_now()
            with self.lock:
                self._deliver(self.sim.run_until(max(self.sim.now, target)))
                nxt = self.sim.next_event_time()
            self.lag_s = max(0.0, (self.sim_time_now() - target) / self.time_scale)
            wait = _TICK_S
            if nxt is not None:
                wait = min(max((nxt - self.sim_time_now()) / self.time_scale, 0.0), _MAX_TICK_S)
            self._stop.wait(max(wait, 0.0005))

    def start(self) -> None:
        with self.lock:
            self._sim0 = self.sim.now
        self._wall0 = time.monotonic()
        self.emulator.start()
        self._stop.clear()
        self._clock = threading.Thread(target=self._run_clock, name="mesh-clock", daemon=True)
        self._clock.start()

    def stop(self) -> None:
        self._stop.set()
        if self._clock is not None:
            self._clock.join(timeout=2.0)
            self._clock = None
        self.emulator.stop()

    # -- faults (called by the lab's control socket and attenuator) -----------------------

    def set_attenuation_db(self, db: float) -> None:
        with self.lock:
            self.sim.set_attenuation_db(db)

    def control(self, op: str, **args: Any) -> dict[str, Any]:
        """One control request; the answer always carries the clock, counters, interference
        bursts (sim time) and degraded links.

        Ops: ``power_off`` / ``power_on`` (``node``); ``interference`` (``duration_s``,
        ``extra_loss_db``: one burst over the mesh); ``interference_start`` (``rate_per_s``,
        ``mean_burst_s``, ``penalty_db``, ``duration_s``, optional ``center`` address with
        ``radius_m``, ``seed``: see :meth:`MeshSimulator.start_interference`);
        ``interference_stop``; ``degrade_link`` (``node``, ``peer`` address, ``db``); ``stats``.
        ``clock`` pairs a simulated time with the host's ``time.monotonic_ns()`` at that
        moment, so a client maps its own probe times onto the bursts.
        """
        with self.lock:
            sim = self.sim
            if op == "power_off":
                sim.power_off(int(args["node"]))
            elif op == "power_on":
                sim.power_on(int(args["node"]))
            elif op == "interference":
                sim.interference(float(args["duration_s"]), float(args["extra_loss_db"]))
            elif op == "interference_start":
                self._catch_up()
                center = args.get("center")
                radius = args.get("radius_m")
                seed = args.get("seed")
                sim.start_interference(
                    float(args["rate_per_s"]),
                    float(args["mean_burst_s"]),
                    float(args["penalty_db"]),
                    float(args["duration_s"]),
                    center=None if center is None else sim.node_of(str(center)),
                    radius_m=None if radius is None else float(radius),
                    seed=None if seed is None else int(seed),
                )
            elif op == "interference_stop":
                self._catch_up()
                sim.stop_interference()
            elif op == "degrade_link":
                sim.degrade_link(int(args["node"]), sim.node_of(str(args["peer"])),
                                 float(args["db"]))  # fmt: skip
            elif op != "stats":
                raise ValueError(f"unknown mesh control operation {op!r}")
            monotonic_ns = time.monotonic_ns()
            return {
                "now_s": sim.now,
                "time_scale": self.time_scale,
                "lag_s": self.lag_s,
                "meters": sim.meters,
                "counters": dict(sim.counters) | self.counters,
                "clock": {
                    "sim_s": self._sim0 + (monotonic_ns / 1e9 - self._wall0) * self.time_scale,
                    "monotonic_ns": monotonic_ns,
                },
                "bursts": [b.to_dict() for b in sim.bursts],
                "degraded_links": [
                    {"a": sim.address(a), "b": sim.address(b), "db": db}
                    for a, b, db in sim.degraded_links()
                ],
            }

    def _catch_up(self) -> None:
        """Bring the mesh to the clock's time, so a fault starts at the right mesh time."""
        self._deliver(self.sim.run_until(max(self.sim.now, self.sim_time_now())))
