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
  parameters follow the link's CURRENT margin exactly like :func:`links.link_from_margin`
  (stationary P(Bad) = 1 - delivery_probability(margin); burst length 1 / TYPICAL_R where
  possible, longer for links too poor for it: :func:`links.gilbert_rates`).
  The state steps once per attempt; after ``channel_memory_s`` without an attempt it is drawn
  afresh from the stationary distribution (the idle gap is much longer than a burst).
- MAC per hop: a node's radio is half-duplex and serial (one frame at a time, FIFO queue of
  ``queue_limit``; overflow drops). Each attempt = one unslotted CSMA-CA backoff (NB = 0: the
  channel is always found clear, drawn like :func:`airtime.random_backoff_s`) + CCA + RX-to-TX
  turnaround + frame airtime; then turnaround + ACK airtime on success, or
  :data:`ACK_WAIT_S` on failure; at most ``1 + max_frame_retries`` attempts. A frame's
  attempts are resolved when it starts (no one else uses that directed channel meanwhile); a
  receiver that is off or booting, or that powers off before the frame ends, fails it.
- Routing: RPL non-storing mode with MRHOF over ETX. Each node keeps an ETX estimate per
  neighbour, seeded from the link margin (as stacks seed it from the RSL) and updated by an
  EWMA of its own frames (attempts used, or :data:`ETX_FAIL_PENALTY` for a failed frame);
  an estimate left unused for ``etx_freshness_s`` is seeded again from the current margin.
  Every ``dio_interval_s`` (jittered) ranks are recomputed by Dijkstra from the root over the
  nodes that are powered and booted, each edge weighted by the child's own ETX estimate; a
  node keeps its parent unless the best path is better by ``parent_switch_threshold`` (or the
  parent no longer has a strictly lower rank), and only nodes of strictly lower rank are
  candidates, so parent pointers can never loop. A frame to the parent that exhausts its
  retries makes the node switch at once (local repair) to the best other candidate of lower
  rank. After a parent change the node sends a DAO (a real packet, after a random delay up to
  ``dao_delay_s``); the root's source routes change only when a DAO arrives, so downward
  probes use the root's possibly stale view.
- Traffic: every meter sends a ``report_bytes`` reading to the root every
  ``report_interval_s`` (random phase, +-5 % jitter); probes go root -> meter by source route
  and the echo comes back up along parent pointers.

NOT modelled: collisions, hidden terminals, busy-channel CCA failures, a busy receiver (a
node hears any number of frames at once), ACK loss apart from the data frame (an attempt
succeeds or fails as a whole), duplicates, fragmentation, frequency hopping, multiple
parents, DIO trickle timers (one global routing round) and DAO-ACK packets: a DAO lost on
the way is re-sent by its origin after :data:`DAO_RETRY_S`, as a missing DAO-ACK would make it.

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
    MAC_MIN_BE,
    MAX_PSDU_OCTETS,
    TURNAROUND_S,
    ack_airtime_s,
    frame_airtime_s,
    unit_backoff_period_s,
)
from bench.mesh.links import (
    MARGIN_SLOPE_DB,
    NOISE_FLOOR_DBM,
    TYPICAL_FIRST_ATTEMPT,
    TYPICAL_MARGIN_DB,
    TYPICAL_R,
    delivery_probability,
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
_EV_TX_DONE, _EV_REPORT, _EV_DIO, _EV_DAO, _EV_RETUNE = 0, 1, 2, 3, 4


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
    max_frame_retries: int = 3
    report_interval_s: float = 60.0
    """Upward reading period of each meter; ``math.inf`` turns the readings off."""
    report_bytes: int = 60
    dio_interval_s: float = 30.0
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

        for name in ("meters", "seed", "rate_bps", "max_frame_retries", "report_bytes"):
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
            ("max_frame_retries", 0 <= self.max_frame_retries <= 7, "0..7 (802.15.4)"),
            ("report_interval_s", self.report_interval_s >= 1.0, ">= 1 s (math.inf: off)"),
            (
                "report_bytes",
                1 <= self.report_bytes <= MAX_PSDU_OCTETS - FRAME_OVERHEAD_OCTETS,
                f"1..{MAX_PSDU_OCTETS - FRAME_OVERHEAD_OCTETS} octets",
            ),
            ("dio_interval_s", 1.0 <= self.dio_interval_s <= 3600, "1..3600 s"),
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


def _delivery_array(margin_db: np.ndarray) -> np.ndarray:
    """Vectorised :func:`links.delivery_probability` (same logistic, same constants)."""
    m50 = TYPICAL_MARGIN_DB - MARGIN_SLOPE_DB * math.log(
        TYPICAL_FIRST_ATTEMPT / (1 - TYPICAL_FIRST_ATTEMPT)
    )
    x = np.clip((margin_db - m50) / MARGIN_SLOPE_DB, -700.0, 700.0)
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=float)


