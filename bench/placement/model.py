"""Per-tier decision latency, energy and backhaul bytes for a workload, from measured numbers.

Latency of a decision made at a tier, for data that originates at ``origin`` and a decision
that goes back there (the actuator sits with the data):

- propagation: 5 us per km of fibre each way (light in glass at about c/1.47), so
  ``2 * distance_km * 0.005`` ms for the round trip;
- where the path crosses the backhaul (edge, cloud): serialization of one payload at the
  measured backhaul bandwidth plus the measured backhaul RTT (p50 for p50, p99 for p99);
- inference on the tier's hardware: measured p50 / p99 (never invented: a tier with no
  run standing for it is "unmeasured"; a device that cannot run the model "not possible").

The budget is judged on p99. Backhaul bytes per day count payload plus the per-message
link overhead measured with nftables counters (when a run measured it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from bench.placement.measured import Measurements, Number
from bench.placement.workload import TIERS, Workload
from bench.results.units import PROPAGATION_MS_PER_KM

SECONDS_PER_DAY: Final = 86_400
BACKHAUL_TIERS: Final = ("edge", "cloud")


@dataclass(frozen=True)
class Term:
    """One part of a tier's decision latency (p50 and p99, in ms) and where it came from."""

    name: str
    p50_ms: float
    p99_ms: float
    sources: tuple[Number, ...] = ()
    basis: str = "measured"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "basis": self.basis,
            "sources": [s.source for s in self.sources],
        }


@dataclass
class TierResult:
    """What running the decision at one tier would give."""

    tier: str
    status: str  # "ok", "unmeasured", "not possible"
    terms: list[Term] = field(default_factory=list)
    energy_mj: Number | None = None
    backhaul_bytes_per_day: float | None = None
    meets_budget: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def p50_ms(self) -> float | None:
        return sum(t.p50_ms for t in self.terms) if self.status == "ok" else None

    @property
    def p99_ms(self) -> float | None:
        return sum(t.p99_ms for t in self.terms) if self.status == "ok" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "status": self.status,
            "latency_p50_ms": self.p50_ms,
            "latency_p99_ms": self.p99_ms,
            "meets_budget": self.meets_budget,
            "terms": [t.to_dict() for t in self.terms],
            "energy_per_decision_mj": None if self.energy_mj is None else self.energy_mj.value,
            "energy_source": None if self.energy_mj is None else self.energy_mj.source,
            "backhaul_bytes_per_day": self.backhaul_bytes_per_day,
            "notes": list(self.notes),
        }


@dataclass
class Advice:
    """Every tier's result, the recommended tier and why, and every number used."""

    workload: Workload
    tiers: list[TierResult]
    recommended: str | None
    reasons: list[str]
    backhaul: dict[str, float | None]
    sources: list[Number]

    def tier(self, name: str) -> TierResult:
        return next(t for t in self.tiers if t.tier == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload.model_dump(mode="json"),
            "recommended": self.recommended,
            "reasons": list(self.reasons),
            "backhaul": dict(self.backhaul),
            "tiers": [t.to_dict() for t in self.tiers],
            "sources": [s.to_dict() | {"source": s.source} for s in self.sources],
        }


def propagation_ms(distance_km: float) -> float:
    """Round-trip fibre propagation over ``distance_km`` (5 us per km each way)."""
    return 2 * distance_km * PROPAGATION_MS_PER_KM


class _Context:
    """The workload and the numbers found for it, remembering every number used."""

    def __init__(self, workload: Workload, measured: Measurements) -> None:
        self.w = workload
        self.m = measured
        self.used: list[Number] = []

    def find(self, metric: str, **kwargs: Any) -> Number | None:
        number = self.m.find(metric, **kwargs)
        if number is not None and number not in self.used:
            self.used.append(number)
        return number

    def where(self, tier: str) -> dict[str, Any]:
        """Run/gateway/board filters for the hardware of ``tier`` (None: none stands for it)."""
        spec = self.w.tier(tier)
        if spec.measured_by is not None:
            return {"run": spec.measured_by.run, "gateway": spec.measured_by.gateway}
        if tier == "gateway":
            return {"gateway": self.w.gateway, "board": self.w.board}
        if tier in BACKHAUL_TIERS:  # measured on the lab's own tier (virtual.tiers)
            return {"tier": tier}
        return {}

    def backhaul_where(self) -> dict[str, Any]:
        return {"gateway": self.w.gateway, "board": self.w.board}

    def backhaul(self, metric: str) -> Number | None:
        found = self.find(metric, **self.backhaul_where())
        return found if found is not None else self.find(metric)

    def backhaul_for(self, metric: str, **params: Any) -> Number | None:
        """Like :meth:`backhaul`, matching ``params`` too."""
        found = self.find(metric, **self.backhaul_where(), **params)
        return found if found is not None else self.find(metric, **params)


