"""Hand-written inline SVG plots: self-contained, no script, every text escaped."""

from __future__ import annotations

import html
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

#: Okabe-Ito colours (distinguishable with colour-vision deficiencies)
PALETTE: Final = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#999933",
    "#000000",
)
STATE_COLOURS: Final = {
    "online": "#009E73",
    "offline": "#E69F00",
    "dead": "#D55E00",
    "SUCCEEDED": "#009E73",
    "IN_PROGRESS": "#0072B2",
    "QUEUED": "#999999",
    "FAILED": "#D55E00",
    "TIMED_OUT": "#E69F00",
    "REJECTED": "#8B0000",
    "CANCELED": "#CC79A7",
}
FONT: Final = 'font-family="system-ui, sans-serif" font-size="12"'


def esc(text: object) -> str:
    """``text`` safe inside HTML/SVG text and attribute values."""
    return html.escape(str(text), quote=True)


def fmt(value: float | None) -> str:
    """A short human number: 3 significant digits, k/M for large ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "\u221e" if value > 0 else "-\u221e"
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.4g}" if size >= 1000 else f"{value:.3g}"


def colour_of(name: str) -> str:
    if name in STATE_COLOURS:
        return STATE_COLOURS[name]
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


@dataclass(frozen=True)
class Axis:
    """Maps values in [lo, hi] to pixels in [px0, px1], linearly or logarithmically."""

    lo: float
    hi: float
    px0: float
    px1: float
    log: bool = False

    @classmethod
    def fit(
        cls,
        values: Sequence[float],
        px0: float,
        px1: float,
        *,
        log_ratio: float = 30.0,
        zero: bool = False,
    ) -> Axis:
        finite = [v for v in values if math.isfinite(v)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if lo > 0 and hi / lo >= log_ratio:
            return cls(lo / 1.15, hi * 1.15, px0, px1, log=True)
        if zero:
            lo = min(lo, 0.0)
        pad = (hi - lo) * 0.05 or abs(hi) * 0.1 or 1.0
        return cls(lo - (0 if zero and lo == 0 else pad), hi + pad, px0, px1)

    def __call__(self, value: float) -> float:
        if self.log:
            lo, hi = math.log10(self.lo), math.log10(self.hi)
            v = math.log10(max(value, self.lo))
        else:
            lo, hi, v = self.lo, self.hi, value
        share = (v - lo) / (hi - lo) if hi != lo else 0.5
        return self.px0 + share * (self.px1 - self.px0)

    def ticks(self, count: int = 6) -> list[float]:
        if self.log:
            first, last = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            steps = (1, 2, 5) if last - first <= 3 else (1,)
            found = [m * 10.0**e for e in range(first, last + 1) for m in steps]
            return [t for t in found if self.lo <= t <= self.hi]
        span = self.hi - self.lo
        raw = span / max(count, 1)
        magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
        start = math.ceil(self.lo / step) * step
        return [start + i * step for i in range(int((self.hi - start) / step) + 1)]


def _svg(width: float, height: float, label: str, body: list[str], cls: str = "plot") -> str:
    return (
        f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{esc(label)}" {FONT}>'
        f"<title>{esc(label)}</title>{''.join(body)}</svg>"
    )


def _x_axis(axis: Axis, y: float, top: float, label: str) -> list[str]:
    out = [
        f'<line x1="{axis.px0:.1f}" x2="{axis.px1:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#444"/>'
    ]
    for tick in axis.ticks():
        x = axis(tick)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{y + 14:.1f}" text-anchor="middle">{esc(fmt(tick))}</text>'
        )
    mid = (axis.px0 + axis.px1) / 2
    out.append(f'<text x="{mid:.1f}" y="{y + 30:.1f}" text-anchor="middle">{esc(label)}</text>')
    return out


@dataclass(frozen=True)
class BoxRow:
    """One distribution: quantiles over all samples, plus points for a strip."""

    label: str
    p1: float
    p25: float
    p50: float
    p75: float
    p90: float
    p99: float
    points: Sequence[float] = ()
    group: str = ""


def box_strip(rows: Sequence[BoxRow], unit: str, title: str) -> str:
    """Horizontal boxes (p25-p75, median), whiskers p1-p99, a tick at p90, and a strip
    of sample points; log scale when the values span a wide range."""
    left, right, row_h, top = 300.0, 880.0, 24.0, 8.0
    height = top + row_h * len(rows) + 44
    axis = Axis.fit([v for r in rows for v in (r.p1, r.p99, *r.points)], left, right)
    body = _x_axis(
        axis, top + row_h * len(rows), top, f"{unit}{' (log scale)' if axis.log else ''}"
    )
    for i, row in enumerate(rows):
        y = top + i * row_h + row_h / 2
        colour = colour_of(row.group or row.label)
        tip = (
            f"{row.label}: p1 {fmt(row.p1)}, p25 {fmt(row.p25)}, p50 {fmt(row.p50)}, "
            f"p75 {fmt(row.p75)}, p90 {fmt(row.p90)}, p99 {fmt(row.p99)} {unit}"
        )
        body.append(f"<g><title>{esc(tip)}</title>")
        body.append(
            f'<text x="{left - 8:.0f}" y="{y + 4:.1f}" text-anchor="end">{esc(row.label)}</text>'
        )
        for j, value in enumerate(row.points):
            jitter = ((j * 7919) % 13 - 6) / 6 * (row_h * 0.3)
            body.append(
                f'<circle cx="{axis(value):.1f}" cy="{y + jitter:.1f}" r="1.6" '
                f'fill="{colour}" fill-opacity="0.25"/>'
            )
        body.append(
            f'<line x1="{axis(row.p1):.1f}" x2="{axis(row.p99):.1f}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="#333"/>'
        )
        x25, x75 = axis(row.p25), axis(row.p75)
        body.append(
            f'<rect x="{x25:.1f}" y="{y - 7:.1f}" width="{max(x75 - x25, 1):.1f}" '
            f'height="14" fill="{colour}" fill-opacity="0.45" stroke="#333"/>'
        )
        for value, half, width in ((row.p50, 8, 2.5), (row.p90, 5, 1.5), (row.p99, 5, 1.5)):
            x = axis(value)
            body.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - half:.1f}" y2="{y + half:.1f}" '
                f'stroke="#000" stroke-width="{width}"/>'
            )
        body.append("</g>")
    return _svg(right + 20, height, title, body)


def bars(rows: Sequence[tuple[str, float]], unit: str, title: str) -> str:
    """Horizontal bars from zero (log scale when the values span a wide range)."""
    left, right, row_h, top = 300.0, 860.0, 22.0, 8.0
    values = [v for _, v in rows]
    axis = Axis.fit(values, left, right, zero=True)
    base = axis(axis.lo) if axis.log else axis(0.0)
    body = _x_axis(
        axis, top + row_h * len(rows), top, f"{unit}{' (log scale)' if axis.log else ''}"
    )
    for i, (label, value) in enumerate(rows):
        y = top + i * row_h + 3
        x = axis(value)
        body.append(
            f"<g><title>{esc(f'{label}: {fmt(value)} {unit}')}</title>"
            f'<text x="{left - 8:.0f}" y="{y + 12:.1f}" text-anchor="end">{esc(label)}</text>'
            f'<rect x="{min(base, x):.1f}" y="{y:.1f}" width="{abs(x - base):.1f}" '
            f'height="{row_h - 6:.0f}" fill="{colour_of(label.split(" ")[0])}"/>'
            f'<text x="{max(base, x) + 4:.1f}" y="{y + 12:.1f}">{esc(fmt(value))}</text></g>'
        )
    return _svg(right + 80, top + row_h * len(rows) + 44, title, body)


@dataclass(frozen=True)
class IntervalPoint:
    series: str
    x: str  # a category (hop count, attenuation level)
    y: float
    low: float
    high: float


def interval_plot(
    points: Sequence[IntervalPoint],
    x_label: str,
    y_label: str,
    title: str,
    *,
    y_range: tuple[float, float] = (0.0, 1.0),
) -> str:
    """Points with interval bars over categories, one colour and line per series."""
    left, right, top, bottom = 60.0, 840.0, 10.0, 250.0
    categories = list(dict.fromkeys(p.x for p in points))
    series = list(dict.fromkeys(p.series for p in points))
    step = (right - left) / max(len(categories), 1)
    y_axis = Axis(y_range[0], y_range[1], bottom, top)
    body = []
    for tick in y_axis.ticks(5):
        y = y_axis(tick)
        body.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(fmt(tick))}</text>'
        )
    body.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#444"/>')
    for i, cat in enumerate(categories):
        x = left + step * (i + 0.5)
        body.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{esc(cat)}</text>')
    body.append(
        f'<text x="{(left + right) / 2:.0f}" y="{bottom + 34}" text-anchor="middle">'
        f"{esc(x_label)}</text>"
        f'<text x="14" y="{(top + bottom) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + bottom) / 2:.0f})">{esc(y_label)}</text>'
    )
    for k, name in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        offset = (k - (len(series) - 1) / 2) * min(10.0, step / (len(series) + 1))
        mine = [p for p in points if p.series == name]
        coords = [(left + step * (categories.index(p.x) + 0.5) + offset, p) for p in mine]
        path = " ".join(f"{x:.1f},{y_axis(p.y):.1f}" for x, p in coords)
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-opacity="0.5"/>'
        )
        for x, p in coords:
            tip = (
                f"{name}, {x_label} {p.x}: {fmt(p.y)} (95 % interval {fmt(p.low)} to {fmt(p.high)})"
            )
            body.append(
                f"<g><title>{esc(tip)}</title>"
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_axis(p.low):.1f}" '
                f'y2="{y_axis(p.high):.1f}" stroke="{colour}" stroke-width="2"/>'
                f'<circle cx="{x:.1f}" cy="{y_axis(p.y):.1f}" r="4" fill="{colour}"/></g>'
            )
        lx = right + 10
        body.append(
            f'<rect x="{lx}" y="{top + 16 * k}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="{top + 16 * k + 9}">{esc(name)}</text>'
        )
    return _svg(right + 140, bottom + 44, title, body)


@dataclass(frozen=True)
class TimeSpan:
    row: str
    lane: str
    start: datetime
    end: datetime
    label: str
    tip: str


@dataclass(frozen=True)
class TimeMark:
    row: str
    at: datetime
    label: str
    tip: str


_LANES: Final = {"fault": (0.0, 1.0), "rollout": (0.08, 0.5), "liveness": (0.58, 0.92)}


def timeline(
    rows: Sequence[str],
    spans: Sequence[TimeSpan],
    marks: Sequence[TimeMark],
    start: datetime,
    end: datetime,
    title: str,
) -> str:
    """Rows of devices over time: fault windows shaded red across the row, rollout states
    in the upper half, liveness verdicts in the lower half, other events as marks."""
    left, right, row_h, top = 130.0, 880.0, 34.0, 8.0
    total = max((end - start).total_seconds(), 1e-3)
    axis = Axis(0.0, total, left, right)
    bottom = top + row_h * len(rows)
    body = _x_axis(axis, bottom, top, f"seconds from {start.isoformat(timespec='seconds')}")
    index = {row: i for i, row in enumerate(rows)}
    for row, i in index.items():
        y = top + i * row_h
        body.append(
            f'<line x1="{left}" x2="{right}" y1="{y + row_h:.1f}" y2="{y + row_h:.1f}" '
            f'stroke="#ccc"/><text x="{left - 8}" y="{y + row_h / 2 + 4:.1f}" '
            f'text-anchor="end">{esc(row)}</text>'
        )
    for span in sorted(spans, key=lambda s: s.lane != "fault"):
        if span.row not in index:
            continue
        y0 = top + index[span.row] * row_h
        lo, hi = _LANES.get(span.lane, (0.3, 0.7))
        x0 = axis((span.start - start).total_seconds())
        x1 = max(axis((span.end - start).total_seconds()), x0 + 2)
        fill, opacity = ("#D55E00", 0.18) if span.lane == "fault" else (colour_of(span.label), 0.85)
        body.append(
            f'<g><title>{esc(span.tip)}</title><rect x="{x0:.1f}" y="{y0 + lo * row_h:.1f}" '
            f'width="{x1 - x0:.1f}" height="{(hi - lo) * row_h:.1f}" fill="{fill}" '
            f'fill-opacity="{opacity}"/>'
        )
        if span.lane != "fault" and x1 - x0 > 7 * len(span.label):
            body.append(
                f'<text x="{x0 + 3:.1f}" y="{y0 + (lo + hi) / 2 * row_h + 4:.1f}" '
                f'fill="#fff" font-size="10">{esc(span.label)}</text>'
            )
        elif span.lane == "fault":
            body.append(
                f'<text x="{x0 + 2:.1f}" y="{y0 + row_h - 3:.1f}" fill="#8B0000" '
                f'font-size="10">{esc(span.label)}</text>'
            )
        body.append("</g>")
    for mark in marks:
        if mark.row not in index:
            continue
        x = axis((mark.at - start).total_seconds())
        y = top + index[mark.row] * row_h + row_h / 2
        body.append(
            f'<g><title>{esc(mark.tip)}</title><path d="M{x:.1f},{y - 6:.1f} l5,6 l-5,6 '
            f'l-5,-6 z" fill="#333"/></g>'
        )
    return _svg(right + 20, bottom + 44, title, body)


def sparkline(values: Sequence[float | None], flagged: Sequence[int], title: str) -> str:
    """A small trend line over runs; red dots where a change point starts."""
    width, height, pad = 140.0, 28.0, 3.0
    known = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not known:
        return _svg(width, height, title, [], "spark")
    lo, hi = min(v for _, v in known), max(v for _, v in known)
    span = hi - lo or abs(hi) or 1.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + i * step, height - pad - (v - lo) / span * (height - 2 * pad)

    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in known))
    body = [f'<polyline points="{path}" fill="none" stroke="#0072B2" stroke-width="1.5"/>']
    for i, v in known:
        x, y = xy(i, v)
        colour, radius = ("#D55E00", 3.0) if i in flagged else ("#0072B2", 1.6)
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}"/>')
    return _svg(width, height, title, body, "spark")


@dataclass(frozen=True)
class ForestRow:
    label: str
    ratio: float
    low: float
    high: float
    verdict: str


def forest(rows: Sequence[ForestRow], min_effect: float, title: str) -> str:
    """Ratios new / baseline with their intervals against the band of no effect."""
    left, right, row_h, top = 360.0, 860.0, 20.0, 8.0
    values = [v for r in rows for v in (r.low, r.high, r.ratio) if math.isfinite(v)]
    axis = Axis.fit([*values, 1 - min_effect * 1.5, 1 + min_effect * 1.5], left, right, log_ratio=4)
    bottom = top + row_h * len(rows)
    body = [
        f'<rect x="{axis(1 - min_effect):.1f}" y="{top}" '
        f'width="{axis(1 + min_effect) - axis(1 - min_effect):.1f}" height="{bottom - top:.1f}" '
        f'fill="#eee"/>'
    ]
    body += _x_axis(axis, bottom, top, "ratio new / baseline (grey: within the minimum effect)")
    body.append(
        f'<line x1="{axis(1):.1f}" x2="{axis(1):.1f}" y1="{top}" y2="{bottom}" stroke="#666"/>'
    )
    colours = {"regression": "#D55E00", "improvement": "#009E73", "changed": "#CC79A7"}
    for i, row in enumerate(rows):
        y = top + i * row_h + row_h / 2
        colour = colours.get(row.verdict, "#555")
        tip = f"{row.label}: {fmt(row.ratio)} [{fmt(row.low)}, {fmt(row.high)}] {row.verdict}"
        body.append(
            f'<g><title>{esc(tip)}</title><text x="{left - 8}" y="{y + 4:.1f}" '
            f'text-anchor="end" font-size="11">{esc(row.label)}</text>'
            f'<line x1="{axis(row.low):.1f}" x2="{axis(row.high):.1f}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="{colour}" stroke-width="2"/>'
            f'<circle cx="{axis(row.ratio):.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/></g>'
        )
    return _svg(right + 20, bottom + 44, title, body)