def gilbert_from_margin(margin_db: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_good_to_bad, p_bad_to_good, stationary P(Bad)) per margin, as
    :func:`links.link_from_margin` sets them (vectorised :func:`links.gilbert_rates`)."""
    pb = np.minimum(1.0 - _delivery_array(np.asarray(margin_db, dtype=float)), 0.999)
    p = TYPICAL_R * pb / (1.0 - pb)
    worse = p > 1.0
    r = np.where(worse, (1.0 - pb) / pb, TYPICAL_R)
    return np.minimum(p, 1.0), r, pb


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

    ``counters``: ``frames_sent`` (MAC frames started), ``attempts``, ``acks`` (attempts that
    got through), ``first_attempt_acks``, ``retries_exhausted`` (failed frames, a dead or
    booting receiver included), ``queue_drops``, ``no_parent_drops``, ``power_drops``
    (packets lost with a meter's power), ``parent_switches``, ``local_repairs``, ``joins``,
    ``dio_rounds``, ``daos_sent`` / ``_received`` / ``_lost``, ``reports_sent`` /
    ``_delivered`` / ``_lost`` and ``probes_sent`` / ``_delivered`` / ``_lost``.
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
                "queue_drops", "no_parent_drops", "power_drops", "parent_switches", "joins",
                "local_repairs", "dio_rounds", "daos_sent", "daos_received", "daos_lost",
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
        self._attenuation_db = 0.0
        self._interference: list[tuple[float, float]] = []
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
        self._backoff_slots = float(1 << MAC_MIN_BE)
        self._pre_tx = CCA_SYMBOLS / rate + TURNAROUND_S
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
        self._tx_attempts = [0] * n
        self._tx_rx_epoch = [0] * n
        self._tx_hears = [False] * n
        self._dao_seq = [0] * n
        self._dao_pending = [False] * n
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

    def set_attenuation_db(self, db: float) -> None:
        """Extra loss on every link of the root (an attenuator between dongle and antenna)."""
        if not 0 <= db <= 200 or not math.isfinite(db):
            raise MeshError(f"attenuation must be 0..200 dB, got {db}")
        self._attenuation_db = float(db)
        self._retune()

    def interference(self, duration_s: float, extra_loss_db: float) -> None:
        """Add ``extra_loss_db`` to every link from now for ``duration_s`` (windows add up)."""
        if not 0 < duration_s < 1e9:
            raise MeshError(f"interference duration must be positive, got {duration_s} s")
        if not 0 <= extra_loss_db <= 200:
            raise MeshError(f"interference loss must be 0..200 dB, got {extra_loss_db}")
        end = self.now + duration_s
        self._interference.append((end, float(extra_loss_db)))
        self._retune()
        self._push(end, _EV_RETUNE, 0, 0)

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
        """Power a meter up: deaf for ``boot_s``, then it joins at the next routing round."""
        self._check_meter(node)
        if self._powered[node]:
            return
        self._powered[node] = True
        self._epoch[node] += 1
        self._boot_until[node] = self.now + self.config.boot_s
        self._parent[node] = -1
        self._seed_etx(node)

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
        while heap and heap[0][0] <= t:
            when, _, kind, node, epoch = pop(heap)
            self.now = when
            if kind == _EV_TX_DONE:
                if epoch == self._epoch[node]:
                    self._tx_done(node)
            elif kind == _EV_REPORT:
                self._report(node)
            elif kind == _EV_DAO:
                if epoch == self._epoch[node]:
                    self._send_dao(node)
            elif kind == _EV_DIO:
                self._dio_round(schedule_daos=True)
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
            self._transmit(node, nh, d, pkt)
            return

    def _transmit(self, node: int, nh: int, d: int, pkt: _Packet) -> None:
        """Resolve all attempts of one frame now and schedule its end."""
        size = pkt.size
        if pkt.kind == _PROBE:
            size += SOURCE_ROUTE_OCTETS + SOURCE_ROUTE_OCTETS_PER_HOP * (len(pkt.route) - 2)
            size = min(size, MAX_PSDU_OCTETS)
        air = self._airtime.get(size)
        if air is None:
            air = self._airtime[size] = frame_airtime_s(size, self.config.rate_bps)
        hears = self._powered[nh] and self.now >= self._boot_until[nh]
        u = self._u
        link = d >> 1
        p_gb, p_bg, p_bad = self._p_gb[link], self._p_bg[link], self._p_bad[link]
        memory = self.config.channel_memory_s
        t = self.now
        ok = False
        attempts = 0
        for _ in range(self._max_attempts):
            attempts += 1
            t += int(u() * self._backoff_slots) * self._unit + self._pre_tx + air
            if hears:
                bad = u() < p_bad if t - self._last_t[d] > memory else self._bad[d]
                ok = not bad
                if u() < (p_bg if bad else p_gb):
                    bad = not bad
                self._bad[d] = bad
                self._last_t[d] = t
            if ok:
                t += self._ack_ok
                break
            t += self._ack_wait
        counters = self.counters
        counters["frames_sent"] += 1
        counters["attempts"] += attempts
        if ok:
            counters["acks"] += 1
            if attempts == 1:
                counters["first_attempt_acks"] += 1
        self._tx[node] = pkt
        self._tx_nh[node] = nh
        self._tx_dl[node] = d
        self._tx_ok[node] = ok
        self._tx_attempts[node] = attempts
        self._tx_rx_epoch[node] = self._epoch[nh]
        self._tx_hears[node] = hears
        self._push(t, _EV_TX_DONE, node, self._epoch[node])

    def _tx_done(self, node: int) -> None:
        pkt = self._tx[node]
        if pkt is None:
            return
        self._tx[node] = None
        nh, d = self._tx_nh[node], self._tx_dl[node]
        alive = self._powered[nh] and self._epoch[nh] == self._tx_rx_epoch[node]
        ok = self._tx_ok[node] and alive
        sample = float(self._tx_attempts[node]) if ok else ETX_FAIL_PENALTY
        self._etx[d] += ETX_ALPHA * (sample - self._etx[d])
        self._etx_t[d] = self.now
        if ok:
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
        if self._powered[node] and self._parent[node] >= 0:
            self.counters["reports_sent"] += 1
            self._enqueue(node, _Packet(_REPORT, node, cfg.report_bytes + FRAME_OVERHEAD_OCTETS))

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
        """One routing round: ranks and parents of every powered, booted node.

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
            rank[v] = best_cost
            parent[v] = best
            self.counters["joins" if old < 0 else "parent_switches"] += 1
            changed.append(v)
        for v in range(1, n):
            if rank[v] == _INF:
                parent[v] = -1
        self._rank = rank
        if schedule_daos:
            for v in changed:
                self._request_dao(v, self._u() * cfg.dao_delay_s)
        self.counters["dio_rounds"] += 1
        jitter = 1.0 + DIO_JITTER * (2.0 * self._u() - 1.0)
        self._push(now + cfg.dio_interval_s * jitter, _EV_DIO, 0, 0)

    def _local_repair(self, node: int, failed: int) -> None:
        rank = self._rank
        mine = rank[node]
        best, best_cost = -1, _INF
        for u, d in zip(self._nbr[node], self._out[node], strict=True):
            if u != failed and rank[u] < mine:
                cost = rank[u] + self._etx[d]
                if cost < best_cost:
                    best, best_cost = u, cost
        if best >= 0:
            self._parent[node] = best
            self.counters["parent_switches"] += 1
            self.counters["local_repairs"] += 1
            self._request_dao(node, self._u() * self.config.dao_delay_s)

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
        """Recompute current margins and channel parameters (attenuation, interference)."""
        self._interference = [(end, db) for end, db in self._interference if end > self.now]
        extra = sum(db for _, db in self._interference)
        margin = self._base_margin - extra - self._attenuation_db * self._root_link
        p_gb, p_bg, p_bad = gilbert_from_margin(margin)
        self._margin = margin.tolist()
        self._p_gb = p_gb.tolist()
        self._p_bg = p_bg.tolist()
        self._p_bad = p_bad.tolist()

    def _seed_etx(self, node: int) -> None:
        for d in self._out[node]:
            self._etx[d] = _etx_seed(self._margin[d >> 1])
            self._etx_t[d] = self.now

    def _refresh_stale_etx(self) -> None:
        limit = self.now - self.config.etx_freshness_s
        margin, etx, stamp = self._margin, self._etx, self._etx_t
        for d in [d for d, t in enumerate(stamp) if t < limit]:
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
