"""A seeded discrete-event simulator of one Wi-SUN-like mesh behind a border-router dongle.

Node 0 is the root (the gateway's dongle), nodes 1..N are meters placed uniformly in a disc
around it; the disc grows with N so the density stays fixed (a bigger mesh is deeper, not
denser). Everything random comes from ONE ``numpy`` Generator seeded with ``MeshConfig.seed``:
the same seed and the same calls give the same results.

Model:

- Links: log-distance path loss with log-normal shadowing drawn once per pair (both
  directions share it), margin = link budget minus the noise floor (:mod:`bench.mesh.links`).
  Pairs under ``link_floor_db`` are not links; each node keeps its ``max_neighbours``
  strongest links, and a link stays when it is among the strongest of EITHER end (so the table
  is symmetric and a node in a sparse corner keeps its few links). A meter the root cannot
  reach is placed again.
- Channel: every directed link is a two-state Gilbert-Elliott channel (lG = 0, lB = 1) whose
  parameters follow the link's CURRENT margin (:func:`links.gilbert_from_margin`: stationary
  P(Bad) = 1 - delivery_probability(margin); burst length 1 / TYPICAL_R where possible,
  longer for links too poor for it). It is stepped by :func:`links.gilbert_step`, the same
  code as the standalone :class:`links.GilbertElliott`, once per attempt that reaches a
  listening receiver; after ``channel_memory_s`` without an attempt its state is drawn
  afresh from the stationary distribution (the idle gap is much longer than a burst).
- Air (only with ``MeshConfig.contention``; without it every CCA is clear, frames never
  collide, and a frame that reaches a listening receiver is decided by its link alone,
  whose calibration to field delivery already includes contention at normal load): a node
  hears (carrier sense, interference) every node whose base margin to it is at
  least ``link_floor_db``, a link of the table or not (the table keeps only the strongest).
  Nodes hop channels as Wi-SUN FAN nodes do: each listens on its own pseudo-random sequence
  over ``channels``, ``dwell_s`` per channel, and a unicast frame goes out on the
  receiver's channel of the moment (:meth:`MeshSimulator.channel`). A transmission, data
  frame or ACK, occupies its channel from its start to its end; only transmissions on the
  same channel are sensed or collide, so frames to one receiver always can.
- MAC per hop (IEEE 802.15.4 unslotted CSMA-CA, 802.15.4-2020 6.2.5.1 and its PIB defaults
  macMinBE 3, macMaxBE 5, macMaxCSMABackoffs 4, macMaxFrameRetries 3): a node sends one frame
  at a time from a FIFO queue of ``queue_limit`` (overflow drops). Each attempt starts with
  NB = 0, BE = macMinBE: a random backoff of 0 .. 2**BE - 1 unit periods, then a CCA of 8
  symbols that finds the channel busy when any transmission audible at the node (or its own
  ACK) overlaps the CCA window; busy: NB += 1, BE = min(BE + 1, macMaxBE) and back off again,
  and after more than macMaxCSMABackoffs busy CCAs the frame fails with a channel access
  failure (no retry, no ETX sample). Clear: RX-to-TX turnaround (1 ms, during which others
  may start too), then the frame's airtime. The receiver gets the frame only if nothing else
  it can hear was on the air when the frame started, nothing it can hear starts before the
  frame ends, and it does not transmit meanwhile (half-duplex; a node receiving a frame finds
  its own CCA busy, as its radio cannot turn to send: a node that transmits cannot
  receive; no capture effect), and then only if the link's channel says Good. A received
  frame is acknowledged after the turnaround by an immediate ACK, sent without CSMA-CA; the
  receiver's air is taken from the frame's end until the ACK ends. A frame without ACK is
  retried after :func:`ack_wait_s` with a fresh CSMA-CA, at most ``1 + max_frame_retries``
  attempts. A receiver that is off or booting, or that powers off before the frame is done,
  fails it.
- Routing: RPL non-storing mode with MRHOF over ETX. Each node keeps an ETX estimate per
  neighbour, seeded from the link margin (as stacks seed it from the RSL) and updated by an
  EWMA of its own frames (attempts used, or :data:`ETX_FAIL_PENALTY` for a failed frame);
  an estimate left unused for ``etx_freshness_s`` is seeded again from the current margin.
  The DODAG forms once by Dijkstra from the root. After that every node runs its own
  Trickle timer (RFC 6206: ``trickle_imin_s``, doubling ``trickle_doublings`` times, reset to
  Imin by a parent change, a detach or a join) and re-evaluates its parent when it fires
  (MRHOF, RFC 6719): the best rank + ETX among neighbours of strictly lower rank, taken only
  when it beats the current parent by ``parent_switch_threshold``, so parent pointers never
  loop. Every ``dio_interval_s`` the advertised ranks are brought up to date along the parent
  tree; a node whose chain no longer reaches the root (a parent died) is detached and joins
  again at its next Trickle firing. A frame to the parent that exhausts its retries (local
  repair) makes the node re-evaluate at once with the penalised ETX, same hysteresis.
  After a parent change the node sends a DAO (a real packet, after a random delay up to
  ``dao_delay_s``); the root's source routes change only when a DAO arrives, so downward
  probes use the root's possibly stale view.
- Traffic: every meter sends a ``report_bytes`` reading to the root every
  ``report_interval_s`` (default 15 min, random phase, +-5 % jitter: AMI meters record interval
  data every hour or less and send it "at least daily, but frequently hourly or even at
  15-minute intervals", NRECA interim report via smartgrid.gov); probes go root -> meter by
  source route and the echo comes back up along parent pointers.

- Faults: :meth:`MeshSimulator.set_attenuation_db` (every link of the root),
  :meth:`~MeshSimulator.degrade_link` (one link), :meth:`~MeshSimulator.interference` (one
  burst over the mesh) and :meth:`~MeshSimulator.start_interference` (a seeded Poisson
  process of bursts over the mesh or a region) lower margins; power_off / power_on.

NOT modelled: the loss of an ACK (an attempt whose frame arrives is acknowledged), the
receiver's turnaround as idle air (it counts as busy), carrier sense or interference from
nodes under ``link_floor_db`` (attenuation and interference do not change who hears whom),
capture, SINR summed over several interferers (a collision loses the frame whatever the
powers), adjacent-channel interference, broadcast schedules, duplicates, fragmentation,
multiple parents, DIOs as frames on air (Trickle timing is modelled, the redundancy constant
is not) and DAO-ACK packets: a DAO
lost on the way is re-sent by its origin after :data:`DAO_RETRY_S`, as a missing DAO-ACK
would make it.

The simulator is not thread-safe: one thread drives it.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from bench.errors import BenchError
from bench.mesh.airtime import (
    CCA_SYMBOLS,
    MAC_MAX_BE,
    MAC_MAX_CSMA_BACKOFFS,
    MAC_MIN_BE,
    MAX_PSDU_OCTETS,
    TURNAROUND_S,
    ack_airtime_s,
    frame_airtime_s,
    unit_backoff_period_s,
)
from bench.mesh.links import (
    NOISE_FLOOR_DBM,
    delivery_probability,
    gilbert_fresh_state,
    gilbert_from_margin,
    gilbert_step,
)

FRAME_OVERHEAD_OCTETS = 40
"""PSDU octets on top of the payload: MAC header with 64-bit addresses and auxiliary security
header (about 27), FCS (4) and compressed IPv6 + UDP/ICMPv6 headers (about 9). An estimate."""
SOURCE_ROUTE_OCTETS = 8
"""Fixed part of the RFC 6554 source routing header of a downward frame ..."""
SOURCE_ROUTE_OCTETS_PER_HOP = 2
"""... plus two octets per address (prefix and all but the short address elided)."""
DAO_OCTETS = 48
"""RPL DAO payload: ICMPv6 + DAO base + target and transit options."""
ETX_FAIL_PENALTY = 12.0
"""ETX sample of a frame that exhausted its retries (Contiki-NG link-stats ETX_NOACK_PENALTY)."""
ETX_ALPHA = 0.1
"""EWMA weight of a new ETX sample (Contiki-NG link-stats EWMA_ALPHA 10 / EWMA_SCALE 100)."""
DAO_RETRY_S = 5.0
"""A node whose latest DAO was lost sends a fresh one this long after (missing DAO-ACK)."""
REPORT_JITTER = 0.05
DIO_JITTER = 0.1
MAX_PROBE_PAYLOAD = 1200
MAX_METERS = 0xFFFD
"""Short addresses 0xfffe and 0xffff are reserved by IEEE 802.15.4."""
MESH_PREFIX = ipaddress.IPv6Network("fd00:db8:0:1::/64")
_SHORT_IID = 0x0000_00FF_FE00_0000
"""RFC 4944 section 6: interface id 0000:00ff:fe00:XXXX from the 16-bit short address."""

_BLOCK = 4096
_INF = math.inf
_REPORT, _DAO, _PROBE, _ECHO = 0, 1, 2, 3
_EV_CCA, _EV_TX_START, _EV_TX_END, _EV_DONE = 0, 1, 2, 3
_EV_REPORT, _EV_DIO, _EV_DAO, _EV_RETUNE, _EV_TRICKLE = 4, 5, 6, 7, 8
_WHY_NO_ACK, _WHY_CHANNEL_ACCESS = 0, 1
PARENT_LOG = 4096
"""Parent changes kept in :attr:`MeshSimulator.parent_changes` (newest last)."""


class MeshError(BenchError):
    """The mesh simulator was used wrongly (root where a meter is needed, time going back)."""


class UnknownNode(MeshError, LookupError):
    """A node number or address that is not part of this mesh."""


class MeshConfigError(BenchError, ValueError):
    """A :class:`MeshConfig` field is out of range; the message names it."""


@dataclass(frozen=True)
class MeshConfig:
    """Parameters of one simulated mesh (all defaults are the calibrated 'typical' mesh)."""

    meters: int = 200
    seed: int = 1
    density_per_km2: float = 400.0
    """Meters per square kilometre in the disc around the root (the disc grows with N)."""
    tx_power_dbm: float = 14.0
    pl0_db: float = 40.0
    path_loss_exponent: float = 3.0
    sigma_db: float = 3.0
    """Shadowing standard deviation (about 3 dB outdoors, 8 dB indoors)."""
    link_floor_db: float = 3.0
    """Pairs whose margin is below this are not neighbours."""
    rate_bps: int = 50_000
    channels: int = 129
    """Radio channels the nodes hop over (:meth:`MeshSimulator.channel`); 1: all share one.
    129 is the 902-928 MHz band at 200 kHz spacing (Wi-SUN FAN, North America)."""
    dwell_s: float = 0.255
    """How long a node listens on one channel of its unicast hop sequence (Wi-SUN FAN's
    unicast dwell interval, 255 ms at most)."""
    max_frame_retries: int = 3
    contention: bool = False
    """Model the air between frames: CCA that can find the channel busy, collisions (hidden
    terminals included) and half-duplex radios. Off by default: the links are calibrated to
    measured field delivery (85 % first attempt, 94 % within three), which already includes
    what contention costs a mesh at its normal load, so adding collisions on top counts them
    twice. Turn it on to study load beyond that (heavy probing, dense meshes, short reading
    intervals); then backoffs, busy CCAs and collisions follow from the traffic, and the
    links lose somewhat more than the field figures."""
    report_interval_s: float = 900.0
    """Upward reading period of each meter; ``math.inf`` turns the readings off."""
    report_bytes: int = 60
    dio_interval_s: float = 30.0
    """Period at which the ranks nodes advertise are brought up to date along the parent
    tree (what DIO propagation does; a node whose parent is gone is detached then)."""
    trickle_imin_s: float = 4.096
    """Trickle Imin of each node's DIO timer (RFC 6206; Contiki-NG RPL_DIO_INTERVAL_MIN 12,
    2**12 ms). The node re-evaluates its parent when its timer fires."""
    trickle_doublings: int = 8
    """Trickle Imax = Imin * 2**doublings (Contiki-NG RPL_DIO_INTERVAL_DOUBLINGS 8: about
    17.5 min); an inconsistency (parent change, detach, join) resets I to Imin."""
    queue_limit: int = 16
    max_neighbours: int = 20
    boot_s: float = 5.0
    parent_switch_threshold: float = 1.5
    """ETX by which a new path must beat the current parent's (RFC 6719 section 6:
    PARENT_SWITCH_THRESHOLD 192 with ETX in units of 128)."""
    dao_delay_s: float = 1.0
    """A DAO leaves a uniform 0..dao_delay_s after the parent change that triggers it."""
    channel_memory_s: float = 1.0
    """Idle time after which a directed channel's Good/Bad state is drawn afresh."""
    etx_freshness_s: float = 600.0
    """An ETX estimate not updated for this long is seeded again from the current margin, as
    from the RSSI of the neighbour's DIOs (Contiki-NG link-stats FRESHNESS_EXPIRATION_TIME)."""

    def __post_init__(self) -> None:
        def bad(name: str, valid: str) -> MeshConfigError:
            return MeshConfigError(
                f"MeshConfig.{name} = {getattr(self, name)!r} is out of range: {valid}"
            )

        for name in (
            "meters", "seed", "rate_bps", "channels", "max_frame_retries", "report_bytes",
            "trickle_doublings",
        ):  # fmt: skip
            if not isinstance(getattr(self, name), int):
                raise bad(name, "an integer")
        checks: list[tuple[str, bool, str]] = [
            ("meters", 1 <= self.meters <= MAX_METERS, f"an integer 1..{MAX_METERS}"),
            ("seed", self.seed >= 0, "a non-negative integer"),
            ("density_per_km2", 0 < self.density_per_km2 < 1e6, "0 < density < 1e6"),
            ("tx_power_dbm", -30 <= self.tx_power_dbm <= 36, "-30..36 dBm"),
            ("pl0_db", 0 <= self.pl0_db <= 120, "0..120 dB"),
            ("path_loss_exponent", 1.5 <= self.path_loss_exponent <= 6, "1.5..6"),
            ("sigma_db", 0 <= self.sigma_db <= 20, "0..20 dB"),
            ("link_floor_db", -20 <= self.link_floor_db <= 40, "-20..40 dB"),
            ("rate_bps", 1_000 <= self.rate_bps <= 1_000_000, "1000..1000000 bit/s"),
            ("channels", 1 <= self.channels <= 1024, "1..1024"),
            ("dwell_s", 0.001 <= self.dwell_s <= 3600, "0.001..3600 s"),
            ("max_frame_retries", 0 <= self.max_frame_retries <= 7, "0..7 (802.15.4)"),
            ("report_interval_s", self.report_interval_s >= 1.0, ">= 1 s (math.inf: off)"),
            (
                "report_bytes",
                1 <= self.report_bytes <= MAX_PSDU_OCTETS - FRAME_OVERHEAD_OCTETS,
                f"1..{MAX_PSDU_OCTETS - FRAME_OVERHEAD_OCTETS} octets",
            ),
            ("dio_interval_s", 1.0 <= self.dio_interval_s <= 3600, "1..3600 s"),
            ("trickle_imin_s", 0.01 <= self.trickle_imin_s <= 3600, "0.01..3600 s"),
            ("trickle_doublings", 0 <= self.trickle_doublings <= 20, "0..20 (RFC 6550)"),
            ("queue_limit", 1 <= self.queue_limit <= 10_000, "1..10000 packets"),
            ("max_neighbours", 1 <= self.max_neighbours <= 1000, "1..1000"),
            ("boot_s", 0 <= self.boot_s <= 3600, "0..3600 s"),
            ("parent_switch_threshold", 0 <= self.parent_switch_threshold <= 100, "0..100"),
            ("dao_delay_s", 0 <= self.dao_delay_s <= 600, "0..600 s"),
            ("channel_memory_s", 0 < self.channel_memory_s <= 3600, "0 < memory <= 3600 s"),
            ("etx_freshness_s", self.etx_freshness_s >= 1.0, ">= 1 s (math.inf: never)"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise bad(name, valid)

    @property
    def radius_m(self) -> float:
        """Radius of the disc that holds ``meters`` at ``density_per_km2``."""
        return 1000.0 * math.sqrt(self.meters / (self.density_per_km2 * math.pi))


@dataclass(frozen=True)
class ProbeResult:
    """One probe (root -> meter -> root echo), delivered or lost."""

    probe_id: int
    node: int
    hops: int | None
    """Hop count of the root's route when the probe was sent (None: no route)."""
    sent_at: float
    completed_at: float
    """Sim time the echo reached the root, or the probe was lost."""
    delivered: bool
    rtt_s: float | None
    lost_at: str | None
    """Where and why it was lost, e.g. ``down hop 2 (5->17): retries exhausted``."""


@dataclass(frozen=True)
class Neighbour:
    """A link as its owner sees it now."""

    node: int
    rssi_dbm: float
    margin_db: float
    """Current margin (attenuation and interference included)."""
    etx: float
    """The owner's current ETX estimate for sending to ``node``."""


@dataclass(frozen=True)
class Burst:
    """One interference burst: every link in its region loses ``penalty_db`` of margin
    from ``start_s`` until ``end_s`` (simulated seconds)."""

    start_s: float
    end_s: float
    penalty_db: float
    center: int | None = None
    """Node at the centre of the region (None: the whole mesh)."""
    radius_m: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "penalty_db": self.penalty_db,
            "center": self.center,
            "radius_m": self.radius_m,
        }


@dataclass(frozen=True)
class ParentChange:
    """A node took a new preferred parent (``old`` None: it joined)."""

    t_s: float
    node: int
    old: int | None
    new: int
    reason: str
    """``join``, ``mrhof`` (a routing round found a path better by the switch threshold) or
    ``local_repair`` (a frame to the parent exhausted its retries)."""
    old_cost: float
    """Path ETX through the old parent at the decision (inf: none, or it left the DODAG)."""
    new_cost: float


class _Packet:
    __slots__ = ("dao_parent", "dao_seq", "hops", "idx", "kind", "origin", "probe", "route", "size")

    def __init__(self, kind: int, origin: int, size: int) -> None:
        self.kind = kind
        self.origin = origin
        self.size = size
        self.probe = -1
        self.route: tuple[int, ...] = ()
        self.idx = 0
        self.hops = 0
        self.dao_parent = -1
        self.dao_seq = 0


def _path_loss_array(distance_m: np.ndarray, cfg: MeshConfig) -> np.ndarray:
    """Median :func:`links.path_loss_db` (d0 = 1 m) for many distances at once."""
    spread = 10.0 * cfg.path_loss_exponent * np.log10(np.maximum(distance_m, 1.0))
    return np.asarray(cfg.pl0_db + spread, dtype=float)


def _etx_seed(margin_db: float) -> float:
    return min(1.0 / max(delivery_probability(margin_db), 1e-9), ETX_FAIL_PENALTY)


class _Topology:
    """Placement and the link table: endpoints ``a < b`` and base margins per link id."""

    def __init__(self, cfg: MeshConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        n = cfg.meters + 1
        self.pos = np.zeros((n, 2))
        self._place(np.arange(1, n))
        # beyond this distance even +4 sigma of shadowing cannot lift a pair over the floor
        reach_db = cfg.tx_power_dbm - NOISE_FLOOR_DBM - cfg.pl0_db - cfg.link_floor_db
        self.cutoff_m = 10 ** ((reach_db + 4 * cfg.sigma_db) / (10 * cfg.path_loss_exponent))
        a, b, m = self._pairs(np.arange(n))
        for _ in range(1000):
            keep = self._strongest(a, b, m)
            stranded = self._unreachable(a[keep], b[keep])
            if stranded.size == 0:
                break
            self._place(stranded)
            touched = np.zeros(n, dtype=bool)
            touched[stranded] = True
            survive = ~(touched[a] | touched[b])
            na, nb, nm = self._pairs(stranded)
            a = np.concatenate([a[survive], na])
            b = np.concatenate([b[survive], nb])
            m = np.concatenate([m[survive], nm])
        else:
            raise MeshError(
                f"could not connect {cfg.meters} meters at {cfg.density_per_km2}/km2: "
                "raise density_per_km2 or tx_power_dbm"
            )
        # every pair over the floor hears the other (carrier sense, interference), links or not
        self.hear_a, self.hear_b = a, b
        a, b, m = a[keep], b[keep], m[keep]
        order = np.lexsort((b, a))
        self.a, self.b, self.margin = a[order], b[order], m[order]

    def _place(self, nodes: np.ndarray) -> None:
        u = self.rng.random((nodes.size, 2))
        r = self.cfg.radius_m * np.sqrt(u[:, 0])
        theta = 2 * math.pi * u[:, 1]
        self.pos[nodes, 0] = r * np.cos(theta)
        self.pos[nodes, 1] = r * np.sin(theta)

    def _pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Links (margin >= floor) of ``rows`` with everyone, each unordered pair once."""
        cfg, pos = self.cfg, self.pos
        n = pos.shape[0]
        in_rows = np.zeros(n, dtype=bool)
        in_rows[rows] = True
        cols = np.arange(n)
        out_a, out_b, out_m = [], [], []
        for start in range(0, rows.size, 256):
            chunk = rows[start : start + 256]
            d = np.hypot(
                pos[chunk, 0][:, None] - pos[None, :, 0], pos[chunk, 1][:, None] - pos[None, :, 1]
            )
            mask = d <= self.cutoff_m
            # pairs inside ``rows`` are produced once, from their smaller end
            mask &= ~(in_rows[None, :] & (cols[None, :] <= chunk[:, None]))
            ii, jj = np.nonzero(mask)
            loss = _path_loss_array(d[ii, jj], cfg)
            if cfg.sigma_db > 0:
                loss = loss + self.rng.normal(0.0, cfg.sigma_db, size=ii.size)
            margin = cfg.tx_power_dbm - loss - NOISE_FLOOR_DBM
            ok = margin >= cfg.link_floor_db
            i, j = chunk[ii[ok]], jj[ok]
            out_a.append(np.minimum(i, j))
            out_b.append(np.maximum(i, j))
            out_m.append(margin[ok])
        if not out_a:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0)
        return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_m)

    def _strongest(self, a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Mask of links among the ``max_neighbours`` strongest of either end."""
        ends = np.concatenate([a, b])
        ids = np.concatenate([np.arange(a.size), np.arange(a.size)])
        order = np.lexsort((-np.concatenate([m, m]), ends))
        sorted_ends = ends[order]
        first = np.searchsorted(sorted_ends, sorted_ends, side="left")
        top = order[(np.arange(order.size) - first) < self.cfg.max_neighbours]
        keep = np.zeros(a.size, dtype=bool)
        keep[ids[top]] = True
        return keep

    def _unreachable(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        n = self.pos.shape[0]
        adjacency: list[list[int]] = [[] for _ in range(n)]
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            adjacency[x].append(y)
            adjacency[y].append(x)
        seen = [False] * n
        seen[0] = True
        stack = [0]
        while stack:
            for v in adjacency[stack.pop()]:
                if not seen[v]:
                    seen[v] = True
                    stack.append(v)
        return np.array([v for v in range(1, n) if not seen[v]], dtype=np.int64)


class MeshSimulator:
    """The mesh: build it, ``warm_up``, then ``send_probe`` and ``run_until`` (see module doc).

    Addresses: ``fd00:db8:0:1::/64`` with the RFC 4944 interface id 0000:00ff:fe00:XXXX of the
    16-bit short address XXXX = node number, so the root is ``fd00:db8:0:1:0:ff:fe00:0`` and
    meter 17 is ``fd00:db8:0:1:0:ff:fe00:11`` (the IID is hex).

    ``counters``: ``frames_sent`` (MAC frames started), ``attempts`` (transmissions on air),
    ``acks`` (attempts that got through), ``first_attempt_acks``, ``retries_exhausted``
    (frames that failed without an ACK, a dead or booting receiver included), ``cca_busy``
    (CCAs that found the channel busy), ``channel_access_failures`` (frames dropped after
    too many busy CCAs), ``collisions`` (attempts a listening receiver lost to another
    transmission it could hear, or to its own), ``queue_drops``, ``no_parent_drops``,
    ``power_drops`` (packets lost with a meter's power), ``parent_switches``,
    ``local_repairs``, ``joins``, ``dio_rounds``, ``daos_sent`` / ``_received`` / ``_lost``,
    ``reports_sent`` / ``_delivered`` / ``_lost`` and ``probes_sent`` / ``_delivered`` /
    ``_lost``.
    """

    def __init__(self, config: MeshConfig) -> None:
        cfg = self.config = config
        self._rng = np.random.default_rng(cfg.seed)
        topo = _Topology(cfg, self._rng)
        self.positions_m: np.ndarray = topo.pos
        """(N + 1, 2) node coordinates in metres, root at the origin."""
        n = self._n = cfg.meters + 1
        self.now = 0.0
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "frames_sent", "attempts", "acks", "first_attempt_acks", "retries_exhausted",
                "cca_busy", "channel_access_failures", "collisions", "queue_drops",
                "no_parent_drops", "power_drops", "parent_switches", "joins", "detaches",
                "local_repairs", "dio_rounds", "dios", "daos_sent", "daos_received", "daos_lost",
                "reports_sent", "reports_delivered", "reports_lost", "probes_sent",
                "probes_delivered", "probes_lost",
            ),
            0,
        )  # fmt: skip

        # links: undirected id l joins a[l] < b[l]; directed id 2l is a->b, 2l+1 is b->a
        self._link_a: list[int] = topo.a.tolist()
        self._link_b: list[int] = topo.b.tolist()
        self._base_margin = topo.margin
        self._root_link = topo.a == 0
        n_links = topo.a.size
        self._nbr: list[list[int]] = [[] for _ in range(n)]
        self._out: list[list[int]] = [[] for _ in range(n)]
        self._inn: list[list[int]] = [[] for _ in range(n)]
        self._dl_of: list[dict[int, int]] = [{} for _ in range(n)]
        for lid, (x, y) in enumerate(zip(self._link_a, self._link_b, strict=True)):
            for src, dst, d in ((x, y, 2 * lid), (y, x, 2 * lid + 1)):
                self._nbr[src].append(dst)
                self._out[src].append(d)
                self._inn[dst].append(d ^ 1)
                self._dl_of[src][dst] = d
        self._hear: list[list[int]] = [[] for _ in range(n)]
        for x, y in zip(topo.hear_a.tolist(), topo.hear_b.tolist(), strict=True):
            self._hear[x].append(y)
            self._hear[y].append(x)
        self._attenuation_db = 0.0
        self._link_extra_db = np.zeros(n_links)
        self._bursts: list[tuple[Burst, np.ndarray | None]] = []
        self.bursts: list[Burst] = []
        """Every interference burst so far and those planned (sim time; see
        :meth:`start_interference`), in start order."""
        self.parent_changes: deque[ParentChange] = deque(maxlen=PARENT_LOG)
        """The latest parent changes (joins, MRHOF switches, local repairs), newest last."""
        self.acked_at_attempt = [0] * (2 + cfg.max_frame_retries)
        """Frames acknowledged at attempt k (index k, 1-based; index 0 unused)."""
        self._interference_runs = 0
        self._margin: list[float] = []
        self._p_gb: list[float] = []
        self._p_bg: list[float] = []
        self._p_bad: list[float] = []
        self._retune()
        self._bad = [False] * (2 * n_links)
        self._last_t = [-_INF] * (2 * n_links)
        self._etx = [0.0] * (2 * n_links)
        self._etx_t = [0.0] * (2 * n_links)
        for node in range(n):
            self._seed_etx(node)

        # MAC timing
        rate = cfg.rate_bps
        self._max_attempts = 1 + cfg.max_frame_retries
        self._unit = unit_backoff_period_s(rate)
        self._cca_s = CCA_SYMBOLS / rate  # one bit per 2-FSK symbol
        self._ack_ok = TURNAROUND_S + ack_airtime_s(rate)
        self._ack_wait = ack_wait_s(rate)
        self._airtime: dict[int, float] = {}

        # node state
        self._powered = [True] * n
        self._boot_until = [0.0] * n
        self._epoch = [0] * n
        self._parent = [-1] * n
        self._rank = [_INF] * n
        self._queue: list[deque[_Packet]] = [deque() for _ in range(n)]
        self._tx: list[_Packet | None] = [None] * n
        self._tx_nh = [-1] * n
        self._tx_dl = [-1] * n
        self._tx_ok = [False] * n
        self._tx_why = [_WHY_NO_ACK] * n
        self._tx_air = [0.0] * n
        self._tx_attempts = [0] * n
        self._tx_rx_epoch = [0] * n
        self._tx_hears = [False] * n
        self._tx_clear = [False] * n
        # CSMA-CA and the air: NB and BE of the current attempt, start of its CCA window;
        # until when the node transmits, until when a transmission it hears lasts; the
        # reception it is locked on (end, sender, still intact)
        self._nb = [0] * n
        self._be = [MAC_MIN_BE] * n
        self._cca_from = [0.0] * n
        self._tx_until = [0.0] * n
        self._busy_until = [[0.0] * cfg.channels for _ in range(n)]
        self._tx_ch = [0] * n
        self._rx_ch = [0] * n
        self._rx_end = [0.0] * n
        self._rx_src = [-1] * n
        self._rx_ok = [False] * n
        self._dao_seq = [0] * n
        self._dao_pending = [False] * n
        # Trickle (RFC 6206) per node: interval I, end of the current interval, generation
        self._trickle_i = [cfg.trickle_imin_s] * n
        self._trickle_end = [0.0] * n
        self._trickle_gen = [0] * n
        self._imax = cfg.trickle_imin_s * 2**cfg.trickle_doublings
        # the root's view, learned from DAOs: node -> parent
        self._root_parent = [-1] * n
        self._root_seq = [-1] * n

        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._ubuf: list[float] = []
        self._ui = _BLOCK
        self._completed: list[ProbeResult] = []
        self._probes: dict[int, tuple[int, int | None, float]] = {}
        self._next_probe = 1

        # start with a formed mesh (as a bench finds one): a routing round whose DAOs the
        # root already holds; warm_up then lets measured ETX take over from the seeds
        self._dio_round(schedule_daos=False)
        for node in range(1, n):
            self._root_parent[node] = self._parent[node]
            self._root_seq[node] = 0
            self._trickle_reset(node, 0.0, force=True)
        self._push(cfg.dio_interval_s * (1.0 + DIO_JITTER * (2.0 * self._u() - 1.0)), _EV_DIO, 0, 0)
        if math.isfinite(cfg.report_interval_s):
            for node in range(1, n):
                self._push(self._u() * cfg.report_interval_s, _EV_REPORT, node, 0)

    # ---------------------------------------------------------------- public API

    def warm_up(self, seconds: float = 120.0) -> None:
        """Run ``seconds`` of traffic, then on until the root's routes match the parent
        pointers (at most four more routing rounds). Probe results stay for ``run_until``."""
        if seconds < 0:
            raise MeshError(f"warm_up seconds must be >= 0, got {seconds}")
        self._advance(self.now + seconds)
        limit = self.now + 4 * self.config.dio_interval_s
        while self.now < limit and not self.routes_consistent():
            self._advance(self.now + 1.0)

    def run_until(self, t: float) -> list[ProbeResult]:
        """Process events with time <= ``t``, set ``now = t`` and return the probes completed
        since the last call, in completion order."""
        self._advance(t)
        done, self._completed = self._completed, []
        return done

    def next_event_time(self) -> float | None:
        """Time of the earliest pending event (None when there is none)."""
        return self._heap[0][0] if self._heap else None

    def send_probe(self, node: int, payload_bytes: int = 32) -> int:
        """Queue an echo request to meter ``node`` at the root, now; returns the probe id."""
        self._check_meter(node)
        if not 0 <= payload_bytes <= MAX_PROBE_PAYLOAD:
            raise MeshError(
                f"probe payload must be 0..{MAX_PROBE_PAYLOAD} octets, got {payload_bytes}"
            )
        pid = self._next_probe
        self._next_probe += 1
        self.counters["probes_sent"] += 1
        route = self._root_route(node)
        hops = None if route is None else len(route) - 1
        self._probes[pid] = (node, hops, self.now)
        pkt = _Packet(_PROBE, 0, payload_bytes + FRAME_OVERHEAD_OCTETS)
        pkt.probe = pid
        if route is None:
            self._lose(pkt, "no route")
            return pid
        pkt.route = tuple(route)
        self._enqueue(0, pkt)
        return pid

    def send_report(self, node: int) -> None:
        """Queue one meter reading (``report_bytes``) at meter ``node`` now, to the root."""
        self._check_meter(node)
        if self._powered[node] and self._parent[node] >= 0:
            self.counters["reports_sent"] += 1
            size = self.config.report_bytes + FRAME_OVERHEAD_OCTETS
            self._enqueue(node, _Packet(_REPORT, node, size))

    def address(self, node: int) -> str:
        """IPv6 address of ``node`` (see the class docstring)."""
        self._check_node(node)
        return str(MESH_PREFIX.network_address + (_SHORT_IID | node))

    def node_of(self, address: str) -> int:
        """Node number of an address from :meth:`address`; :class:`UnknownNode` otherwise."""
        try:
            value = int(ipaddress.IPv6Address(address))
        except ValueError:
            value = -1
        iid = value - int(MESH_PREFIX.network_address)
        if value < 0 or not 0 <= iid < (1 << 64) or iid & ~0xFFFF != _SHORT_IID:
            raise UnknownNode(
                f"{address!r} is not an address of this mesh (expected {self.address(0)} .. "
                f"{self.address(self._n - 1)})"
            )
        node = iid & 0xFFFF
        if node >= self._n:
            raise UnknownNode(f"{address!r} is node {node}, but this mesh has 0..{self._n - 1}")
        return node

    def route(self, node: int) -> list[int] | None:
        """The root's source route ``[0, ..., node]`` (learned from DAOs), None if unknown."""
        self._check_node(node)
        return self._root_route(node)

    def hop_count(self, node: int) -> int | None:
        """Hops of the root's route to ``node`` (None without one)."""
        route = self.route(node)
        return None if route is None else len(route) - 1

    def parent(self, node: int) -> int | None:
        """The node's own preferred parent now (None for the root or a detached node)."""
        self._check_node(node)
        parent = self._parent[node]
        return None if parent < 0 else parent

    def rank(self, node: int) -> float:
        """Path ETX to the root from the last routing round (inf: unreachable)."""
        self._check_node(node)
        return self._rank[node]

    def neighbours(self, node: int) -> list[Neighbour]:
        """The node's links, strongest first, with its own ETX estimates."""
        self._check_node(node)
        out = []
        for other, d in zip(self._nbr[node], self._out[node], strict=True):
            margin = self._margin[d >> 1]
            out.append(Neighbour(other, margin + NOISE_FLOOR_DBM, margin, self._etx[d]))
        out.sort(key=lambda nb: (-nb.margin_db, nb.node))
        return out

    def hears(self, a: int, b: int) -> bool:
        """Whether node ``a`` hears node ``b`` (carrier sense and interference; symmetric)."""
        self._check_node(a)
        self._check_node(b)
        return b in self._hear[a]

    def set_attenuation_db(self, db: float) -> None:
        """Extra loss on every link of the root (an attenuator between dongle and antenna)."""
        if not 0 <= db <= 200 or not math.isfinite(db):
            raise MeshError(f"attenuation must be 0..200 dB, got {db}")
        self._attenuation_db = float(db)
        self._retune()

    def interference(self, duration_s: float, extra_loss_db: float) -> Burst:
        """One burst over the whole mesh: every link loses ``extra_loss_db`` of margin from
        now for ``duration_s`` (bursts that overlap add up)."""
        if not 0 < duration_s < 1e9:
            raise MeshError(f"interference duration must be positive, got {duration_s} s")
        if not 0 <= extra_loss_db <= 200:
            raise MeshError(f"interference loss must be 0..200 dB, got {extra_loss_db}")
        burst = Burst(self.now, self.now + duration_s, float(extra_loss_db))
        self._add_bursts([burst], None)
        return burst

    def start_interference(
        self,
        rate_per_s: float,
        mean_burst_s: float,
        penalty_db: float,
        duration_s: float,
        *,
        center: int | None = None,
        radius_m: float | None = None,
        seed: int | None = None,
    ) -> list[Burst]:
        """An interferer that bursts for the next ``duration_s``: bursts start as a Poisson
        process of ``rate_per_s`` and last an exponential time of mean ``mean_burst_s``
        (overlapping ones merge; none outlasts the window). During a burst every link with an
        end within ``radius_m`` of node ``center`` (every link without a centre) has its
        margin, i.e. its SINR, lowered by ``penalty_db``. The bursts are drawn now from a
        generator of their own (``seed``, else the mesh seed and the number of earlier calls),
        so the same calls give the same bursts and the mesh's own stream is untouched;
        returns them (sim time)."""
        checks = (
            ("rate_per_s", rate_per_s, 0 < rate_per_s <= 1000, "0 < rate <= 1000 per s"),
            ("mean_burst_s", mean_burst_s, 0 < mean_burst_s <= 1e6, "0 < mean <= 1e6 s"),
            ("penalty_db", penalty_db, 0 <= penalty_db <= 200, "0..200 dB"),
            ("duration_s", duration_s, 0 < duration_s <= 1e9, "0 < duration <= 1e9 s"),
        )
        for name, value, ok, valid in checks:
            if not (ok and math.isfinite(value)):
                raise MeshError(f"interference {name} = {value!r} is out of range: {valid}")
        mask: np.ndarray | None = None
        if center is not None:
            self._check_node(center)
            if radius_m is None or not 0 < radius_m < 1e7:
                raise MeshError(f"interference radius_m must be > 0 with a centre, got {radius_m}")
            pos = self.positions_m
            inside = np.hypot(*(pos - pos[center]).T) <= radius_m
            mask = (inside[self._link_a] | inside[self._link_b]).astype(float)
        self._interference_runs += 1
        key = [self.config.seed, self._interference_runs] if seed is None else [seed]
        rng = np.random.default_rng(key)
        end_of_window = self.now + duration_s
        spans: list[list[float]] = []
        t = self.now
        while True:
            t += float(rng.exponential(1.0 / rate_per_s))
            if t >= end_of_window:
                break
            end = min(t + float(rng.exponential(mean_burst_s)), end_of_window)
            if spans and t <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([t, end])
        bursts = [
            Burst(a, b, float(penalty_db), center, None if center is None else float(radius_m or 0))
            for a, b in spans
        ]
        self._add_bursts(bursts, mask)
        return bursts

    def stop_interference(self) -> list[Burst]:
        """End every burst now: planned ones are dropped, those on now end now. Returns
        :attr:`bursts` as they stand (what actually happened)."""
        now = self.now
        self.bursts = [
            b if b.end_s <= now else Burst(b.start_s, now, b.penalty_db, b.center, b.radius_m)
            for b in self.bursts
            if b.start_s <= now
        ]
        self._bursts = []
        self._retune()
        return list(self.bursts)

    def _add_bursts(self, bursts: list[Burst], mask: np.ndarray | None) -> None:
        for burst in bursts:
            self._bursts.append((burst, mask))
            self._push(burst.start_s, _EV_RETUNE, 0, 0)
            self._push(burst.end_s, _EV_RETUNE, 0, 0)
        self.bursts = sorted([*self.bursts, *bursts], key=lambda b: b.start_s)
        self._retune()

    def in_burst(self, start_s: float, end_s: float | None = None) -> bool | None:
        """Whether [start_s, end_s] lies inside one burst (True), clear of every burst
        (False) or straddles an edge (None)."""
        end = start_s if end_s is None else end_s
        for burst in self.bursts:
            if burst.start_s <= start_s and end <= burst.end_s:
                return True
            if start_s <= burst.end_s and burst.start_s <= end:
                return None
        return False

    def degrade_link(self, a: int, b: int, db: float) -> None:
        """Lower the margin of the link between nodes ``a`` and ``b`` (both directions) by
        ``db`` until set again; 0 restores it. No other link changes."""
        self._check_node(a)
        self._check_node(b)
        d = self._dl_of[a].get(b)
        if d is None:
            raise MeshError(f"nodes {a} and {b} are not neighbours: no link to degrade")
        if not 0 <= db <= 200 or not math.isfinite(db):
            raise MeshError(f"link degradation must be 0..200 dB, got {db}")
        self._link_extra_db[d >> 1] = float(db)
        self._retune()

    def degraded_links(self) -> list[tuple[int, int, float]]:
        """(a, b, dB) of every degraded link, a < b."""
        return [
            (self._link_a[i], self._link_b[i], float(self._link_extra_db[i]))
            for i in np.flatnonzero(self._link_extra_db).tolist()
        ]

    def power_off(self, node: int) -> None:
        """Cut a meter's power: it stops sending and hearing, its queue is lost."""
        self._check_meter(node)
        if not self._powered[node]:
            return
        self._powered[node] = False
        self._epoch[node] += 1
        self._parent[node] = -1
        self._dao_pending[node] = False
        reason = f"node {node} powered off"
        pkt = self._tx[node]
        self._tx[node] = None
        lost = ([pkt] if pkt is not None else []) + list(self._queue[node])
        self._queue[node].clear()
        for p in lost:
            self.counters["power_drops"] += 1
            self._lose(p, reason)

    def power_on(self, node: int) -> None:
        """Power a meter up: deaf for ``boot_s``, then it joins when its Trickle timer (reset
        to Imin at the end of the boot) first fires."""
        self._check_meter(node)
        if self._powered[node]:
            return
        self._powered[node] = True
        self._epoch[node] += 1
        self._boot_until[node] = self.now + self.config.boot_s
        self._parent[node] = -1
        self._seed_etx(node)
        self._trickle_reset(node, self._boot_until[node], force=True)

    def is_powered(self, node: int) -> bool:
        self._check_node(node)
        return self._powered[node]

    def routes_consistent(self) -> bool:
        """Whether, for every joined meter, the root's route is its parent chain."""
        for node in range(1, self._n):
            if self._parent[node] < 0:
                continue
            route = self._root_route(node)
            if route is None:
                return False
            for child, parent in zip(route[:0:-1], route[-2::-1], strict=True):
                if self._parent[child] != parent:
                    return False
        return True

    @property
    def meters(self) -> int:
        return self._n - 1

    # ---------------------------------------------------------------- event loop

    def _advance(self, t: float) -> None:
        if not math.isfinite(t) or t < self.now - 1e-9:
            raise MeshError(f"time only goes forward, finitely: now is {self.now}, asked for {t}")
        heap = self._heap
        pop = heapq.heappop
        node_epoch = self._epoch
        while heap and heap[0][0] <= t:
            when, _, kind, node, epoch = pop(heap)
            self.now = when
            if kind <= _EV_DONE:  # MAC events of one node's frame
                if epoch == node_epoch[node]:
                    if kind == _EV_CCA:
                        self._cca(node)
                    elif kind == _EV_TX_START:
                        self._tx_start(node)
                    elif kind == _EV_TX_END:
                        self._tx_end(node)
                    else:
                        self._tx_done(node)
            elif kind == _EV_REPORT:
                self._report(node)
            elif kind == _EV_DAO:
                if epoch == node_epoch[node]:
                    self._send_dao(node)
            elif kind == _EV_TRICKLE:
                if epoch == self._trickle_gen[node]:
                    self._trickle_fire(node)
            elif kind == _EV_DIO:
                self._refresh_ranks()
            else:
                self._retune()
        self.now = max(self.now, t)

    def _push(self, t: float, kind: int, node: int, epoch: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, node, epoch))

    def _u(self) -> float:
        """Next uniform [0, 1) of the simulator's single stream (drawn in blocks)."""
        i = self._ui
        if i >= _BLOCK:
            self._ubuf = self._rng.random(_BLOCK).tolist()
            i = 0
        self._ui = i + 1
        return self._ubuf[i]

    # ---------------------------------------------------------------- MAC

    def _enqueue(self, node: int, pkt: _Packet) -> None:
        queue = self._queue[node]
        if len(queue) >= self.config.queue_limit:
            self.counters["queue_drops"] += 1
            self._lose(pkt, f"queue full at {node}")
            return
        queue.append(pkt)
        if self._tx[node] is None:
            self._start_next(node)

    def _start_next(self, node: int) -> None:
        queue = self._queue[node]
        while queue:
            pkt = queue.popleft()
            if pkt.kind == _PROBE:
                nh = pkt.route[pkt.idx + 1]
            else:
                nh = self._parent[node]
                if nh < 0:
                    self.counters["no_parent_drops"] += 1
                    self._lose(pkt, f"no parent at {node}")
                    continue
            d = self._dl_of[node].get(nh)
            if d is None:  # a stale source route through a pair that is no link
                self._lose(pkt, f"{self._hop_name(pkt, node, nh)}: no link")
                continue
            size = pkt.size
            if pkt.kind == _PROBE:
                size += SOURCE_ROUTE_OCTETS + SOURCE_ROUTE_OCTETS_PER_HOP * (len(pkt.route) - 2)
                size = min(size, MAX_PSDU_OCTETS)
            air = self._airtime.get(size)
            if air is None:
                air = self._airtime[size] = frame_airtime_s(size, self.config.rate_bps)
            self.counters["frames_sent"] += 1
            self._tx[node] = pkt
            self._tx_nh[node] = nh
            self._tx_dl[node] = d
            self._tx_air[node] = air
            self._tx_attempts[node] = 0
            self._tx_rx_epoch[node] = self._epoch[nh]
            self._attempt(node, self.now)
            return

    def _attempt(self, node: int, t: float) -> None:
        """Start the next transmission attempt of the node's frame at ``t``: CSMA-CA afresh
        (NB = 0, BE = macMinBE), as 802.15.4 runs it before every (re)transmission."""
        self._tx_attempts[node] += 1
        self._nb[node] = 0
        self._be[node] = MAC_MIN_BE
        self._backoff(node, t, MAC_MIN_BE)

    def _backoff(self, node: int, t: float, be: int) -> None:
        """Wait a random 0 .. 2**BE - 1 unit backoff periods from ``t``, then CCA."""
        start = t + int(self._u() * (1 << be)) * self._unit
        self._cca_from[node] = start
        self._push(start + self._cca_s, _EV_CCA, node, self._epoch[node])

    def channel(self, node: int, t: float) -> int:
        """The channel ``node`` listens on at time ``t``: its own pseudo-random hop sequence
        over ``channels``, one channel per ``dwell_s`` (unicast frames to it go there)."""
        channels = self.config.channels
        if channels == 1:
            return 0
        h = (node * 0x9E3779B1 + int(t / self.config.dwell_s) * 0x85EBCA77) & 0xFFFFFFFF
        h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        return (h ^ (h >> 12)) % channels

    def _cca(self, node: int) -> None:
        """End of a CCA window, on the receiver's channel: busy when a transmission audible
        here on that channel overlapped the window."""
        if self.config.contention:  # without it the channel is never looked at
            start = self._cca_from[node]
            ch = self._tx_ch[node] = self.channel(self._tx_nh[node], start)
            busy = (
                self._busy_until[node][ch] > start
                or self._tx_until[node] > start
                or self._rx_end[node] > start  # receiving: the radio cannot turn to send
            )
        else:
            busy = False
        if busy:
            self._channel_busy(node)
        else:  # clear: RX-to-TX turnaround, then on air (others may start meanwhile)
            self._push(self.now + TURNAROUND_S, _EV_TX_START, node, self._epoch[node])

    def _channel_busy(self, node: int) -> None:
        self.counters["cca_busy"] += 1
        nb = self._nb[node] + 1
        if nb > MAC_MAX_CSMA_BACKOFFS:
            self.counters["channel_access_failures"] += 1
            self._tx_ok[node] = False
            self._tx_why[node] = _WHY_CHANNEL_ACCESS
            self._tx_done(node)
            return
        be = min(self._be[node] + 1, MAC_MAX_BE)
        self._nb[node] = nb
        self._be[node] = be
        self._backoff(node, self.now, be)

    def _occupy(self, node: int, end: float, ch: int) -> None:
        """``node`` transmits on channel ``ch`` from now until ``end``: every reception on
        ``ch`` in progress where it is audible is corrupted (a collision), ``ch`` there is busy
        until ``end``, and its own reception stops (half-duplex)."""
        now = self.now
        rx_end, rx_ok, rx_ch, busy = self._rx_end, self._rx_ok, self._rx_ch, self._busy_until
        if rx_end[node] > now:
            rx_ok[node] = False
        if self._tx_until[node] < end:
            self._tx_until[node] = end
        for v in self._hear[node]:
            if rx_end[v] > now and rx_ch[v] == ch:
                rx_ok[v] = False
            row = busy[v]
            if row[ch] < end:
                row[ch] = end

    def _tx_start(self, node: int) -> None:
        now = self.now
        contention = self.config.contention
        if contention and self._tx_until[node] > now:  # sending an ACK: try again later
            self._channel_busy(node)
            return
        nh = self._tx_nh[node]
        end = now + self._tx_air[node]
        if not contention:  # the frame reaches a listening receiver; the link decides
            self._tx_clear[node] = True
            self._tx_hears[node] = self._powered[nh] and now >= self._boot_until[nh]
            self._push(end, _EV_TX_END, node, self._epoch[node])
            return
        # the receiver locks on only when nothing it can hear is on air and it is not sending
        ch = self._tx_ch[node]
        clear = self._busy_until[nh][ch] <= now and self._tx_until[nh] <= now
        hears = self._powered[nh] and now >= self._boot_until[nh]
        self._occupy(node, end, ch)
        self._tx_clear[node] = clear
        self._tx_hears[node] = hears
        if clear and hears:
            self._rx_ch[nh] = ch
            self._rx_end[nh] = end
            self._rx_src[nh] = node
            self._rx_ok[nh] = True
        self._push(end, _EV_TX_END, node, self._epoch[node])

    def _tx_end(self, node: int) -> None:
        """The frame is off the air: decide this attempt (collision, then the link's
        Gilbert-Elliott channel), then ACK, retry or give up."""
        now = self.now
        nh, d = self._tx_nh[node], self._tx_dl[node]
        counters = self.counters
        counters["attempts"] += 1
        ok = False
        alive = self._powered[nh] and self._epoch[nh] == self._tx_rx_epoch[node]
        if self._tx_hears[node] and alive:
            collided = self.config.contention and not (
                self._tx_clear[node] and self._rx_src[nh] == node and self._rx_ok[nh]
            )
            u = self._u
            link = d >> 1
            if now - self._last_t[d] > self.config.channel_memory_s:
                bad = gilbert_fresh_state(u(), self._p_bad[link])
            else:
                bad = self._bad[d]
            delivered, self._bad[d] = gilbert_step(
                bad, u(), u(), self._p_gb[link], self._p_bg[link]
            )
            self._last_t[d] = now
            if collided:
                counters["collisions"] += 1
            ok = delivered and not collided
        if ok:
            counters["acks"] += 1
            ack_end = now + self._ack_ok
            if self.config.contention:  # turnaround + immediate ACK (no CSMA-CA)
                self._occupy(nh, ack_end, self._tx_ch[node])
            self._tx_ok[node] = True
            self._push(ack_end, _EV_DONE, node, self._epoch[node])
        elif self._tx_attempts[node] < self._max_attempts:
            self._attempt(node, now + self._ack_wait)
        else:
            self._tx_ok[node] = False
            self._tx_why[node] = _WHY_NO_ACK
            self._push(now + self._ack_wait, _EV_DONE, node, self._epoch[node])

    def _tx_done(self, node: int) -> None:
        pkt = self._tx[node]
        if pkt is None:
            return
        self._tx[node] = None
        nh, d = self._tx_nh[node], self._tx_dl[node]
        alive = self._powered[nh] and self._epoch[nh] == self._tx_rx_epoch[node]
        ok = self._tx_ok[node] and alive
        attempts = self._tx_attempts[node]
        access_failure = not ok and self._tx_why[node] == _WHY_CHANNEL_ACCESS
        if not access_failure:  # link statistics learn from ACKs and missing ACKs only
            sample = float(attempts) if ok else ETX_FAIL_PENALTY
            self._etx[d] += ETX_ALPHA * (sample - self._etx[d])
            self._etx_t[d] = self.now
        if ok:
            self.acked_at_attempt[attempts] += 1
            if attempts == 1:
                self.counters["first_attempt_acks"] += 1
            if pkt.kind == _PROBE:
                pkt.idx += 1
                if pkt.idx == len(pkt.route) - 1:
                    pkt.kind = _ECHO  # the target answers: the echo goes back up
                    pkt.origin = nh
                self._enqueue(nh, pkt)
            elif nh == 0:
                self._at_root(pkt)
            else:
                pkt.hops += 1
                self._enqueue(nh, pkt)
        elif access_failure:
            self._lose(pkt, f"{self._hop_name(pkt, node, nh)}: channel access failure")
        else:
            self.counters["retries_exhausted"] += 1
            if not self._powered[nh]:
                why = f"node {nh} powered off"
            elif not alive or not self._tx_hears[node]:
                why = f"node {nh} booting"
            else:
                why = "retries exhausted"
            self._lose(pkt, f"{self._hop_name(pkt, node, nh)}: {why}")
            if pkt.kind != _PROBE and nh == self._parent[node]:
                self._local_repair(node, nh)
        self._start_next(node)

    def _hop_name(self, pkt: _Packet, node: int, nh: int) -> str:
        if pkt.kind == _PROBE:
            return f"down hop {pkt.idx + 1} ({node}->{nh})"
        return f"up hop {pkt.hops + 1} ({node}->{nh})"

    def _lose(self, pkt: _Packet, reason: str) -> None:
        kind = pkt.kind
        if kind in (_PROBE, _ECHO):
            self._complete(pkt.probe, False, reason)
        elif kind == _DAO:
            self.counters["daos_lost"] += 1
            origin = pkt.origin
            if pkt.dao_seq == self._dao_seq[origin] and self._powered[origin]:
                self._request_dao(origin, DAO_RETRY_S)
        else:
            self.counters["reports_lost"] += 1

    def _at_root(self, pkt: _Packet) -> None:
        kind = pkt.kind
        if kind == _ECHO:
            self._complete(pkt.probe, True, None)
        elif kind == _REPORT:
            self.counters["reports_delivered"] += 1
        elif kind == _DAO:
            self.counters["daos_received"] += 1
            origin = pkt.origin
            if pkt.dao_seq > self._root_seq[origin]:
                self._root_seq[origin] = pkt.dao_seq
                self._root_parent[origin] = pkt.dao_parent

    def _complete(self, pid: int, delivered: bool, reason: str | None) -> None:
        node, hops, sent = self._probes.pop(pid)
        self.counters["probes_delivered" if delivered else "probes_lost"] += 1
        rtt = self.now - sent if delivered else None
        self._completed.append(
            ProbeResult(
                pid, node, hops, sent, self.now, delivered, rtt, None if delivered else reason
            )
        )

    # ---------------------------------------------------------------- traffic

    def _report(self, node: int) -> None:
        cfg = self.config
        jitter = 1.0 + REPORT_JITTER * (2.0 * self._u() - 1.0)
        self._push(self.now + cfg.report_interval_s * jitter, _EV_REPORT, node, 0)
        self.send_report(node)

    def _request_dao(self, node: int, delay: float) -> None:
        if not self._dao_pending[node]:
            self._dao_pending[node] = True
            self._push(self.now + delay, _EV_DAO, node, self._epoch[node])

    def _send_dao(self, node: int) -> None:
        self._dao_pending[node] = False
        parent = self._parent[node]
        if not self._powered[node] or parent < 0:
            return
        self._dao_seq[node] += 1
        pkt = _Packet(_DAO, node, DAO_OCTETS + FRAME_OVERHEAD_OCTETS)
        pkt.dao_parent = parent
        pkt.dao_seq = self._dao_seq[node]
        self.counters["daos_sent"] += 1
        self._enqueue(node, pkt)

    # ---------------------------------------------------------------- routing

    def _dio_round(self, *, schedule_daos: bool) -> None:
        """The DODAG as it forms (once, at construction): ranks and parents of every powered,
        booted node. Later changes are local (:meth:`_trickle_fire`, :meth:`_local_repair`).

        Dijkstra from the root (each edge weighted by the child's own ETX estimate) gives an
        order in which every node comes after a neighbour closer to the root. In that order
        each node takes the best rank(u) + ETX(node -> u) among the neighbours already ranked,
        unless its current parent, already ranked, is within ``parent_switch_threshold`` of
        it (MRHOF hysteresis); its rank is then the path cost through the chosen parent, as in
        RPL. Parents come earlier in the order and have strictly lower rank: no loops.
        """
        cfg = self.config
        n = self._n
        now = self.now
        eligible = [p and now >= b for p, b in zip(self._powered, self._boot_until, strict=True)]
        self._refresh_stale_etx()
        dist = [_INF] * n
        dist[0] = 0.0
        etx = self._etx
        order: list[int] = []
        heap = [(0.0, 0)]
        while heap:
            du, u = heapq.heappop(heap)
            if du > dist[u]:
                continue
            order.append(u)
            for v, d_vu in zip(self._nbr[u], self._inn[u], strict=True):
                nd = du + etx[d_vu]
                if nd < dist[v] and eligible[v]:
                    dist[v] = nd
                    heapq.heappush(heap, (nd, v))
        rank = [_INF] * n
        rank[0] = 0.0
        parent = self._parent
        threshold = cfg.parent_switch_threshold
        changed: list[int] = []
        for v in order[1:]:
            best, best_cost = -1, _INF
            for u, d in zip(self._nbr[v], self._out[v], strict=True):
                cost = rank[u] + etx[d]
                if cost < best_cost:
                    best, best_cost = u, cost
            old = parent[v]
            if old >= 0 and rank[old] < _INF:
                kept = rank[old] + etx[self._dl_of[v][old]]
                if kept <= best_cost + threshold:
                    rank[v] = kept
                    continue
            old_cost = _INF
            if old >= 0 and rank[old] < _INF:
                old_cost = rank[old] + etx[self._dl_of[v][old]]
            rank[v] = best_cost
            parent[v] = best
            self.counters["joins" if old < 0 else "parent_switches"] += 1
            self.parent_changes.append(
                ParentChange(
                    now,
                    v,
                    None if old < 0 else old,
                    best,
                    "join" if old < 0 else "mrhof",
                    old_cost,
                    best_cost,
                )
            )
            changed.append(v)
        for v in range(1, n):
            if rank[v] == _INF:
                parent[v] = -1
        self._rank = rank
        if schedule_daos:
            for v in changed:
                self._request_dao(v, self._u() * cfg.dao_delay_s)

    def _refresh_ranks(self) -> None:
        """Ranks as the DIOs advertise them now: along the parent tree from the root, each
        node's rank is its parent's plus its own ETX to it. A node whose parent chain no longer
        reaches the root (a parent powered off or detached) is detached and resets its Trickle
        timer, so it looks for a new parent within Imin."""
        n = self._n
        now = self.now
        parent, powered, boot = self._parent, self._powered, self._boot_until
        children: list[list[int]] = [[] for _ in range(n)]
        for v in range(1, n):
            p = parent[v]
            if p >= 0:
                children[p].append(v)
        rank = [_INF] * n
        rank[0] = 0.0
        etx, dl_of = self._etx, self._dl_of
        stack = [0]
        while stack:
            u = stack.pop()
            ru = rank[u]
            for v in children[u]:
                if powered[v] and now >= boot[v]:
                    rank[v] = ru + etx[dl_of[v][u]]
                    stack.append(v)
        for v in range(1, n):
            if rank[v] == _INF and powered[v] and now >= boot[v]:
                if parent[v] >= 0:
                    parent[v] = -1
                    self.counters["detaches"] += 1
                self._trickle_reset(v, now)
        self._rank = rank
        self.counters["dio_rounds"] += 1
        jitter = 1.0 + DIO_JITTER * (2.0 * self._u() - 1.0)
        self._push(now + self.config.dio_interval_s * jitter, _EV_DIO, 0, 0)

    def _trickle_reset(self, node: int, start: float, *, force: bool = False) -> None:
        """An inconsistency: the node's Trickle interval starts again at Imin from ``start``
        (RFC 6206 section 4.2; nothing happens while I is already Imin, unless forced)."""
        imin = self.config.trickle_imin_s
        if not force and self._trickle_i[node] <= imin and self._trickle_end[node] > start:
            return
        self._trickle_i[node] = imin
        self._trickle_end[node] = start + imin
        self._trickle_gen[node] += 1
        fire = start + imin * (0.5 + 0.5 * self._u())
        self._push(fire, _EV_TRICKLE, node, self._trickle_gen[node])

    def _trickle_fire(self, node: int) -> None:
        """The node's Trickle timer fires (its DIO; it has heard its neighbours' DIOs): it
        re-evaluates its parent, then the next interval, twice as long up to Imax, begins."""
        self.counters["dios"] += 1
        start = self._trickle_end[node]
        interval = min(2.0 * self._trickle_i[node], self._imax)
        self._trickle_i[node] = interval
        self._trickle_end[node] = start + interval
        self._push(start + interval * (0.5 + 0.5 * self._u()), _EV_TRICKLE, node,
                   self._trickle_gen[node])  # fmt: skip
        if self._powered[node] and self.now >= self._boot_until[node]:
            self._choose_parent(node)

    def _choose_parent(self, node: int) -> None:
        """MRHOF (RFC 6719) at one node: the neighbour of least rank + ETX among those of
        lower rank (any whose parent chain reaches the root without this node, when it has no
        parent); switch only when it beats the current parent by ``parent_switch_threshold``."""
        self._refresh_stale_etx(node)
        rank, etx, parent = self._rank, self._etx, self._parent
        old = parent[node]
        mine = rank[node] if old >= 0 else _INF
        best, best_cost = -1, _INF
        for u, d in zip(self._nbr[node], self._out[node], strict=True):
            ru = rank[u]
            if ru < mine and ru < _INF and (old >= 0 or self._reaches_root(u, node)):
                cost = ru + etx[d]
                if cost < best_cost:
                    best, best_cost = u, cost
        if best < 0:
            return
        if old < 0:
            parent[node] = best
            rank[node] = best_cost
            self.counters["joins"] += 1
            self.parent_changes.append(
                ParentChange(self.now, node, None, best, "join", _INF, best_cost)
            )
        else:
            kept = rank[old] + etx[self._dl_of[node][old]]
            if best == old or best_cost + self.config.parent_switch_threshold >= kept:
                return
            parent[node] = best
            self.counters["parent_switches"] += 1
            self.parent_changes.append(
                ParentChange(self.now, node, old, best, "mrhof", kept, best_cost)
            )
        self._request_dao(node, self._u() * self.config.dao_delay_s)
        self._trickle_reset(node, self.now)

    def _reaches_root(self, u: int, node: int) -> bool:
        parent = self._parent
        for _ in range(self._n):
            if u == 0:
                return True
            if u == node or u < 0:
                return False
            u = parent[u]
        return False

    def _local_repair(self, node: int, failed: int) -> None:
        rank = self._rank
        mine = rank[node]
        best, best_cost = -1, _INF
        for u, d in zip(self._nbr[node], self._out[node], strict=True):
            if u != failed and rank[u] < mine:
                cost = rank[u] + self._etx[d]
                if cost < best_cost:
                    best, best_cost = u, cost
        old_cost = rank[failed] + self._etx[self._dl_of[node][failed]]
        if best >= 0 and best_cost + self.config.parent_switch_threshold < old_cost:
            self._parent[node] = best
            self.parent_changes.append(
                ParentChange(self.now, node, failed, best, "local_repair", old_cost, best_cost)
            )
            self.counters["parent_switches"] += 1
            self.counters["local_repairs"] += 1
            self._request_dao(node, self._u() * self.config.dao_delay_s)
            self._trickle_reset(node, self.now)

    def _root_route(self, node: int) -> list[int] | None:
        if node == 0:
            return [0]
        path = [node]
        parent = self._root_parent
        for _ in range(self._n):
            node = parent[node]
            if node < 0:
                return None
            path.append(node)
            if node == 0:
                path.reverse()
                return path
        return None  # the root's stale view holds a loop

    # ---------------------------------------------------------------- links

    def _retune(self) -> None:
        """Recompute current margins and channel parameters (attenuation, degraded links,
        the interference bursts on now)."""
        now = self.now
        self._bursts = [(b, mask) for b, mask in self._bursts if b.end_s > now]
        margin = self._base_margin - self._link_extra_db - self._attenuation_db * self._root_link
        for burst, mask in self._bursts:
            if burst.start_s <= now:
                margin = margin - (burst.penalty_db if mask is None else burst.penalty_db * mask)
        p_gb, p_bg, p_bad = gilbert_from_margin(margin)
        self._margin = margin.tolist()
        self._p_gb = p_gb.tolist()
        self._p_bg = p_bg.tolist()
        self._p_bad = p_bad.tolist()

    def _seed_etx(self, node: int) -> None:
        for d in self._out[node]:
            self._etx[d] = _etx_seed(self._margin[d >> 1])
            self._etx_t[d] = self.now

    def _refresh_stale_etx(self, node: int | None = None) -> None:
        """Seed again the estimates (of ``node``'s links, else all) unused for too long."""
        limit = self.now - self.config.etx_freshness_s
        margin, etx, stamp = self._margin, self._etx, self._etx_t
        links = range(len(stamp)) if node is None else self._out[node]
        for d in [d for d in links if stamp[d] < limit]:
            etx[d] = _etx_seed(margin[d >> 1])
            stamp[d] = self.now

    def _check_node(self, node: int) -> None:
        if not isinstance(node, int | np.integer) or not 0 <= node < self._n:
            raise UnknownNode(f"node {node!r} is not in this mesh (0..{self._n - 1})")

    def _check_meter(self, node: int) -> None:
        self._check_node(node)
        if node == 0:
            raise MeshError("node 0 is the root (the dongle itself); give a meter 1..N")


def ack_wait_s(rate_bps: int = 50_000) -> float:
    """How long a sender waits for a missing ACK before the next attempt.

    IEEE 802.15.4-2006 7.4.2 macAckWaitDuration = aUnitBackoffPeriod + aTurnaroundTime +
    phySHRDuration + the ACK's PHR and PSDU symbols; with the SUN ACK that is the unit backoff
    period + turnaround + :func:`airtime.ack_airtime_s` (5.2 ms at 50 kbps).
    """
    return unit_backoff_period_s(rate_bps) + TURNAROUND_S + ack_airtime_s(rate_bps)
