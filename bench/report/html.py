"""The self-contained HTML report: inline CSS and SVG, no script, every text escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import pandas as pd

from bench import __version__
from bench.report.model import Report
from bench.report.summary import VIRTUAL_LABEL
from bench.report.svg import (
    BoxRow,
    ForestRow,
    IntervalPoint,
    TimeMark,
    TimeSpan,
    bars,
    box_strip,
    esc,
    fmt,
    forest,
    interval_plot,
    sparkline,
    timeline,
)

NOT_IN_RUN: Final = "not in this run"
SEPARATOR: Final = " \u00b7 "
COLLAPSED_COLUMNS: Final = (
    ("test", "test"), ("metric", "metric"), ("gateway", "gateway"), ("context", "for"),
    ("records", "records"), ("value", "value"), ("text", "text"), ("mean", "mean of records"),
    ("unit", "unit"),
)  # fmt: skip
Columns = Sequence[tuple[str, str]]

CSS: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header,section,footer,nav{max-width:1180px;margin:0 auto;padding:0 24px}
header{padding-top:18px}h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;
border-bottom:2px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
nav{font-size:13px}nav a{margin-right:12px}
.label{display:inline-block;padding:2px 8px;border-radius:4px;font-weight:600;font-size:12px}
.virtual{background:#fff1c2;color:#6b4e00}.hardware{background:#dff3e4;color:#0b5d1e}
.bad{color:#b42318;font-weight:600}.good{color:#087443;font-weight:600}.muted{color:#666}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px;background:#fff}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.regression td{background:#fde8e6}tr.improvement td{background:#e6f6ec}
svg.plot{max-width:100%;height:auto;background:#fff;border:1px solid #eee;margin:6px 0}
svg.spark{display:block}
details{margin:6px 0}summary{cursor:pointer;color:#0b57d0}
.data{font-size:12px}code{font-size:12px}
"""


def _cell(value: Any) -> tuple[str, bool]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int | float):
        return esc(fmt(float(value)) if isinstance(value, float) else str(value)), True
    if value is pd.NA:
        return "\u2013", False
    return esc(value), False