def _inference(ctx: _Context, tier: str, result: TierResult) -> None:
    spec = ctx.w.tier(tier)
    if tier == "device" and not spec.runs_model:
        result.status = "not possible"
        result.notes.append("the device cannot run the model (tiers.device.runs_model: false)")
        return
    where = ctx.where(tier)
    if not where:
        result.status = "unmeasured"
        result.notes.append(
            f"no run measures the {tier} tier: set tiers.{tier}.measured_by (run, gateway) "
            "to the run that stands for its hardware"
        )
        return
    model = ctx.w.model
    ident = {"model": model.name, "variant": model.variant, "threads": model.threads}
    p50 = ctx.find("latency.p50", **where, **ident)
    p99 = ctx.find("latency.p99", **where, **ident)
    if (p50 is None or p99 is None) and set(where) == {"tier"}:
        result.status = "unmeasured"
        result.notes.append(
            f"no run measures the {tier} tier: run suites/test_inference.py on a lab with "
            f"virtual.tiers.{tier}, or set tiers.{tier}.measured_by (run, gateway) to the run "
            "that stands for its hardware"
        )
        return
    if p50 is None or p99 is None:
        result.status = "unmeasured"
        result.notes.append(
            f"no latency.p50/p99 of {model.name}/{model.variant} t{model.threads} for {tier} "
            f"({', '.join(f'{k}={v}' for k, v in where.items() if v)}) in the runs"
        )
        return
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "ns": 1e-6}
    term = Term("inference", p50.value * scale[p50.unit], p99.value * scale[p99.unit], (p50, p99))
    result.terms.append(term)
    busy = ctx.w.rate_per_s * term.p50_ms / 1e3
    if busy >= 1:
        result.notes.append(
            f"cannot keep up: {ctx.w.rate_per_s:g} decisions/s x {term.p50_ms:.3g} ms = "
            f"{busy:.2f} of one core"
        )
    energy = ctx.find("energy.per_inference", **where, model=model.name, variant=model.variant)
    result.energy_mj = energy
    if energy is None:
        result.notes.append("energy per decision unmeasured")


def _transport(ctx: _Context, tier: str, result: TierResult) -> None:
    w = ctx.w
    origin_km = w.tier(w.origin).distance_km
    distance = abs(w.tier(tier).distance_km - origin_km)
    tier_rtt = _tier_rtt(ctx, tier) if tier in BACKHAUL_TIERS else None
    mesh = _mesh_rtt(ctx) if w.origin == "device" and tier != "device" else None
    if mesh is not None:
        # meters reach the gateway over the radio mesh, not fibre: its measured round trip
        m50, m99 = mesh
        result.terms.append(Term("mesh rtt (meters to gateway)", m50.value * 1e3,
                                 m99.value * 1e3, (m50, m99)))  # fmt: skip
        origin_km = w.tier("gateway").distance_km
        distance = abs(w.tier(tier).distance_km - origin_km)
    if tier_rtt is not None:
        # the gateway-to-tier part was measured through a lab tier lab_km away; physics
        # covers the origin-to-gateway part and any difference to the workload's distance
        _, _, lab_km = tier_rtt
        gateway_km = w.tier("gateway").distance_km
        beyond = abs(w.tier(tier).distance_km - gateway_km) - lab_km
        to_gateway = abs(gateway_km - origin_km)
        if to_gateway:
            prop = propagation_ms(to_gateway)
            result.terms.append(Term(f"propagation {to_gateway:g} km", prop, prop, basis="physics"))
        if beyond:
            prop = propagation_ms(beyond)
            result.terms.append(
                Term(f"propagation {beyond:+g} km to correct the measured {lab_km:g} km", prop,
                     prop, basis="physics")
            )  # fmt: skip
    elif distance:
        prop = propagation_ms(distance)
        result.terms.append(Term(f"propagation {distance:g} km", prop, prop, basis="physics"))
    if w.origin == "device" and tier != "device" and mesh is None:
        result.notes.append(
            "the meters-to-gateway mesh is counted as fibre: no mesh round trip measured "
            "(run suites/test_mesh.py)"
        )
    if tier not in BACKHAUL_TIERS:
        return
    bandwidth = ctx.backhaul("backhaul.bandwidth")
    rtt50 = ctx.backhaul("backhaul.rtt.p50")
    rtt99 = ctx.backhaul("backhaul.rtt.p99")
    if bandwidth is None or rtt50 is None or rtt99 is None:
        result.status = "unmeasured"
        result.notes.append("backhaul RTT/bandwidth unmeasured: run suites/test_backhaul.py")
        return
    ser = w.payload_bytes * 8 / bandwidth.value * 1e3
    result.terms.append(Term("serialization", ser, ser, (bandwidth,)))
    if tier_rtt is not None:
        t50, t99, lab_km = tier_rtt
        result.terms.append(
            Term(f"rtt to the {tier} tier ({lab_km:g} km)", t50.value / 1e3, t99.value / 1e3,
                 (t50, t99))
        )  # fmt: skip
    else:
        result.terms.append(
            Term("backhaul rtt", rtt50.value / 1e3, rtt99.value / 1e3, (rtt50, rtt99))
        )
    if w.rate_per_s * w.payload_bytes * 8 >= bandwidth.value:
        result.notes.append("raw data rate exceeds the measured backhaul bandwidth")
    loss = ctx.backhaul("backhaul.loss")
    high = ctx.backhaul("backhaul.loss_ci_high")
    if loss is not None and high is not None and high.value > 0:
        result.notes.append(
            f"backhaul loss {loss.value:.2%} (95 % up to {high.value:.2%}): retransmissions "
            "add to the tail"
        )
    result.notes.append("transport energy unmeasured")