def table(
    frame: pd.DataFrame,
    columns: Columns,
    *,
    data: str | None = None,
    row_class: str | None = None,
    limit: int | None = None,
) -> str:
    """An HTML table of ``frame``'s ``(column, heading)`` pairs, with a link to its data."""
    present = [(c, h) for c, h in columns if c in frame.columns]
    head = "".join(f"<th>{esc(h)}</th>" for _, h in present)
    rows = []
    shown = frame if limit is None else frame.head(limit)
    for _, row in shown.iterrows():
        cls = f' class="{esc(row[row_class])}"' if row_class and row_class in frame else ""
        cells = []
        for column, _ in present:
            text, numeric = _cell(row[column])
            cells.append(f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>")
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    more = ""
    if limit is not None and len(frame) > limit:
        more = f'<p class="muted">{len(frame) - limit} more rows in the data file.</p>'
    link = ""
    if data:
        link = (
            f'<p class="data">Data: <a href="data/{esc(data)}.csv">{esc(data)}.csv</a>, '
            f'<a href="data/{esc(data)}.parquet">{esc(data)}.parquet</a></p>'
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{more}{link}"


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def _section(ident: str, title: str, body: Sequence[str]) -> str:
    return f'<section id="{ident}"><h2>{esc(title)}</h2>{"".join(body)}</section>'


def _label(report: Report) -> str:
    if report.subject.virtual:
        return f'<span class="label virtual">{esc(VIRTUAL_LABEL)}</span>'
    return '<span class="label hardware">hardware</span>'


def _header(report: Report) -> str:
    run = report.subject
    bits = []
    n_reg, n_fail, n_missing = len(report.regressions), len(report.failures), len(report.missing)
    if report.baseline is not None:
        cls = "bad" if n_reg else "good"
        bits.append(
            f'<span class="{cls}">{n_reg} regression{"s" * (n_reg != 1)} against '
            f"{esc(report.baseline.run_id)}</span>"
        )
    bits.append(
        f'<span class="{"bad" if n_fail else "good"}">{n_fail} failed test'
        f"{'s' * (n_fail != 1)}</span>"
    )
    if report.changes:
        bits.append(f'<span class="bad">{report.changes} change point(s) in the series</span>')
    bits.append(f'<span class="muted">{n_missing} missing or partial part(s)</span>')
    return (
        f"<header><h1>fieldrig report: {esc(run.run_id)}</h1><p>{_label(report)} rig "
        f"<b>{esc(run.info.get('rig_name'))}</b>, status <b>{esc(run.info.get('status'))}</b>"
        f"</p><p>{SEPARATOR.join(bits)}</p></header>"
    )


_SECTIONS: Final = (
    ("run", "Run"),
    ("outcomes", "Outcomes"),
    ("latency", "Inference latency"),
    ("energy", "Energy and power"),
    ("mesh", "Mesh delivery"),
    ("timeline", "Faults, rollouts and liveness"),
    ("drift", "Fleet drift"),
    ("comparison", "Comparison with baseline"),
    ("series", "Series and change points"),
    ("other", "Other measurements"),
    ("missing", "Missing and partial"),
)


def _run_section(report: Report) -> str:
    info = report.subject.info
    commit = f"{info.get('git_commit')}{' (dirty)' if info.get('git_dirty') else ''}"
    pairs = [
        ("run", info.get("run_id")),
        ("rig", info.get("rig_name")),
        ("lab", VIRTUAL_LABEL if report.subject.virtual else "hardware"),
        ("status", info.get("status")),
        ("start", info.get("start")),
        ("end", info.get("end")),
        ("git commit", commit),
        ("fieldrig", info.get("fieldrig_version")),
        ("Python", info.get("python_version")),
        ("platform", info.get("platform")),
        ("host", info.get("hostname")),
        ("rig file sha256", info.get("rig_sha256")),
        ("command", " ".join(str(a) for a in info.get("argv") or [])),
    ]
    if report.baseline is not None:
        pairs.append(("baseline", report.baseline.run_id))
    body = [
        table(
            pd.DataFrame(pairs, columns=["k", "v"]), [("k", "field"), ("v", "value")], data="runs"
        )
    ]
    if len(report.runs) > 1:
        body.append(
            _p(
                f"Series of {len(report.runs)} runs (oldest first); the sections below "
                f"show the newest, {report.subject.run_id}."
            )
        )
        body.append(
            table(
                report.tables["runs"],
                [
                    ("run", "run"),
                    ("role", "role"),
                    ("status", "status"),
                    ("start", "start"),
                    ("git_commit", "commit"),
                ],
            )
        )
    body.append("<h3>Gateways</h3>")
    inventory = report.tables["inventory"]
    if inventory.empty:
        body.append(_p(f"Inventory: {NOT_IN_RUN}."))
    else:
        body.append(
            table(
                inventory,
                [
                    ("gateway", "gateway"),
                    ("board", "board"),
                    ("os", "OS"),
                    ("kernel", "kernel"),
                    ("libc", "libc"),
                    ("python", "Python"),
                    ("runtime", "runtime"),
                    ("fingerprint", "fingerprint"),
                ],
                data="inventory",
            )
        )
    return _section("run", "Run", body)


def _outcomes_section(report: Report) -> str:
    outcomes = report.tables["outcomes"]
    if outcomes.empty:
        return _section("outcomes", "Outcomes", [_p(f"Test outcomes: {NOT_IN_RUN}.")])
    counts = outcomes["outcome"].value_counts().to_dict()
    body = [_p(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".")]
    failures = report.failures
    columns = [
        ("test", "test"),
        ("gateway", "gateway"),
        ("fingerprint", "fingerprint"),
        ("outcome", "outcome"),
        ("message", "message"),
    ]
    if len(failures):
        body.append(table(failures, columns))
    body.append(
        f"<details><summary>All {len(outcomes)} outcomes</summary>"
        f"{table(outcomes, [*columns[:4], ('duration_s', 'seconds')], data='outcomes')}"
        "</details>"
    )
    return _section("outcomes", "Outcomes", body)


def _latency_section(report: Report) -> str:
    latency, box, points = (report.tables[k] for k in ("latency", "latency_box", "latency_points"))
    if latency.empty:
        return _section("latency", "Inference latency", [_p(f"Inference latency: {NOT_IN_RUN}.")])
    body = []
    if not box.empty:
        rows = []
        for _, row in box.iterrows():
            mine = (
                points[points["label"] == row["label"]]["latency_us"].tolist()
                if len(points)
                else []
            )
            q = {k: float(row[k]) for k in ("p1", "p25", "p50", "p75", "p90", "p99")}
            rows.append(BoxRow(str(row["label"]), **q, points=mine, group=str(row["model"])))
        body.append(box_strip(rows, "\u00b5s per inference", "Per-inference latency"))
        body.append(
            _p(
                "Boxes p25\u2013p75 with the median; whiskers p1\u2013p99; ticks at p90 "
                "and p99 (over every timed inference); dots: a random subset of the "
                "samples.",
                "muted",
            )
        )
        body.append(
            '<p class="data">Plot data: <a href="data/latency_box.csv">latency_box.csv'
            '</a>, <a href="data/latency_points.csv">latency_points.csv</a></p>'
        )
    else:
        body.append(_p("Raw per-inference samples: missing; the table shows what was recorded."))
    body.append(
        table(
            latency,
            [
                ("gateway", "gateway"),
                ("board", "board"),
                ("model", "model"),
                ("variant", "variant"),
                ("threads", "threads"),
                ("delegate", "delegate"),
                ("count", "inferences"),
                ("p50_us", "p50 \u00b5s"),
                ("p90_us", "p90 \u00b5s"),
                ("p99_us", "p99 \u00b5s"),
                ("median_of_window_means_us", "median of window means"),
                ("init_us", "init \u00b5s"),
                ("first_inference_us", "first \u00b5s"),
                ("throttled_windows", "throttled windows"),
                ("raw_samples", "raw samples"),
            ],
            data="latency",
        )
    )
    return _section("latency", "Inference latency", body)


def _energy_section(report: Report) -> str:
    energy, power = report.tables["energy"], report.tables["power"]
    body = ["<h3>Energy per inference</h3>"]
    if energy.empty:
        body.append(_p(f"Energy per inference: {NOT_IN_RUN}."))
    else:
        if "inferences_per_joule_inf_per_J" in energy:
            rows = [
                (
                    f"{r['gateway']} {r['model']}/{r['variant']} t{r['threads']}",
                    float(r["inferences_per_joule_inf_per_J"]),
                )
                for _, r in energy.iterrows()
                if pd.notna(r["inferences_per_joule_inf_per_J"])
            ]
            body.append(bars(rows, "inferences per joule", "Inferences per joule"))
        body.append(
            table(
                energy,
                [
                    ("gateway", "gateway"),
                    ("board", "board"),
                    ("model", "model"),
                    ("variant", "variant"),
                    ("threads", "threads"),
                    ("per_inference_mJ", "mJ / inference (gross)"),
                    ("per_inference_net_mJ", "mJ / inference (net of idle)"),
                    ("inferences_per_joule_inf_per_J", "inferences / J"),
                    ("average_power_W", "average W"),
                    ("idle_baseline_W", "idle baseline W"),
                    ("untrusted_windows", "untrusted windows"),
                ],
                data="energy",
            )
        )
    body.append("<h3>Idle power and boot time</h3>")
    if power.empty:
        body.append(_p(f"Idle power and boot time: {NOT_IN_RUN}."))
    else:
        for column, unit, title in (
            ("idle_W", "W", "Idle power"),
            ("boot_to_ssh_s", "s", "Boot to SSH"),
        ):
            if column in power:
                rows = [
                    (str(r["gateway"]), float(r[column]))
                    for _, r in power.iterrows()
                    if pd.notna(r[column])
                ]
                body.append(bars(rows, unit, title))
        body.append(
            table(
                power,
                [
                    ("gateway", "gateway"),
                    ("board", "board"),
                    ("idle_W", "idle W"),
                    ("idle_std_W", "idle std W"),
                    ("sampling_rate_Hz", "sampling Hz"),
                    ("boot_to_ssh_s", "boot to SSH s"),
                ],
                data="power",
            )
        )
    return _section("energy", "Energy and power", body)


def _interval_points(frame: pd.DataFrame, x: str) -> list[IntervalPoint]:
    return [
        IntervalPoint(
            str(r["gateway"]),
            str(r[x]),
            float(r["delivery"]),
            float(r.get("delivery_ci_low", r["delivery"])),
            float(r.get("delivery_ci_high", r["delivery"])),
        )
        for _, r in frame.iterrows()
        if pd.notna(r.get("delivery"))
    ]


def _mesh_section(report: Report) -> str:
    hops, sweep, other = (
        report.tables[k] for k in ("mesh_delivery", "mesh_attenuation", "mesh_other")
    )
    columns = [
        ("gateway", "gateway"),
        ("sent", "probes"),
        ("delivery", "delivery"),
        ("delivery_ci_low", "95 % low"),
        ("delivery_ci_high", "95 % high"),
        ("interval", "interval"),
        ("loss_periods", "loss periods"),
        ("max_loss_period", "longest loss period"),
        ("rtt_p50_s", "RTT p50 s"),
        ("rtt_p90_s", "RTT p90 s"),
        ("rtt_p99_s", "RTT p99 s"),
    ]
    body = ["<h3>Delivery by hop count</h3>"]
    if hops.empty:
        body.append(_p(f"Delivery by hop count: {NOT_IN_RUN}."))
    else:
        body.append(
            interval_plot(
                _interval_points(hops, "hops"),
                "hops",
                "delivery",
                "Delivery by hop count with 95 % intervals",
            )
        )
        body.append(table(hops, [columns[0], ("hops", "hops"), *columns[1:]], data="mesh_delivery"))
    body.append("<h3>Attenuation sweep</h3>")
    if sweep.empty:
        body.append(_p(f"Attenuation sweep: {NOT_IN_RUN}."))
    else:
        body.append(
            interval_plot(
                _interval_points(sweep, "attenuation_db"),
                "attenuation dB",
                "delivery",
                "Delivery against RF attenuation",
            )
        )
        body.append(
            table(
                sweep, [columns[0], ("attenuation_db", "dB"), *columns[1:]], data="mesh_attenuation"
            )
        )
    if not other.empty:
        listed = table(other, COLLAPSED_COLUMNS, data="mesh_other")
        body.append("<h3>Other mesh measurements</h3>")
        body.append(f"<details><summary>{len(other)} series</summary>{listed}</details>")
    return _section("mesh", "Mesh delivery", body)


def _timeline_section(report: Report) -> str:
    t = report.timeline
    lanes = t.lanes()
    body = []
    if t.start is not None and t.end is not None and t.rows:
        end = t.end
        spans = [
            TimeSpan(
                s.row,
                s.lane,
                s.start,
                s.end or end,
                s.label,
                f"{s.row} {s.lane}: {s.label} from {s.start.isoformat()} to "
                f"{s.end.isoformat() if s.end else 'the end of the records'} {s.detail}",
            )
            for s in t.spans
        ]
        marks = [
            TimeMark(m.row, m.at, m.label, f"{m.row} {m.at.isoformat()}: {m.label} {m.detail}")
            for m in t.marks
        ]
        body.append(timeline(t.rows, spans, marks, t.start, end, "Timeline of events"))
        body.append(
            _p(
                "Red shading: fault windows (apply to remove); upper bars: update states; "
                "lower bars: liveness verdicts; diamonds: other events.",
                "muted",
            )
        )
    else:
        body.append(_p(f"Timeline: no events {NOT_IN_RUN}."))
    for lane, name in (
        ("fault", "Fault windows"),
        ("rollout", "Rollouts"),
        ("liveness", "Liveness verdicts"),
    ):
        if lane not in lanes:
            body.append(_p(f"{name}: {NOT_IN_RUN}."))
    body.append("<h3>Invariant verdicts</h3>")
    invariants = report.tables["invariants"]
    if invariants.empty:
        body.append(_p(f"Invariant verdicts: {NOT_IN_RUN}."))
    else:
        body.append(
            table(
                invariants,
                [
                    ("invariant", "invariant"),
                    ("ok", "holds"),
                    ("checked", "checked"),
                    ("violations", "violations"),
                    ("source", "from"),
                ],
                data="invariants",
            )
        )
    rollouts = report.tables["rollouts"]
    if not rollouts.empty:
        body.append("<h3>Rollout measurements</h3>")
        body.append(table(rollouts, COLLAPSED_COLUMNS, data="rollouts"))
    liveness = report.tables["liveness"]
    if not liveness.empty:
        body.append("<h3>Liveness measurements</h3>")
        body.append(
            table(
                liveness,
                COLLAPSED_COLUMNS,
                data="liveness",
            )
        )
    events = report.tables["events"]
    if not events.empty:
        columns = [
            ("time", "time"),
            ("gateway", "gateway"),
            ("kind", "kind"),
            ("message", "message"),
        ]
        listed = table(events, columns, data="events")
        body.append(f"<details><summary>All {len(events)} events</summary>{listed}</details>")
    body.append('<p class="data">Timeline data: <a href="data/timeline.csv">timeline.csv</a></p>')
    return _section("timeline", "Faults, rollouts and liveness", body)


def _drift_section(report: Report) -> str:
    body = []
    drift = report.tables["drift"]
    if drift.empty:
        return _section("drift", "Fleet drift", [_p(f"Inventory: {NOT_IN_RUN}; no fingerprints.")])
    if report.drift:
        body.append(
            "<ul>" + "".join(f'<li class="bad">{esc(d.text)}</li>' for d in report.drift) + "</ul>"
        )
    elif drift.groupby("board").size().max() < 2:
        body.append(_p("Each board type has one gateway in this run: no stack to compare with."))
    else:
        body.append(_p("Every gateway runs the same stack as the rest of its board type."))
    if report.fingerprint_failures:
        body.append(
            "<ul>"
            + "".join(f'<li class="bad">{esc(f.text)}</li>' for f in report.fingerprint_failures)
            + "</ul>"
        )
    else:
        body.append(_p("No test fails on some fingerprints while passing on others."))
    body.append(
        table(
            report.tables["fingerprints"],
            [
                ("fingerprint", "fingerprint"),
                ("board", "board"),
                ("gateways", "gateways"),
                ("passed", "passed"),
                ("failed", "failed or error"),
                ("skipped", "skipped"),
            ],
            data="fingerprints",
        )
    )
    body.append(
        table(
            drift,
            [
                ("board", "board"),
                ("gateway", "gateway"),
                ("fingerprint", "fingerprint"),
                ("drifts", "differs"),
                ("detail", "detail"),
            ],
            data="drift",
        )
    )
    return _section("drift", "Fleet drift", body)


def _comparison_section(report: Report) -> str:
    if report.baseline is None:
        return _section(
            "comparison",
            "Comparison with baseline",
            [_p("No baseline given (fieldrig report RUN --baseline RUN).")],
        )
    s = report.settings
    body = [
        _p(
            f"{report.subject.run_id} against {report.baseline.run_id}. A regression needs "
            f"Mann-Whitney U p < {s.alpha:g} on the raw samples (at least {s.min_samples} "
            f"on each side) and the whole {s.confidence:.0%} bootstrap interval of the "
            f"median ratio (mean for 0/1 outcomes) beyond {s.min_effect:.0%} in the worse "
            "direction."
        )
    ]
    frame = report.tables["comparison"]
    counts = frame["verdict"].value_counts().to_dict() if len(frame) else {}
    body.append(
        _p(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "Nothing to compare.")
    )
    tested = [
        c
        for c in report.comparisons
        if c.ci_low is not None
        and c.ci_high is not None
        and c.ratio is not None
        and math.isfinite(c.ci_low)
    ][:60]
    if tested:
        rows = [
            ForestRow(
                c.key.label,
                float(c.ratio or 0),
                float(c.ci_low or 0),
                float(c.ci_high or 0),
                c.verdict,
            )
            for c in tested
        ]
        body.append(forest(rows, s.min_effect, "Ratio new / baseline with bootstrap intervals"))
    body.append(
        table(
            frame,
            [
                ("verdict", "verdict"),
                ("metric", "metric"),
                ("gateway", "gateway"),
                ("context", "for"),
                ("n_base", "n base"),
                ("n_new", "n new"),
                ("base", "baseline"),
                ("new", "new"),
                ("unit", "unit"),
                ("ratio", "ratio"),
                ("ci_low", "CI low"),
                ("ci_high", "CI high"),
                ("p", "p"),
                ("reason", "why"),
            ],
            data="comparison",
            row_class="verdict",
        )
    )
    return _section("comparison", "Comparison with baseline", body)


def _series_section(report: Report) -> str:
    if len(report.runs) < 2:
        return _section(
            "series",
            "Series and change points",
            [_p("One run given: no series (give several runs to follow trends).")],
        )
    rows = []
    for trend in report.trends:
        flagged = [c.index for c in trend.changes]
        spark = sparkline(trend.values, flagged, trend.key.label)
        note = "; ".join(
            f"{fmt(c.before)} \u2192 {fmt(c.after)} at {trend.runs[c.index]}" for c in trend.changes
        )
        cls = ' class="regression"' if trend.changes else ""
        rows.append(
            f"<tr{cls}><td>{esc(trend.key.metric)}</td><td>{esc(trend.key.gateway)}</td>"
            f"<td>{esc(trend.key.context)}</td><td>{spark}</td>"
            f'<td class="n">{esc(fmt(trend.last))}</td><td>{esc(trend.key.unit)}</td>'
            f"<td>{esc(note)}</td></tr>"
        )
    body = [
        _p(
            f"{len(report.trends)} series over {len(report.runs)} runs; change points by "
            "binary segmentation on per-run medians (see bench/report/changepoint.py)."
        )
    ]
    body.append(
        "<table><tr><th>metric</th><th>gateway</th><th>for</th><th>trend</th>"
        "<th>last</th><th>unit</th><th>change points</th></tr>" + "".join(rows) + "</table>"
    )
    body.append(
        '<p class="data">Data: <a href="data/series.csv">series.csv</a>, '
        '<a href="data/change_points.csv">change_points.csv</a></p>'
    )
    return _section("series", "Series and change points", body)


def _other_section(report: Report) -> str:
    other = report.tables["other"]
    if other.empty:
        return _section("other", "Other measurements", [_p("None.")])
    return _section(
        "other",
        "Other measurements",
        [
            table(
                other,
                [("suite", "suite"), *COLLAPSED_COLUMNS],
                data="other",
            )
        ],
    )


def _missing_section(report: Report) -> str:
    missing = report.missing
    if not missing:
        return _section("missing", "Missing and partial", [_p("Nothing is missing.")])
    items = "".join(f"<li>{esc(m)}</li>" for m in missing)
    return _section("missing", "Missing and partial", [f"<ul>{items}</ul>"])


def render_html(report: Report) -> str:
    """The whole report as one HTML document."""
    nav = "".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in _SECTIONS)
    sections = [
        _run_section(report),
        _outcomes_section(report),
        _latency_section(report),
        _energy_section(report),
        _mesh_section(report),
        _timeline_section(report),
        _drift_section(report),
        _comparison_section(report),
        _series_section(report),
        _other_section(report),
        _missing_section(report),
    ]
    generated = report.generated_at or datetime.now().isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fieldrig report {esc(report.subject.run_id)}</title><style>{CSS}</style></head>"
        f"<body>{_header(report)}<nav>{nav}</nav>{''.join(sections)}"
        f'<footer><p class="muted">fieldrig {esc(__version__)}, generated {esc(generated)}. '
        "The tables and plots come from the CSV and Parquet files in data/.</p></footer>"
        "</body></html>\n"
    )