def _mesh_rtt(ctx: _Context) -> tuple[Number, Number] | None:
    """Measured probe round trips (p50, p99, in s) to the meters behind the gateway."""
    p50 = ctx.backhaul_for("mesh.delivery.rtt_p50", hops="all")
    if p50 is None:
        return None
    p99 = ctx.find("mesh.delivery.rtt_p99", run=p50.run, gateway=p50.gateway, hops="all")
    return None if p99 is None else (p50, p99)


def _tier_rtt(ctx: _Context, tier: str) -> tuple[Number, Number, float] | None:
    """Measured gateway-to-tier RTT (p50, p99 in us) and the distance it was measured over."""
    p50 = ctx.backhaul_for("tier.rtt.p50", tier=tier)
    if p50 is None:
        return None
    where = {"run": p50.run, "gateway": p50.gateway, "tier": tier}
    p99 = ctx.find("tier.rtt.p99", **where)
    km = ctx.find("tier.distance", **where)
    if p99 is None or km is None:
        return None
    return p50, p99, km.value


def _bytes_per_day(ctx: _Context) -> dict[str, float | None]:
    w = ctx.w
    overhead = ctx.backhaul("backhaul.overhead_per_message")
    extra = overhead.value if overhead is not None else 0.0
    raw = w.rate_per_s * (w.payload_bytes + extra) * SECONDS_PER_DAY
    reduced = None
    if w.reduction is not None:
        r = w.reduction
        reduced = r.event_rate_per_s * (r.event_bytes + extra) * SECONDS_PER_DAY
    return {"raw": raw, "reduced": reduced, "overhead_per_message": extra if overhead else None}


def _verdict(w: Workload, result: TierResult) -> None:
    p99 = result.p99_ms
    if p99 is None:
        return
    keeps_up = not any(n.startswith(("cannot keep up", "raw data rate")) for n in result.notes)
    result.meets_budget = p99 <= w.budget_ms and keeps_up


def _recommend(w: Workload, tiers: list[TierResult]) -> tuple[str | None, list[str]]:
    meeting = [t for t in tiers if t.meets_budget]
    reasons: list[str] = []
    best: TierResult | None = None
    if meeting:
        best = min(
            meeting,
            key=lambda t: (
                t.backhaul_bytes_per_day or 0.0,
                t.energy_mj.value if t.energy_mj is not None else float("inf"),
                t.p99_ms or 0.0,
            ),
        )
        reasons.append(f"{best.tier}: p99 {best.p99_ms:.3f} ms meets the {w.budget_ms:g} ms budget")
        if best.energy_mj is not None:
            reasons.append(f"{best.tier}: {best.energy_mj.value:.3g} mJ per decision (measured)")
        if best.backhaul_bytes_per_day is not None:
            reasons.append(
                f"{best.tier}: {_human_bytes(best.backhaul_bytes_per_day)}/day on the backhaul"
            )
    else:
        reasons.append(f"no tier is known to meet the {w.budget_ms:g} ms budget at p99")
    for t in tiers:
        if t is best:
            continue
        if t.status != "ok":
            reasons.append(f"{t.tier}: {t.status} ({t.notes[0] if t.notes else ''})")
        elif not t.meets_budget:
            why = next((n for n in t.notes if n.startswith(("cannot", "raw data"))), None)
            reasons.append(
                f"{t.tier}: {why}" if why else
                f"{t.tier}: p99 {t.p99_ms:.3f} ms exceeds the {w.budget_ms:g} ms budget"
            )  # fmt: skip
        elif best is not None and (t.backhaul_bytes_per_day or 0) > (
            best.backhaul_bytes_per_day or 0
        ):
            reasons.append(
                f"{t.tier}: meets the budget but sends "
                f"{_human_bytes(t.backhaul_bytes_per_day or 0)}/day over the backhaul"
            )
        else:
            reasons.append(f"{t.tier}: meets the budget too (p99 {t.p99_ms:.3f} ms)")
    return (best.tier if best else None), reasons


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def advise(workload: Workload, measured: Measurements) -> Advice:
    """Compute every tier for ``workload`` from ``measured`` and recommend one."""
    ctx = _Context(workload, measured)
    backhaul = _bytes_per_day(ctx)
    results = []
    for tier in TIERS:
        result = TierResult(tier, "ok")
        _inference(ctx, tier, result)
        if result.status == "ok":
            _transport(ctx, tier, result)
        if result.status == "ok":
            local = tier not in BACKHAUL_TIERS and backhaul["reduced"] is not None
            result.backhaul_bytes_per_day = backhaul["reduced"] if local else backhaul["raw"]
            _verdict(workload, result)
        results.append(result)
    recommended, reasons = _recommend(workload, results)
    return Advice(workload, results, recommended, reasons, backhaul, ctx.used)
